"""Dense oracles: attention written out as plainly as possible, in fp64, for the tests."""

from __future__ import annotations

import torch
from torch import Tensor

from longseq.attention import ops
from longseq.attention.base import SelfAttention


def dense_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T restricted to `allowed`) v, where `allowed` broadcasts to (B, H, Nq, Nk).

    q must already carry the 1/sqrt(d) scale. Rows with nothing allowed return zeros.
    """
    scores = q @ k.transpose(-1, -2)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v


def layer_with_mask(
    layer: SelfAttention, x: Tensor, allowed: Tensor, real: Tensor | None = None
) -> Tensor:
    """The layer's own projections, then dense attention under `allowed` (B|1, H|1, N, N)."""
    q, k, v = layer.project(x)
    ctx = dense_attention(q, k, v, allowed)
    out = layer.out(ops.merge_heads(ctx))
    if real is not None:
        out = out.masked_fill(~real.bool().unsqueeze(-1), 0.0)
    return out
