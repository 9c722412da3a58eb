"""Hugging Face's attention rules, as ports of longseq's layers for converted checkpoints.

A converted model must give Hugging Face's numbers, including where Hugging Face's rules differ
from the mechanism as longseq defines it. Those differences live here, as subclasses that
reuse the core kernels through their hooks, so each core layer has one meaning:

- `bigbird-hf` (`HFBigBirdAttention`): `BigBirdBlockSparseAttention` in eval mode. Every
  "random" block is block 0 (HF's random index is all zeros outside training), so a middle
  query block sees block 0 once as a global block and r more times as "random" blocks: the
  r + 1 copies of its keys all enter the softmax, i.e. block 0's scores get + log(r + 1). The
  layout is that of the whole block-padded input (the global blocks are its first and last
  blocks even where they are padding), and inputs of n <= (5 + 2r) * block_size tokens get
  full attention, as HF switches to `original_full` for them. HF's shape only: ITC, 2 global
  blocks, 3 sliding blocks, not causal.
- `lsh-hf` (`HFLSHAttention`): Reformer's `LSHSelfAttention`. The hash rounds are laid end to
  end, so the first chunk of round r looks back at the last chunk of round r - 1, and the
  first chunk of round 0 at the last chunk of the last round (a key may be scored twice for
  one query, once per occurrence; a query meeting itself there gets the self score too). A
  sequence within one chunk is plain attention over it. Causal keeps HF's rule (keys at a
  later position masked), which is not prefix-stable, so there is no cache. With more than
  one chunk the arithmetic is HF's as well: probabilities exp(s - logsumexp(s)) and round
  weights exp(lse_r - logsumexp_r(lse)), whose float32 rounding differs visibly from a
  softmax when a row's only score is the self score (lse about -1e5, where float32 steps are
  0.0078: HF's weights then sum to 1 only to within ~0.4%, and that error reaches every later
  token through the next layers).
- `local-hf` (`HFLocalAttention`): Reformer's `LocalSelfAttention`, whose chunk indices are
  taken modulo the number of chunks (the first chunk looks back at the last one; a chunk that
  lands twice in one window is counted twice).

Wrapped outputs depend on the padded length: `pad_multiple` (LSH and local) sets it, and the
Reformer converter gives every layer the least common multiple of the chunk lengths, as HF
pads. None of these layers can run sequence-parallel, and causal ones that wrap cannot be
decoded with a cache (`use_cache=False`, `--no-cache`). Set a converted config's `attention`
to the core name (`bigbird`, `lsh`, `local`) for longseq's own rule with the same weights
(a different model: no parity).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from longseq.attention import ops, patterns
from longseq.attention.bigbird import BigBirdAttention
from longseq.attention.local import LocalAttention
from longseq.attention.lsh import (
    LSHAttention,
    LSHCache,
    _count_pairs,
    _Group,
    _Plan,
    _query_pos,
    _take,
    _window_pos,
    _window_rank,
)


def _no_shards(name: str, why: str) -> ValueError:
    return ValueError(
        f"'{name}' (a Hugging Face port) has no sequence-parallel form: {why}; use one process "
        "per sequence, or the core layer"
    )


# ------------------------------------------------------------------------------------ BigBird


class HFBigBirdAttention(BigBirdAttention):
    """BigBird as Hugging Face computes it in eval mode (see the module docstring)."""

    name = "bigbird-hf"
    flex_refusal = (
        "Hugging Face's eval layout repeats block 0 (its keys enter the softmax r + 1 times), "
        "which a mask cannot count; use backend='native'"
    )
    sequence_parallel = False  # see _no_shards
    supports_causal = False  # HF's BigBird is an encoder
    compared = False

    def __init__(self, hidden_size: int, num_heads: int, **options: Any) -> None:
        shape = {k: options.get(k, v) for k, v in _HF_BIGBIRD_SHAPE.items()}
        if shape != _HF_BIGBIRD_SHAPE:
            raise ValueError(
                f"'{self.name}' reproduces Hugging Face's BigBird, whose shape is "
                f"{_HF_BIGBIRD_SHAPE}; got {shape}"
            )
        super().__init__(hidden_size, num_heads, **options)

    def full_up_to(self) -> int:
        """HF uses full attention for inputs of up to this many tokens."""
        return (5 + 2 * self.num_random_blocks) * self.block_size

    def layout(self, nb_real: int) -> patterns.BigBirdLayout:
        return hf_eval_layout(nb_real, self.num_heads, self.num_random_blocks)

    def sequence_ends(self, real: Tensor) -> Tensor:
        """HF lays out the whole padded input, padding blocks included."""
        return torch.full_like(real[:, 0], real.shape[1], dtype=torch.long)

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        if hidden_states.shape[1] > self.full_up_to():
            return super().attend(hidden_states, real, glob)
        q, k, v = self.project(hidden_states)
        return ops.dense_attention(q, k, v, real, False, self.dropout if self.training else 0.0)

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Any
    ) -> Tensor:
        raise _no_shards(self.name, "its layout is that of the whole padded input")

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        """(heads, n, n) bool: the keys seen (block 0's repeated copies count once here)."""
        self.refuse_global_tokens(is_global)
        if n <= self.full_up_to():
            return torch.ones(self.num_heads, n, n, dtype=torch.bool)
        b = self.block_size
        blk = patterns.bigbird_blocks(self.layout(-(-n // b)))
        return blk.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :n, :n]


_HF_BIGBIRD_SHAPE = {"variant": "itc", "num_global_blocks": 2, "num_sliding_blocks": 3}


@functools.lru_cache(maxsize=64)
def hf_eval_layout(nb: int, num_heads: int, num_random_blocks: int) -> patterns.BigBirdLayout:
    """Hugging Face BigBird's eval-mode layout for nb blocks (see the module docstring).

    Global blocks 0 and nb - 1; block i sees i-1..i+1 (without the global ones), both global
    blocks, and block 0 again in each of its r random slots: unlike `bigbird_layout`, a row
    repeats a block (HF scores those copies of block 0 in the same softmax).
    """
    if nb < 2:
        raise ValueError(f"HF's eval layouts need >= 2 blocks (HF uses full attention), got {nb}")
    r = num_random_blocks
    glob = torch.tensor([0, nb - 1])
    sl = torch.arange(nb)[:, None] + torch.arange(-1, 2)
    sl_ok = (sl > 0) & (sl < nb - 1)  # in range and not a global block
    gl = glob.expand(nb, 2)
    index = torch.cat([sl.clamp(0, nb - 1), gl, torch.zeros(nb, r, dtype=torch.long)], -1)
    valid = torch.cat([sl_ok, torch.ones(nb, 2 + r, dtype=torch.bool)], -1)
    valid[glob] = False
    index = index.masked_fill(~valid, 0)
    k = index.shape[-1]
    return patterns.BigBirdLayout(
        index.expand(num_heads, nb, k), valid.expand(num_heads, nb, k), glob
    )


# ------------------------------------------------------------------------- Reformer: padding


class _PadMultiple:
    """Mixin: pad to `pad_multiple` (a multiple of chunk_length), as HF pads every layer's input
    to the lcm of the model's chunk lengths; with wrap-around the padding changes outputs."""

    chunk_length: int
    pad_multiple: int

    def _set_pad_multiple(self, pad_multiple: int | None) -> None:
        ops.check_pad_multiple(pad_multiple, self.chunk_length)
        self.pad_multiple = pad_multiple or self.chunk_length

    @property
    def length_multiple(self) -> int:
        return self.pad_multiple

    def wraps(self, padded_len: int) -> bool:
        """HF wraps around once there is more than one chunk."""
        return padded_len > self.chunk_length


# ---------------------------------------------------------------------------------------- LSH


def _hf_window_pos(perm: Tensor, c: int, wrap: bool) -> Tensor:
    """Original positions of each window's keys, (..., R, C, 2c). Wrapping, the rounds are
    laid end to end: the first chunk of round r looks back at the last chunk of round r - 1
    (of the last round for round 0); otherwise the core layer's windows."""
    if not wrap:
        return _window_pos(perm, c)
    r, n = perm.shape[-2:]
    win = perm.unflatten(-1, (n // c, c))
    prev = win.flatten(-3, -2).roll(1, dims=-2).unflatten(-2, (r, n // c))
    return torch.cat([prev, win], dim=-1)


class _HFGroup(_Group):
    """HF's windows: causal masks later positions; wrapping, the first window's look-back is
    the unit's last chunk (each group one unit), where a query may meet itself."""

    plan: _HFPlan

    def __init__(self, plan: _HFPlan, u0: int, u1: int) -> None:
        super().__init__(plan, u0, u1)
        c = plan.chunk
        self.self_lookback: Tensor | None = None  # (units, R, c, c)
        if plan.wrap:
            perm = plan.perm[u0:u1]
            prev = plan.window_pos(perm)[..., 0, :c]  # (units, R, c)
            self.self_lookback = perm[..., :c].unsqueeze(-1) == prev.unsqueeze(-2)

    def causal_hidden(self, perm: Tensor) -> Tensor:
        return self.plan.window_pos(perm).unsqueeze(-2) > _query_pos(perm, self.plan.chunk)

    def fill_lookback(self, buf: Tensor) -> None:
        if self.plan.wrap:  # one unit: the first window looks back at the unit's last chunk
            c = self.plan.chunk
            buf[:c].copy_(buf[-c:])

    def score_lookback(self, s5: Tensor, neg: float, own: float) -> None:
        if self.self_lookback is None:
            super().score_lookback(s5, neg, own)
        else:
            s5[:, :, 0, :, : self.plan.chunk].masked_fill_(self.self_lookback, own)

    def constant_scores(self, ds: Tensor) -> None:
        super().constant_scores(ds)
        if self.self_lookback is not None:
            c = self.plan.chunk
            ds.view(self.plan.rounds, -1, c, 2 * c)[:, 0, :, :c].masked_fill_(
                self.self_lookback[0], 0.0
            )

    def lookback_grads(
        self, ds: Tensor, p: Tensor, q: Tensor, do: Tensor, dk: Tensor, dv: Tensor
    ) -> None:
        if self.plan.wrap:  # the first window's look-back is the unit's last chunk
            c = self.plan.chunk
            dk[-1].addmm_(ds[0, :, :c].T, q[0])
            dv[-1].addmm_(p[0, :, :c].T, do[0])


class _HFPlan(_Plan):
    """HF's rule for the LSH kernel: wrapping (more than one chunk), the rounds end to end,
    one unit per group, and HF's arithmetic."""

    group_class = _HFGroup

    def __init__(
        self,
        perm: Tensor,
        chunk: int,
        n_real: Tensor | None,
        causal: bool,
        element_size: int,
        wrap: bool,
    ) -> None:
        self.wrap = wrap
        super().__init__(perm, chunk, n_real, causal, element_size)

    def group_size(self, unit_bytes: int) -> int:
        return 1 if self.wrap else super().group_size(unit_bytes)

    def window_pos(self, perm: Tensor) -> Tensor:
        return _hf_window_pos(perm, self.chunk, self.wrap)

    def row_softmax(self, s: Tensor, p: Tensor, lse: Tensor, need_lse: bool) -> None:
        if not self.wrap:
            return super().row_softmax(s, p, lse, need_lse)
        torch.logsumexp(s, dim=-1, out=lse)
        torch.sub(s, lse.unsqueeze(-1), out=p).exp_()

    def round_weights(self, lse: Tensor) -> Tensor:
        if not self.wrap:
            return super().round_weights(lse)
        return (lse - torch.logsumexp(lse, dim=-1, keepdim=True)).exp()


class HFLSHAttention(_PadMultiple, LSHAttention):
    """Reformer's LSH attention as Hugging Face computes it (see the module docstring).

    Options: those of `lsh`, and `pad_multiple`: pad the sequence to a multiple of this (a
    multiple of chunk_length; None: chunk_length).
    """

    name = "lsh-hf"
    compared = False
    bucket_window_causal = False  # causal: HF's rule, later positions masked

    def __init__(
        self, hidden_size: int, num_heads: int, *, pad_multiple: int | None = None, **options: Any
    ) -> None:
        super().__init__(hidden_size, num_heads, **options)
        self._set_pad_multiple(pad_multiple)

    def plan(
        self, buckets: Tensor, perm: Tensor, n_real: Tensor | None, element_size: int
    ) -> _Plan:
        wrap = self.wraps(perm.shape[-1])
        return _HFPlan(perm, self.chunk_length, n_real, self.causal, element_size, wrap)

    def new_cache(self) -> LSHCache:
        self._check_cacheable()
        raise ValueError(
            f"causal '{self.name}' (Hugging Face's rule) is not prefix-stable: a first chunk "
            "looks back at the last chunk of another round, which later tokens change. Decode "
            "it without a cache (use_cache=False; --no-cache), or use 'lsh' (the same weights, "
            "the prefix-stable rule)"
        )

    def scored_pairs(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, H, N, N) int64: as `LSHAttention.scored_pairs`, with HF's windows: the previous
        chunk in the rounds laid end to end (once there is more than one chunk), counted once
        per occurrence; causal: j <= i."""
        n0 = hidden_states.shape[1]
        qk, real = self._prepare(hidden_states, attention_mask)
        c, n = self.chunk_length, qk.shape[2]
        with torch.no_grad():
            perm = self.sort_order(self.hash(qk, real))
            q_pos = _query_pos(perm, c)
            k_pos = _hf_window_pos(perm, c, self.wraps(n)).unsqueeze(-2)
            ok = _take(real, q_pos) & _take(real, k_pos)
            if not self.wraps(n):  # a first chunk's look-back is a placeholder
                ok = ok & (_window_rank(n, c, qk.device) >= 0)
            if self.causal:
                ok = ok & (k_pos <= q_pos)
        return _count_pairs(q_pos, k_pos, ok, n)[:, :, :n0, :n0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad_multiple={self.pad_multiple}"


# -------------------------------------------------------------------------------------- local


class HFLocalAttention(_PadMultiple, LocalAttention):
    """Reformer's local attention as Hugging Face computes it: chunk indices wrap around (see
    the module docstring). Options: those of `local`, and `pad_multiple` (as `lsh-hf`)."""

    name = "local-hf"
    flex_refusal = "a port of Hugging Face's wrap-around rule; use backend='native'"
    sequence_parallel = False  # see _no_shards

    def __init__(
        self, hidden_size: int, num_heads: int, *, pad_multiple: int | None = None, **options: Any
    ) -> None:
        super().__init__(hidden_size, num_heads, **options)
        self._set_pad_multiple(pad_multiple)

    def window_rows(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Every row exists: chunk indices are taken modulo the number of chunks."""
        src, exists = super().window_rows(n, device)
        return src, exists | self.wraps(n)

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Any
    ) -> Tensor:
        raise _no_shards(self.name, "its first chunk looks back at the last one")

    def new_cache(self) -> Any:
        """With a look-back of one chunk and no look-ahead, causal wrapping changes nothing (a
        wrapped-around chunk is a later one, hidden): the core cache. Otherwise a window can
        wrap onto earlier chunks, depending on the padded length, which no cache reproduces."""
        if self.causal and (self.num_chunks_before > 1 or self.num_chunks_after > 0):
            raise ValueError(
                f"causal '{self.name}' with num_chunks_before > 1 or num_chunks_after > 0 is not "
                "prefix-stable: windows wrap onto earlier chunks depending on the padded length. "
                "Decode it without a cache (use_cache=False; --no-cache), or use 'local'"
            )
        return super().new_cache()

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        """(heads, n, n) bool: the chunks each query sees, chunk indices modulo the number of
        chunks of the padded length (a chunk counted twice still shows once)."""
        padded = -(-n // self.pad_multiple) * self.pad_multiple
        if not self.wraps(padded):
            return super().pattern(n, is_global)
        chunks, c = padded // self.chunk_length, self.chunk_length

        def mod(q: Tensor, k: Tensor) -> Tensor:
            cq, ck = q // c, k // c
            ok = torch.zeros_like(q - k, dtype=torch.bool)
            for o in range(-self.num_chunks_before, self.num_chunks_after + 1):
                ok = ok | ((cq + o) % chunks == ck)
            return ok & (k <= q) if self.causal else ok

        return patterns.materialize(mod, n).expand(self.num_heads, n, n)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad_multiple={self.pad_multiple}"


__all__ = ["HFBigBirdAttention", "HFLSHAttention", "HFLocalAttention", "hf_eval_layout"]
