"""The FlexAttention backend (`backend="flex"`): a mechanism's pattern as a FlexAttention mask.

Every layer takes `backend`:

- `native` (default): the mechanism's own kernel (`attend`).
- `flex`: PyTorch's FlexAttention (`torch.nn.attention.flex_attention`) under the mechanism's
  mask. The mechanism gives a `MaskMod`, `mod(b, h, q, k) -> bool`, built from its
  `patterns.py` functions and the batch's masks (`SelfAttention.flex_mask`); this module turns
  it into a `BlockMask` (which (query block, key block) tiles hold any allowed pair, and which
  hold only allowed pairs) and calls the fused kernel. No `score_mod` is needed: every mask
  mechanism scores q . k unchanged (queries carry the 1/sqrt(d) scale, so `scale=1`).
- `auto`: `flex` on CUDA for the mechanisms whose class says `auto_flex = True`, `native`
  elsewhere (on CPU always: FlexAttention's CPU kernel has no backward, and the native kernels
  train).

The kernel is `torch.compile(flex_attention)`: Inductor generates a fused kernel on CUDA
(Triton) and on CPU (C++; a C compiler is needed, and the first call at a length compiles, a
few seconds to a minute). Uncompiled, FlexAttention runs a reference that builds the n x n
scores; `eager()` selects it (tests of the masks on small inputs).

On CPU, FlexAttention is inference only (torch 2.13: `NotImplementedError`, "FlexAttention does
not support backward on CPU", compiled or not). A flex layer on CPU asked for a gradient
raises `FlexBackwardUnavailable` naming the way out; under `torch.no_grad()` (or for inputs and
weights that need none) it runs.

A mechanism whose attention is not a subset of the sequence's (query, key) pairs has no mask:
Linformer (keys are k projections of the whole sequence) and Reformer's LSH (the pairs depend
on the hashed buckets of each input, data the mask would have to be rebuilt from at every
layer and call). Their classes give the reason in `flex_refusal`, and `backend="flex"` is
refused with it.

The `BlockMask` is built here from the mask itself, evaluated on broadcast index tensors a few
query blocks at a time (memory bounded by `_CHUNK_ELEMENTS`, never n x n at once), and kept for
the next layer of the same model (same mask, same masks of the batch: `_CACHE`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

BACKENDS = ("native", "flex", "auto")

# (b, h, q, k) -> bool: broadcastable index tensors (the block builder) or scalars (the kernel)
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

BLOCK = 128  # FlexAttention's default tile (queries x keys)
_CHUNK_ELEMENTS = 1 << 24  # mask values evaluated at once while building a BlockMask
_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CACHE_SIZE = 8
_EAGER = False


class FlexBackwardUnavailable(NotImplementedError):
    """backend='flex' asked for a gradient where FlexAttention has no backward (CPU)."""


@dataclass(frozen=True)
class FlexMask:
    """A mechanism's mask for one batch.

    mod: which keys each query sees, (b, h, q, k) -> bool, with q in 0..q_len-1 and k in
        0..kv_len-1 (the layer's keys; BigBird ETC puts its extra global keys first).
    real_q: (B, q_len) bool, the real queries; a padding query is given its own key
        (`q + q_offset`) so that no row is empty (its output is zeroed by the layer).
    heads: whether `mod` depends on h (else one mask serves every head).
    key: what, besides the batch's masks, determines `mod` (the layer's options): the cache key.
    tensors: the tensors `mod` reads (the batch's masks, per-head tables): part of the key.
    """

    mod: MaskMod
    real_q: Tensor
    heads: bool
    key: tuple[Any, ...]
    tensors: tuple[Tensor, ...] = ()
    q_offset: int = 0


def check_backend(backend: Any, name: str, refusal: str | None) -> None:
    """Refuse an unknown backend, and `flex` for a mechanism that has no mask (`refusal`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "flex" and refusal is not None:
        raise ValueError(f"'{name}' attention cannot use backend='flex': {refusal}")
    if backend == "flex" and not available():
        raise ValueError(
            f"backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5); this torch "
            f"is {torch.__version__}: use backend='native'"
        )


@functools.cache
def available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def use_flex(backend: str, auto_flex: bool, device: torch.device) -> bool:
    """Whether a layer with `backend` runs FlexAttention on `device`."""
    if backend == "auto":
        return auto_flex and device.type == "cuda" and available()
    return backend == "flex"


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run FlexAttention uncompiled inside the block: its reference, which materialises the
    n x n scores (small inputs only). For tests of the masks; no C compiler needed."""
    global _EAGER
    before, _EAGER = _EAGER, True
    try:
        with warnings.catch_warnings():  # "called without torch.compile()": that is the point
            warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
            yield
    finally:
        _EAGER = before


@functools.cache
def _compiled() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _kernel() -> Callable[..., Tensor]:
    if _EAGER:
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention
    return _compiled()


def attend(q: Tensor, k: Tensor, v: Tensor, mask: FlexMask) -> Tensor:
    """softmax(q k^T under `mask`) v with FlexAttention. q (B, H, Nq, D) already scaled;
    k, v (B, KV, Nk, D) with KV dividing H (grouped-query heads are read, not copied)."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and _needs_grad(q, k, v):
        raise FlexBackwardUnavailable(
            "backend='flex' has no backward on CPU (FlexAttention's CPU kernel is inference "
            f"only in torch {torch.__version__}); train with backend='native' (or 'auto', "
            "which is native on CPU), or run this layer under torch.no_grad()"
        )
    block_mask = _block_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.device)
    gqa = k.shape[1] != q.shape[1]
    return _kernel()(q, k, v, block_mask=block_mask, scale=1.0, enable_gqa=gqa)


def _needs_grad(*tensors: Tensor) -> bool:
    return any(t.requires_grad for t in tensors)


def _with_padding_rows(mask: FlexMask) -> MaskMod:
    """The mechanism's mask, and each padding query's own key (no empty row: an empty row's
    NaN would reach the parameters' gradients through the output projection)."""
    mod, real_q, off = mask.mod, mask.real_q, mask.q_offset

    def full(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return mod(b, h, q, k) | (~real_q[b, q] & (k == q + off))

    return full


def _cache_key(mask: FlexMask, *shape: Any) -> tuple[Any, ...]:
    data = tuple(
        (t.shape, t.dtype, t.device, t.detach().cpu().numpy().tobytes())
        for t in (mask.real_q, *mask.tensors)
    )
    return (mask.key, mask.q_offset, *shape, data)


def _block_mask(mask: FlexMask, b: int, h: int, nq: int, nk: int, device: torch.device) -> Any:
    heads = h if mask.heads else 1
    key = _cache_key(mask, b, heads, nq, nk, device)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    found = build_block_mask(_with_padding_rows(mask), b, heads, nq, nk, device)
    _CACHE[key] = found
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return found


def build_block_mask(
    mod: MaskMod, b: int, h: int, nq: int, nk: int, device: torch.device, block: int = BLOCK
) -> Any:
    """A FlexAttention `BlockMask` for `mod` over (b, h, nq, nk), from the mask itself: tiles
    of `block` x `block` pairs holding some allowed pair are listed (partial tiles apply `mod`
    inside the kernel), those holding only allowed pairs are listed as full. `mod` is evaluated
    on broadcast index tensors, a few query tiles at a time."""
    from torch.nn.attention.flex_attention import BlockMask

    tq, tk = -(-nq // block), -(-nk // block)
    bi = torch.arange(b, device=device).view(b, 1, 1, 1)
    hi = torch.arange(h, device=device).view(1, h, 1, 1)
    kk = torch.arange(tk * block, device=device)
    k_in = kk < nk
    kk = kk.clamp(max=nk - 1).view(1, 1, 1, -1)
    some = torch.empty(b, h, tq, tk, dtype=torch.bool, device=device)
    every = torch.empty_like(some)
    step = max(1, _CHUNK_ELEMENTS // (b * h * block * tk * block))
    for t0 in range(0, tq, step):
        t1 = min(tq, t0 + step)
        qq = torch.arange(t0 * block, t1 * block, device=device)
        q_in = qq < nq
        qq = qq.clamp(max=nq - 1).view(1, 1, -1, 1)
        inside = q_in[:, None] & k_in[None, :]  # pairs past the ends are no pairs
        ok = mod(bi, hi, qq, kk).expand(b, h, -1, -1) & inside
        tiles = ok.view(b, h, t1 - t0, block, tk, block)
        some[:, :, t0:t1] = tiles.any(5).any(3)
        every[:, :, t0:t1] = tiles.all(5).all(3)  # a tile cut by an end is partial, as torch's
    partial = some & ~every
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(every)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mod, seq_lengths=(nq, nk)
    )


def _ordered(dense: Tensor) -> tuple[Tensor, Tensor]:
    """(count, indices) of the True tiles of each query tile row, the listed ones first."""
    num = dense.sum(-1, dtype=torch.int32)
    idx = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
    return num, idx.to(torch.int32)


def clear_cache() -> None:
    """Forget the BlockMasks kept for the next layer (tests, memory)."""
    _CACHE.clear()


__all__ = [
    "BACKENDS",
    "BLOCK",
    "FlexBackwardUnavailable",
    "FlexMask",
    "MaskMod",
    "attend",
    "available",
    "build_block_mask",
    "check_backend",
    "clear_cache",
    "eager",
    "use_flex",
]
