"""The normalisation of a residual block: LayerNorm or RMSNorm.

    LayerNorm(x) = g * (x - mean(x)) / sqrt(var(x) + eps) + b
    RMSNorm(x)   = g * x / sqrt(mean(x^2) + eps)          (Zhang & Sennrich 2019; Llama)

RMSNorm has no bias and does not centre: it is what Llama-family checkpoints use.
"""

from __future__ import annotations

from torch import nn

NORM_TYPES: tuple[str, ...] = ("layer", "rms")


def build_norm(kind: str, width: int, eps: float) -> nn.Module:
    """A `kind` ("layer" or "rms") normalisation over the last dimension of size `width`."""
    if kind == "layer":
        return nn.LayerNorm(width, eps=eps)
    if kind == "rms":
        return nn.RMSNorm(width, eps=eps)
    raise ValueError(f"unknown norm_type {kind!r}; valid: {', '.join(NORM_TYPES)}")


__all__ = ["NORM_TYPES", "build_norm"]
