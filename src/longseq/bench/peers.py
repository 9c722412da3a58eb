"""Adapters that make other libraries' attention layers callable as `f(x) -> (B, N, hidden)`.

Every peer is built with the same hidden size, heads and pattern settings as the longseq layer
it is compared with, and completed where it lacks a part so both sides do the same work:

- Hugging Face `LongformerSelfAttention`, `BigBirdBlockSparseAttention` and Reformer's
  `LSHSelfAttention` stop at the per-head context; the adapter adds the output `nn.Linear`
  (in Hugging Face it lives in the next module, `*SelfOutput`, with LayerNorm and residual).
- lucidrains' `LinformerSelfAttention` already has its output projection.

Masks the Hugging Face models build once per forward pass (Longformer's additive mask, BigBird's
band/from/to masks) are built once here, outside the timed call, as the model would share them
across layers. A peer that cannot run a setting raises `PeerUnavailable` with the reason
(missing package, sequence length the layer does not accept); the benchmark records it as
skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from longseq.attention.lsh import derived_num_buckets


class PeerUnavailable(Exception):
    """The peer cannot run this setting (reason in the message)."""


@dataclass
class Peer:
    module: nn.Module
    fn: Callable[[Tensor], Tensor]


def _hf(module: str) -> Any:
    try:
        return importlib.import_module(f"transformers.models.{module}")
    except ImportError as err:  # transformers absent or too old
        raise PeerUnavailable(
            f"transformers not importable ({err}); pip install 'longseq[peers]'"
        ) from err


class _WithOutput(nn.Module):
    """A peer's attention followed by the output projection it lacks."""

    def __init__(self, attn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.attn = attn
        self.out = nn.Linear(hidden, hidden)


def hf_longformer(
    hidden: int, heads: int, n: int, *, window: int = 512, global_tokens: int = 0, **_: Any
) -> Peer:
    """transformers' LongformerSelfAttention; its own additive mask: 0 local, +big global."""
    if n % window:
        raise PeerUnavailable(
            f"HF LongformerSelfAttention needs n to be a multiple of attention_window={window} "
            f"(LongformerModel pads to it), got n={n}"
        )
    mod = _hf("longformer.modeling_longformer")
    cfg = mod.LongformerConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        attention_window=[window],
        num_hidden_layers=1,
        attention_probs_dropout_prob=0.0,
    )
    layer = _WithOutput(mod.LongformerSelfAttention(cfg, layer_id=0), hidden)
    state: dict[str, Tensor] = {}

    def fn(x: Tensor) -> Tensor:
        if "mask" not in state or state["mask"].shape != x.shape[:2]:
            mask = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
            mask[:, :global_tokens] = torch.finfo(x.dtype).max  # > 0 marks global tokens
            state["mask"] = mask
        mask = state["mask"]
        is_global = mask > 0
        ctx = layer.attn(
            x,
            attention_mask=mask,
            is_index_masked=mask < 0,
            is_index_global_attn=is_global,
            is_global_attn=global_tokens > 0,
        )[0]
        return layer.out(ctx)

    return Peer(layer, fn)


def hf_bigbird(
    hidden: int, heads: int, n: int, *, block_size: int = 64, num_random_blocks: int = 3, **_: Any
) -> Peer:
    """transformers' BigBirdBlockSparseAttention (ITC: 2 global, 3 sliding blocks, fixed)."""
    min_len = (5 + 2 * num_random_blocks) * block_size
    if n % block_size or n <= min_len:
        raise PeerUnavailable(
            f"HF BigBird block-sparse needs n a multiple of block_size={block_size} and "
            f"n > {min_len} (BigBirdModel falls back to full attention below), got n={n}"
        )
    mod = _hf("big_bird.modeling_big_bird")
    cfg = mod.BigBirdConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        block_size=block_size,
        num_random_blocks=num_random_blocks,
        attention_type="block_sparse",
        max_position_embeddings=max(n, 4096),
    )
    layer = _WithOutput(mod.BigBirdBlockSparseAttention(cfg, seed=0), hidden)
    state: dict[str, Any] = {}

    def fn(x: Tensor) -> Tensor:
        if state.get("shape") != x.shape[:2]:
            mask = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
            blocked, band, from_mask, to_mask = mod.BigBirdModel.create_masks_for_block_sparse_attn(
                mask, block_size
            )
            state.update(shape=x.shape[:2], masks=(band, from_mask, to_mask, blocked, blocked))
        band, from_mask, to_mask, from_blocked, to_blocked = state["masks"]
        ctx = layer.attn(
            x,
            band_mask=band,
            from_mask=from_mask,
            to_mask=to_mask,
            from_blocked_mask=from_blocked,
            to_blocked_mask=to_blocked,
        )[0]
        return layer.out(ctx)

    return Peer(layer, fn)


def hf_reformer(
    hidden: int,
    heads: int,
    n: int,
    *,
    chunk_length: int = 64,
    n_hashes: int = 1,
    num_buckets: int | None = None,
    num_chunks_before: int = 1,
    num_chunks_after: int = 0,
    seed: int | None = 0,
    **_: Any,
) -> Peer:
    """transformers' Reformer LSHSelfAttention (shared QK, no biases in its projections);
    `num_buckets` None: the count our layer derives for n (Hugging Face's own rule, fixed)."""
    if n % chunk_length:
        raise PeerUnavailable(
            f"HF Reformer LSHSelfAttention needs n a multiple of lsh_attn_chunk_length="
            f"{chunk_length} (ReformerModel pads to it), got n={n}"
        )
    mod = _hf("reformer.modeling_reformer")
    cfg = mod.ReformerConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        attention_head_size=hidden // heads,
        attn_layers=["lsh"],
        lsh_attn_chunk_length=chunk_length,
        num_hashes=n_hashes,
        num_buckets=derived_num_buckets(n, chunk_length) if num_buckets is None else num_buckets,
        lsh_num_chunks_before=num_chunks_before,
        lsh_num_chunks_after=num_chunks_after,
        hash_seed=seed,
        lsh_attention_probs_dropout_prob=0.0,
        is_decoder=False,
        max_position_embeddings=max(n, 4096),
    )
    layer = _WithOutput(mod.LSHSelfAttention(cfg, layer_idx=0), hidden)
    return Peer(layer, lambda x: layer.out(layer.attn(x).hidden_states))


def lucidrains_linformer(hidden: int, heads: int, n: int, *, k: int = 256, **_: Any) -> Peer:
    """lucidrains' LinformerSelfAttention: E, F (n x k) shared by the heads, separate for K, V."""
    try:  # an optional peer (the `peers` extra): imported only when it is benchmarked
        from linformer import LinformerSelfAttention
    except ImportError as err:
        raise PeerUnavailable(
            f"linformer not importable ({err}); pip install 'longseq[peers]'"
        ) from err
    layer = LinformerSelfAttention(dim=hidden, seq_len=n, k=k, heads=heads)
    return Peer(layer, layer)


BUILDERS: dict[str, Callable[..., Peer]] = {
    "hf_longformer": hf_longformer,
    "hf_bigbird": hf_bigbird,
    "hf_reformer": hf_reformer,
    "lucidrains_linformer": lucidrains_linformer,
}


def build_peer(builder: str, hidden: int, heads: int, n: int, **settings: Any) -> Peer:
    return BUILDERS[builder](hidden, heads, n, **settings)
