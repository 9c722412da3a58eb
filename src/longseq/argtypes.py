"""Argument types shared by the `longseq` sub-commands: each turns a bad value into a
usage error that says what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_list(text: str) -> list[int]:
    """ "512,1024" -> [512, 1024]; every value positive."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _number(kind: type, ok: Callable[[float], bool], rule: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def positive(kind: type) -> Callable[[str], object]:
    """An int or float > 0."""
    return _number(kind, lambda v: v > 0, "positive")


def nonnegative(kind: type) -> Callable[[str], object]:
    """An int or float >= 0."""
    return _number(kind, lambda v: v >= 0, ">= 0")


__all__ = ["int_list", "nonnegative", "positive"]
