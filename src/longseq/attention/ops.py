"""Shared mechanics for every attention kernel.

Input checks, head reshapes, padding a sequence to a block multiple (and back), key-padding
masks (the additive `mask_bias` the kernels add to their scores), the causal rule. Kernels
call these instead of re-implementing them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# Finite "minus infinity": a fully masked row gives finite (ignored) values instead of NaN.
NEG_INF = -1e9


def neg_inf(dtype: torch.dtype) -> float:
    """NEG_INF, or the dtype's lowest value where -1e9 does not fit (fp16: -65504)."""
    return max(NEG_INF, torch.finfo(dtype).min) if dtype.is_floating_point else NEG_INF


def check_hidden(hidden_states: Tensor, hidden_size: int) -> None:
    if not isinstance(hidden_states, Tensor):
        raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    if hidden_states.dim() != 3:
        raise ValueError(
            "hidden_states must have shape (batch, seq, hidden), got "
            f"{tuple(hidden_states.shape)}; add a batch dimension with .unsqueeze(0)"
        )
    if hidden_states.shape[-1] != hidden_size:
        raise ValueError(
            f"hidden_states has hidden size {hidden_states.shape[-1]} but the layer was built with "
            f"hidden_size={hidden_size}"
        )
    if hidden_states.shape[1] == 0:
        raise ValueError("hidden_states has an empty sequence (seq = 0)")
    if hidden_states.shape[0] == 0:
        raise ValueError("hidden_states has an empty batch (batch = 0)")


def tracing() -> bool:
    """Whether a program is being exported (torch.export, ONNX: longseq.convert.program): no
    branch on a tensor's values then. Value checks are skipped and the general path (padding,
    global tokens present) is taken, which computes the same as a fast path. (torch.compile
    is not exporting: it guards on such branches and recompiles, keeping the fast paths.)"""
    return torch.compiler.is_exporting()


# A traced program's number of global-token slots per row (their count is data; see
# longseq.convert.program). Rows with more global tokens fail at run time.
TRACE_GLOBAL_SLOTS = 16


def check_mask(mask: Tensor | None, name: str, batch: int, seq: int) -> Tensor | None:
    """Validate a (batch, seq) 0/1 mask and return it as bool (None stays None)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0/1 values, got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(
            f"{name} must have shape (batch, seq) = {(batch, seq)}, got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(
            f"{name} must be bool or integer (1 = keep, 0 = mask), got {mask.dtype}; "
            "additive float masks are not accepted: pass mask.bool() / mask.long() instead"
        )
    if not tracing() and ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{name} must contain only 0 and 1")
    return mask.bool()


def check_masks(
    hidden_states: Tensor,
    attention_mask: Tensor | None,
    global_attention_mask: Tensor | None,
    supports_global: bool,
    name: str,
    allow_empty: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Return (real, glob): real (B, N) bool, glob (B, N) bool or None when no token is global.

    `allow_empty`: a row may have no real token (a part of a sequence: a shard of it, or the
    next tokens of a decoding cache, where a finished row adds none)."""
    batch, seq = hidden_states.shape[:2]
    real = check_mask(attention_mask, "attention_mask", batch, seq)
    glob = check_mask(global_attention_mask, "global_attention_mask", batch, seq)
    if real is None:
        real = torch.ones(batch, seq, dtype=torch.bool, device=hidden_states.device)
    else:
        real = real.to(hidden_states.device)
        empty = [] if allow_empty or tracing() else (~real.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"attention_mask leaves no real token in sequence(s) {empty}: every query would "
                "have no key to attend to; remove those sequences from the batch"
            )
    if glob is not None:
        glob = glob.to(hidden_states.device)
        if not tracing() and not glob.any():
            glob = None
        elif not supports_global:
            raise ValueError(
                f"'{name}' attention has no global tokens; global_attention_mask must be None "
                "(use 'longformer' for token-level global attention; BigBird's globals are "
                "blocks, set by num_global_blocks)"
            )
        elif not tracing() and (glob & ~real).any():
            raise ValueError("global_attention_mask marks padding positions (attention_mask = 0)")
    return real, glob


