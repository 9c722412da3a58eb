"""Chunked local attention: Reformer's `LocalSelfAttention` (Kitaev et al., 2020).

The sequence, padded to a multiple of the chunk length c, is cut into C chunks. Query i, in
chunk ci = i // c, sees the keys of chunks ci - b, ..., ci + a (b = `num_chunks_before`,
a = `num_chunks_after`), with ordinary separate projections q, k, v:

    out_i = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j      over j in those chunks,
                                                          real j only, and j <= i when causal.

No self-mask (queries and keys are different vectors, unlike LSH). Chunks before the first or
after the last do not exist, so padding never changes a real token's output. (Hugging Face
wraps chunk indices around, its first chunk looking back at the last one: that rule is the
port `local-hf` in `longseq.convert.hf_attention`, for converted checkpoints.)

Kernel (never n x n, memory O(n * W)). Keys and values are gathered once into an extended
sequence of b * c rows in front of the n rows and a * c behind (`window_rows`: the rows of
positions that do not exist are any rows, masked). Each chunk's window of W = (b + 1 + a) * c
keys is then a strided view (`unfold`), and one batched matmul gives the (C, c, W) scores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.attention import flex, ops, patterns
from longseq.attention.base import At, SelfAttention
from longseq.attention.cache import SlotCache
from longseq.attention.shard import Shard


class LocalAttention(SelfAttention):
    """Attention within a chunk and its neighbour chunks. See the module docstring.

    Options:
        chunk_length: tokens per chunk (c).
        num_chunks_before, num_chunks_after: neighbour chunks each query also sees.
    """

    name = "local"
    sequence_parallel = True
    flex_refusal = None
    auto_flex = True

    def export_padding(self) -> int:
        """A traced program's shortest length: more chunks than one window spans, so that no
        window meets a chunk twice (a branch the program would otherwise hold)."""
        chunks = (self.num_chunks_before + self.num_chunks_after + 2) * self.chunk_length
        return max(chunks, 2 * self.export_block())

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        chunk_length: int = 64,
        num_chunks_before: int = 1,
        num_chunks_after: int = 0,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        num_key_value_heads: int | None = None,
        backend: str = "native",
    ) -> None:
        ops.check_int("chunk_length", chunk_length, 1)
        ops.check_int("num_chunks_before", num_chunks_before, 0)
        ops.check_int("num_chunks_after", num_chunks_after, 0)
        super().__init__(
            hidden_size,
            num_heads,
            causal=causal,
            dropout=dropout,
            bias=bias,
            num_key_value_heads=num_key_value_heads,
            backend=backend,
        )
        self.chunk_length = chunk_length
        self.num_chunks_before = num_chunks_before
        self.num_chunks_after = num_chunks_after

    compared = False  # a Reformer building block, not one of the four classic mechanisms

    @classmethod
    def options_at(cls, at: At, given: dict[str, Any]) -> dict[str, Any]:
        """Under a reach: Reformer's chunk of 64, or the reach if shorter (as LSH's chunks)."""
        derived = {} if at.reach is None else {"chunk_length": min(64, at.reach)}
        return {**derived, **given}

    @property
    def length_multiple(self) -> int:
        return self.chunk_length

    def window_rows(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(src, exists) of the extended sequence of a padded length n: row t holds position
        src[t]; `exists` is False for the rows of chunks before the first and after the last."""
        c = self.chunk_length
        pos = torch.arange(
            -self.num_chunks_before * c, n + self.num_chunks_after * c, device=device
        )
        exists = (pos >= 0) & (pos < n)
        if ops.tracing():  # pos % n without a modulo by a symbolic size (ONNX lacks it);
            # exact while a window spans fewer than n positions, as a program's lengths are
            return torch.where(pos < 0, pos + n, torch.where(pos >= n, pos - n, pos)), exists
        return pos % n, exists

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        n0 = hidden_states.shape[1]
        c, m = self.chunk_length, self.length_multiple
        q, k, v = (ops.pad_to_multiple(t, m, dim=2) for t in self.project(hidden_states))
        real = ops.pad_to_multiple(real, m, dim=1, value=False)
        n, dev = q.shape[2], q.device
        w = (self.num_chunks_before + 1 + self.num_chunks_after) * c
        src, exists = self.window_rows(n, dev)
        k_win = k.index_select(2, src).unfold(2, w, c)  # (B, H, C, D, W): k^T of each window
        v_win = v.index_select(2, src).unfold(2, w, c).transpose(-1, -2)  # (B, H, C, W, D)
        allowed = (real[:, src] & exists).unfold(1, w, c)[:, None, :, None, :]  # (B,1,C,1,W)
        if self.causal:
            q_pos = torch.arange(n, device=dev).view(-1, c)  # (C, c)
            allowed = allowed & ops.causal_allowed(q_pos, src.unfold(0, w, c))  # (C, c, W)
        scores = torch.matmul(ops.blocks(q, c), k_win) + ops.mask_bias(allowed, q.dtype)
        probs = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        return torch.matmul(probs, v_win).flatten(2, 3)[:, :, :n0]

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Shard
    ) -> Tensor:
        """The chunks before (and after) as a halo from the neighbouring ranks; shards must
        hold whole chunks, so chunk boundaries fall where they do in the whole sequence."""
        c = self.chunk_length
        if shard.length % c:
            raise ValueError(
                f"sequence-parallel local attention needs shards of whole chunks ({shard.length} "
                f"tokens per shard, chunk_length {c})"
            )
        left = self.num_chunks_before * c
        right = 0 if self.causal else self.num_chunks_after * c
        return self._window_sharded(hidden_states, real, shard, left, right)

    def dense_up_to(self, limit: int) -> int:
        """Every pair is seen while the chunks in reach cover the sequence: causal, the
        num_chunks_before + 1 chunks up to the query's; bidirectional, every chunk must reach
        the first and the last (min(before, after) + 1 chunks)."""
        before, after = self.num_chunks_before, self.num_chunks_after
        chunks = before + 1 if self.causal else min(before, after) + 1
        return min(limit, chunks * self.chunk_length)

    def new_cache(self) -> SlotCache:
        """A ring of (num_chunks_before + 1) * chunk_length slots (constant memory): a causal
        query in chunk i sees chunks i - num_chunks_before .. i, rule `patterns.chunked_local`."""
        self._check_cacheable()
        mod = patterns.chunked_local(self.chunk_length, self.num_chunks_before, 0, True)
        return SlotCache(mod, size=(self.num_chunks_before + 1) * self.chunk_length)

    def _rule(self) -> patterns.MaskMod:
        return patterns.chunked_local(
            self.chunk_length, self.num_chunks_before, self.num_chunks_after, self.causal
        )

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        """(heads, n, n) bool: the chunks each query sees."""
        return patterns.materialize(self._rule(), n).expand(self.num_heads, n, n)

    def flex_mask(self, real: Tensor, glob: Tensor | None) -> flex.FlexMask:
        """The chunks of `pattern`, real keys only."""
        rule = self._rule()

        def mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return real[b, k] & rule(q, k)

        key = (self.name, self.chunk_length, self.num_chunks_before, self.num_chunks_after)
        return flex.FlexMask(mod, real, heads=False, key=(*key, self.causal))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, chunk_length={self.chunk_length}, "
            f"num_chunks_before={self.num_chunks_before}, "
            f"num_chunks_after={self.num_chunks_after}"
        )


__all__ = ["LocalAttention"]
