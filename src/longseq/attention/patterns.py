"""Attention patterns: the single source of truth for which (query, key) pairs a mechanism sees.

A pattern is a small pure function in the spirit of FlexAttention's ``mask_mod``:
``mod(q_idx, kv_idx) -> bool`` on broadcastable index tensors. Patterns drive the dense
references in the tests, the pictures drawn by ``longseq patterns``, and any mask-taking
backend. Fast kernels are checked against these functions, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

MaskMod = Callable[[Tensor, Tensor], Tensor]


def materialize(mod: MaskMod, n_q: int, n_k: int | None = None) -> Tensor:
    """Evaluate a pattern on every pair: (n_q, n_k) bool. For tests and pictures only."""
    q = torch.arange(n_q)[:, None]
    k = torch.arange(n_q if n_k is None else n_k)[None, :]
    return mod(q, k).expand(q.shape[0], k.shape[1])


def and_masks(*mods: MaskMod) -> MaskMod:
    def mod(q: Tensor, k: Tensor) -> Tensor:
        out = mods[0](q, k)
        for m in mods[1:]:
            out = out & m(q, k)
        return out

    return mod


def or_masks(*mods: MaskMod) -> MaskMod:
    def mod(q: Tensor, k: Tensor) -> Tensor:
        out = mods[0](q, k)
        for m in mods[1:]:
            out = out | m(q, k)
        return out

    return mod


def full() -> MaskMod:
    return lambda q, k: torch.ones_like(q - k, dtype=torch.bool)


def causal() -> MaskMod:
    return lambda q, k: k <= q


def sliding_window(window: int, dilation: int = 1, is_causal: bool = False) -> MaskMod:
    """Longformer's band: keys q + dilation*j for |j| <= window/2 (j <= 0 when causal)."""
    half = window // 2

    def mod(q: Tensor, k: Tensor) -> Tensor:
        diff = q - k
        ok = (diff % dilation == 0) & (diff.abs() <= half * dilation)
        return ok & (diff >= 0) if is_causal else ok

    return mod


def global_tokens(is_global: Tensor) -> MaskMod:
    """Global tokens see every key and are seen by every query. `is_global`: (n,) bool."""
    return lambda q, k: is_global[q] | is_global[k]


def key_padding(real: Tensor) -> MaskMod:
    """Only real keys may be seen. `real`: (n,) bool."""
    return lambda q, k: real[k] & torch.ones_like(q, dtype=torch.bool)


def longformer(
    n: int,
    window: int,
    dilation: int | Sequence[int] = 1,
    causal: bool = False,
    is_global: Tensor | None = None,
    num_heads: int | None = None,
) -> Tensor:
    """Longformer's pattern for one sequence: (heads, n, n) bool (one head per dilation)."""
    dilations = [dilation] * (num_heads or 1) if isinstance(dilation, int) else list(dilation)
    masks = []
    for d in dilations:
        mod = sliding_window(window, d, causal)
        if is_global is not None:
            mod = or_masks(mod, global_tokens(is_global))
        masks.append(materialize(mod, n))
    return torch.stack(masks)
