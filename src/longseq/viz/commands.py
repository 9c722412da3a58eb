"""`longseq patterns --out DIR [--n 64]`: draw every mechanism's attention pattern."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from longseq.argtypes import positive
from longseq.viz import patterns


def register(commands: Any) -> None:
    pat = commands.add_parser(
        "patterns",
        help="draw each mechanism's attention pattern as PNG files",
        description="Draw which (query, key) pairs each mechanism scores: one PNG per "
        "mechanism and a combined sheet.",
    )
    pat.add_argument("--out", required=True, help="output directory")
    pat.add_argument(
        "--n", type=positive(int), default=64, help="sequence length drawn (default 64)"
    )
    pat.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written = patterns.draw_all(
        args.out, n=args.n, warn=lambda msg: print(f"warning: {msg}", file=sys.stderr)
    )
    for path in written:
        print(f"wrote {path}")
    return 0 if written else 1


__all__ = ["register", "run"]