def first_tokens(real: Tensor, glob: Tensor | None, count: int, start: int = 0) -> Tensor | None:
    """`glob` (B, N) or None with the real tokens at positions < `count` made global too; the
    rows are positions start.. (a shard of a sequence). None when no token is global."""
    n = real.shape[1]
    first = (torch.arange(start, start + n, device=real.device) < count) & real
    glob = first if glob is None else glob | first
    return glob if bool(glob.any()) else None


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def repeat_kv(x: Tensor, groups: int, dim: int = 1) -> Tensor:
    """Grouped-query attention: each of the KV heads on `dim` repeated `groups` times, so
    that query head i reads key/value head i // groups (Hugging Face's `repeat_kv`)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def pad_to_multiple(x: Tensor, multiple: int, dim: int, value: float | bool = 0) -> Tensor:
    """Pad `x` at the end of `dim` so its size is a multiple of `multiple` (no copy if it is)."""
    n = x.shape[dim]
    extra = -n % multiple
    if isinstance(extra, torch.SymInt) and tracing():  # pad a symbolic amount (maybe 0): no guard
        extra = torch.sym_max(extra, 0)
    elif extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, extra]
    return F.pad(x, pad, value=value)


def front(mask: Tensor) -> Tensor:
    """(B, N) indices that put each row's True positions first, in order, then the others:
    a stable sort, or while tracing a top-k of a key (ONNX has no stable sort)."""
    if not tracing():
        return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    n = mask.shape[1]
    key = mask.long() * n + (n - 1 - torch.arange(n, device=mask.device))
    return torch.topk(key, n, dim=1).indices


def pad_to_length(x: Tensor, length: int, dim: int, value: float | bool = 0) -> Tensor:
    """Pad `x` at the end of `dim` to `length` (>= its size). Where the length is a multiple
    already computed, this keeps a traced program's shapes exact (no modulo to prove)."""
    extra = length - x.shape[dim]
    if not (isinstance(extra, torch.SymInt) and tracing()) and extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, extra]
    return F.pad(x, pad, value=value)


def blocks(x: Tensor, block: int, dim: int = -2) -> Tensor:
    """Split `dim` (a multiple of `block`) into (num_blocks, block)."""
    dim = dim % x.dim()
    return x.unflatten(dim, (x.shape[dim] // block, block))


def causal_allowed(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """Broadcasted `k_pos <= q_pos`: the causal rule written once."""
    return k_pos.unsqueeze(-2) <= q_pos.unsqueeze(-1)


def mask_bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where `allowed`, NEG_INF elsewhere. Adding it to scores masks them like masked_fill,
    but its backward is free (masked_fill's backward masks the gradient again). In float16,
    whose range ends at 65504, the dtype's lowest value instead: still finite."""
    return (~allowed).to(dtype) * neg_inf(dtype)


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, real: Tensor, causal: bool, dropout_p: float
) -> Tensor:
    """softmax(q k^T) v over every real key (causal: and k <= q), PyTorch's fused kernel; q is
    pre-scaled. Padding queries keep their own key (no empty row; their output is dropped).
    k, v may have fewer heads than q (grouped-query: a divisor), read without copies."""
    gqa = q.shape[1] != k.shape[1]
    if not tracing() and bool(real.all()):
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=1.0, enable_gqa=gqa
        )
    n = q.shape[-2]
    allowed = real[:, None, None, :]  # (B, 1, 1, N): padded keys are never seen
    if causal:
        tril = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        allowed = (allowed & tril) | torch.eye(n, dtype=torch.bool, device=q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=1.0, enable_gqa=gqa
    )


def is_int(x: Any) -> bool:
    """A true integer option (bool is an int in Python, but never a valid size)."""
    return isinstance(x, int) and not isinstance(x, bool)


def check_int(name: str, value: Any, minimum: int | None = None) -> None:
    """The one check of an integer option: `name must be an integer >= minimum, got value`."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")


def check_pad_multiple(pad_multiple: Any, chunk_length: int) -> None:
    """`pad_multiple` (None, or a positive multiple of `chunk_length`) for chunked kernels."""
    if pad_multiple is not None and (
        not is_int(pad_multiple) or pad_multiple < 1 or pad_multiple % chunk_length
    ):
        raise ValueError(
            f"pad_multiple must be a positive multiple of chunk_length={chunk_length} (or "
            f"None), got {pad_multiple!r}"
        )
