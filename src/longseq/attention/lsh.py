"""Reformer's LSH attention (Kitaev et al., 2020): shared-QK attention within hash buckets.

Per head, one projection gives qk_i; keys are qk normalised to unit length (Hugging Face's
`_len_and_dim_norm`: key_j = qk_j / rms(qk_j) / sqrt(d), rms over the head dim, eps 1e-6), so

    score(i, j) = qk_i . key_j

Hashing (angular LSH). Random rotations R (heads, d, n_hashes, num_buckets/2) are drawn from a
`torch.Generator` seeded by `seed` (the same draw as Hugging Face's `torch.manual_seed(hash_seed)`;
the same in training and eval). In round r, token i goes to bucket
argmax(cat[qk_i R_r, -qk_i R_r]); padding tokens go to the extra bucket `num_buckets`.

Scoring windows. Each round sorts the tokens by (bucket, position), so padding comes after
every real token; the sorted sequence is cut into chunks of `chunk_length`, and each chunk
attends to itself and to the previous chunk of the SAME round. The first chunk of a round has
no previous chunk: unlike Hugging Face, nothing wraps around (from the first chunk to the last
one, or across rounds). This is what makes a batch of padded sequences give the same outputs
as each sequence alone (padding only ever fills the tail of a round).

Masks within a window: padding keys and, when causal, keys at a later original position get
NEG_INF (-1e9); the query's own key gets -1e5 (Hugging Face's self_mask_value), so a token
attends to itself only when no other key is available, and a row is never empty (no NaN).

Rounds. Round r gives out_r(i) and lse_r(i) (the logsumexp of row i); they are combined as

    out(i) = sum_r softmax_r(lse_r(i)) out_r(i)
           = sum_j count(i, j) exp(s_ij) v_j / sum_j count(i, j) exp(s_ij),

one softmax over every scored pair, a pair scored in several rounds counted as many times
(no de-duplication, as in Hugging Face). `count` is what `scored_pairs` returns.

The fast path gathers the sorted queries and their (previous, own) key/value chunks and runs
batched matmuls over (batch, heads, n_hashes * n_chunks, chunk, 2 * chunk): time and memory
are linear in the sequence length. The sequence is padded internally to a multiple of
`chunk_length`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from longseq.attention import ops
from longseq.attention.base import SelfAttention

SELF_MASK = -1e5  # a query's score with itself (Hugging Face's self_mask_value)
_NORM_EPS = 1e-6  # Hugging Face's _len_norm epsilon


def derived_num_buckets(padded_len: int, chunk_length: int) -> int:
    """Hugging Face's default: 2 * padded_len / chunk_length, rounded down to a power of 2, >= 2."""
    return max(2, 2 ** ((2 * (padded_len // chunk_length)).bit_length() - 1))


class LSHAttention(SelfAttention):
    """Reformer LSH self-attention (shared QK). See the module docstring for the math.

    Options:
        num_buckets: buckets per hashing round (even, >= 2). None derives it from the padded
            batch length like Hugging Face (about 2 * n / chunk_length, a power of two): the
            bucket count then depends on the padded length of the batch, so a batch matches
            each sequence alone only with a fixed `num_buckets`.
        n_hashes: hashing rounds; more rounds, fewer missed neighbours, proportional cost.
        chunk_length: tokens per chunk; a query sees its chunk and the previous one.
        seed: seed of the random rotations (deterministic, the same in train and eval).
    """

    name = "lsh"
    shared_qk = True

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        num_buckets: int | None = None,
        n_hashes: int = 1,
        chunk_length: int = 64,
        seed: int = 0,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        if num_buckets is not None and (
            not _is_int(num_buckets) or num_buckets < 2 or num_buckets % 2
        ):
            raise ValueError(
                f"num_buckets must be an even integer >= 2 (or None to derive it from the "
                f"sequence length), got {num_buckets!r}"
            )
        if not _is_int(n_hashes) or n_hashes < 1:
            raise ValueError(f"n_hashes must be an integer >= 1, got {n_hashes!r}")
        if not _is_int(chunk_length) or chunk_length < 1:
            raise ValueError(f"chunk_length must be an integer >= 1, got {chunk_length!r}")
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        super().__init__(hidden_size, num_heads, causal=causal, dropout=dropout, bias=bias)
        self.num_buckets = num_buckets
        self.n_hashes = n_hashes
        self.chunk_length = chunk_length
        self.seed = seed

    # ----------------------------------------------------------------------------- hashing

    def qk_and_value(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        """Shared query/key vectors and values, (B, H, N, D), before any normalisation."""
        h = self.num_heads
        return (
            ops.split_heads(self.query(hidden_states), h),
            ops.split_heads(self.value(hidden_states), h),
        )

    def rotations(self, num_buckets: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Random rotations (heads, head_dim, n_hashes, num_buckets / 2), a function of `seed`."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.num_heads, self.head_dim, self.n_hashes, num_buckets // 2)
        return torch.randn(shape, generator=gen, dtype=dtype).to(device)

    def hash(self, qk: Tensor, real: Tensor) -> Tensor:
        """Bucket of every token in every round, (B, H, n_hashes, N); padding -> num_buckets.

        `qk` (B, H, N, D) with N a multiple of chunk_length; `real` (B, N) bool.
        """
        b, h, n, d = qk.shape
        nb = self.num_buckets or derived_num_buckets(n, self.chunk_length)
        rot = self.rotations(nb, qk.dtype, qk.device).reshape(h, d, -1)
        x = torch.matmul(qk.detach(), rot).view(b, h, n, self.n_hashes, nb // 2)
        # argmax over cat([x, -x]) without building it (first index wins ties, as argmax)
        hi, i_hi = x.max(dim=-1)
        lo, i_lo = x.min(dim=-1)
        buckets = torch.where(hi >= -lo, i_hi, i_lo + nb // 2).transpose(2, 3)
        return buckets.masked_fill(~real[:, None, None, :], nb)

    def buckets(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, H, n_hashes, N) bucket ids of a batch (padding: num_buckets). For tests/analysis."""
        qk, real = self._prepare(hidden_states, attention_mask)
        with torch.no_grad():
            return self.hash(qk, real)[..., : hidden_states.shape[1]]

    @staticmethod
    def sort_order(buckets: Tensor) -> Tensor:
        """Per round, positions sorted by (bucket, position): (B, H, R, N) int64."""
        n = buckets.shape[-1]
        pos = torch.arange(n, device=buckets.device)
        return torch.argsort(buckets * n + pos, dim=-1)

    # ----------------------------------------------------------------------------- attention

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        n0 = hidden_states.shape[1]
        c = self.chunk_length
        qk, v = self.qk_and_value(hidden_states)
        qk = ops.pad_to_multiple(qk, c, dim=2)
        v = ops.pad_to_multiple(v, c, dim=2)
        real = ops.pad_to_multiple(real, c, dim=1, value=False)
        key = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + _NORM_EPS) * self.head_dim**-0.5

        with torch.no_grad():
            perm = self.sort_order(self.hash(qk, real))  # (B, H, R, N)
            idx = _Indices(perm, c)
            mask = self._window_mask(perm, real, idx.window_pos(), not bool(real.all()))

        p = self.dropout if self.training else 0.0
        ctx = _LSHChunkAttention.apply(qk, key, v, idx, mask, c, p)  # (B, H, N, D)
        return ctx[:, :, :n0]

    def _window_mask(
        self, perm: Tensor, real: Tensor, win_pos: Tensor, padded: bool
    ) -> Tensor | None:
        """True where a window key gets NEG_INF (padding; later keys when causal), broadcastable
        to (B, H, R, C, c, 2c); None when nothing is. The first chunk's missing previous chunk
        is masked separately, in place."""
        b, h, r, n = perm.shape
        c = self.chunk_length
        mask = None
        if padded:
            # padding sorts last, so a key is padding iff its rank in the round >= #real tokens
            rank = torch.arange(-c, n, device=perm.device).unfold(0, 2 * c, c)  # (C, 2c)
            n_real = real.sum(-1).view(b, 1, 1, 1, 1, 1)
            mask = rank[:, None, :] >= n_real  # (B, 1, 1, C, 1, 2c)
        if self.causal:
            later = win_pos.unsqueeze(-2) > perm.view(b, h, r, n // c, c, 1)
            mask = later if mask is None else mask | later
        return mask

    # ----------------------------------------------------------------------------- pattern

    def scored_pairs(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, H, N, N) int64: in how many rounds key j was scored for query i.

        count(i, j) = number of rounds in which j lies in i's window (i's chunk or the previous
        chunk of the same round, after sorting) AND the pair is allowed: i and j are real
        tokens and, when causal, j <= i. The self pair (i, i) is counted (n_hashes for a real
        i): it is always in the window, with score SELF_MASK instead of qk_i . key_i. Rows of
        padding queries are zero. Dense in N: for tests and pictures on short sequences.
        """
        n0 = hidden_states.shape[1]
        qk, real = self._prepare(hidden_states, attention_mask)
        b, h, n, _ = qk.shape
        c = self.chunk_length
        with torch.no_grad():
            perm = self.sort_order(self.hash(qk, real))
            idx = _Indices(perm, c)
            q_pos = perm.view(b, h, -1, n // c, c, 1)
            k_pos = idx.window_pos().unsqueeze(-2)  # (B, H, R, C, 1, 2c)
            rank = torch.arange(-c, n, device=qk.device).unfold(0, 2 * c, c)[:, None, :]
            ok = (rank >= 0) & _take(real, q_pos) & _take(real, k_pos)
            if self.causal:
                ok = ok & (k_pos <= q_pos)
            flat = (q_pos * n + k_pos).expand(ok.shape).reshape(b, h, -1)
            counts = torch.zeros(b, h, n * n, dtype=torch.int64, device=qk.device)
            counts.scatter_add_(-1, flat, ok.reshape(b, h, -1).long())
        return counts.view(b, h, n, n)[:, :, :n0, :n0]

    def _prepare(
        self, hidden_states: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        ops.check_hidden(hidden_states, self.hidden_size)
        real, _ = ops.check_masks(hidden_states, attention_mask, None, False, self.name)
        with torch.no_grad():
            qk = ops.split_heads(self.query(hidden_states), self.num_heads)
        c = self.chunk_length
        return ops.pad_to_multiple(qk, c, dim=2), ops.pad_to_multiple(real, c, dim=1, value=False)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_buckets={self.num_buckets}, n_hashes={self.n_hashes}, "
            f"chunk_length={self.chunk_length}, seed={self.seed}"
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _take(real: Tensor, pos: Tensor) -> Tensor:
    """real (B, N) bool at positions pos (B, ...)."""
    return real.gather(1, pos.reshape(pos.shape[0], -1)).view(pos.shape)


class _Indices:
    """Flat row indices for the sort and the unsort (int64, no grad).

    Rows of the unsorted inputs are (b, h, n) flattened; sorted rows are (b, h, r, s);
    outputs are returned unsorted as (b, h, n, r) so the rounds of a token are adjacent.
    """

    def __init__(self, perm: Tensor, chunk: int) -> None:
        b, h, r, n = perm.shape
        dev = perm.device
        self.perm, self.chunk = perm, chunk
        rows = perm + (torch.arange(b * h, device=dev) * n).view(b, h, 1, 1)
        self.sort = rows.reshape(-1)  # sorted slot -> input row
        inv = torch.empty_like(perm).scatter_(-1, perm, torch.arange(n, device=dev).expand_as(perm))
        sorted_base = (torch.arange(b * h * r, device=dev) * n).view(b, h, r, 1)
        self.unsort = (inv + sorted_base).transpose(2, 3).reshape(-1)  # output row -> slot
        self.resort = (rows * r + torch.arange(r, device=dev).view(1, 1, r, 1)).reshape(-1)

    def window_pos(self) -> Tensor:
        """Original positions of each window's keys (previous chunk, own chunk): (B, H, R, C, 2c).

        The first chunk's previous chunk is a placeholder (the last chunk): always masked."""
        b, h, r, n = self.perm.shape
        c = self.chunk
        win = self.perm.view(b, h, r, n // c, c)
        return torch.cat([win.roll(1, dims=3), win], dim=-1)


def _windows(rows: Tensor, chunks: int, c: int) -> Tensor:
    """(chunks, 2c, D) overlapping view of rows ((chunks + 1) * c, D): window t is chunk t - 1
    then chunk t of the rows after a leading placeholder chunk; no copy."""
    stride = rows.stride(0)
    return rows.as_strided((chunks, 2 * c, rows.shape[1]), (c * stride, stride, rows.stride(1)),
                           rows.storage_offset())


class _LSHChunkAttention(torch.autograd.Function):
    """Sort, chunked attention with a look-back of one chunk, combine the rounds, unsort.

    (qk, key, value) (B, H, N, D) -> context (B, H, N, D), with a hand-written backward.
    Queries, keys and values are sorted with one gather into a buffer that starts with a
    placeholder chunk; a chunk's window (previous chunk, own chunk) is then an overlapping view
    of that buffer, so keys and values are never copied per window. A window crossing a round
    (or head) boundary only does so in a first chunk's masked half. Round r's output is scaled
    by its weight w_r = softmax_r(lse_r) in sorted order, then unsorted and summed. The
    backward sorts the incoming gradient with the forward's gather indices (a sort is a
    permutation per round), so no scatter-add is needed.
    """

    @staticmethod
    def forward(ctx: Any, qk: Tensor, key: Tensor, value: Tensor, idx: _Indices,
                mask: Tensor | None, chunk: int, dropout: float) -> Tensor:
        b, h, n, d = qk.shape
        r = idx.perm.shape[2]
        c, nc = chunk, n // chunk
        t = b * h * r * nc  # chunks over all heads and rounds
        rows = torch.cat([qk, key, value], dim=-1).view(-1, 3 * d)
        buf = rows.new_empty(((t + 1) * c, 3 * d))
        buf[:c].zero_()  # the placeholder chunk (masked, but must be finite)
        torch.index_select(rows, 0, idx.sort, out=buf[c:])
        q, k, v = _views(buf, t, c, d)
        s = torch.bmm(q, k.transpose(1, 2))  # (T, c, 2c)
        s6 = s.view(b, h, r, nc, c, 2 * c)
        s6[:, :, :, 0, :, :c] = ops.NEG_INF  # the first chunk has no previous chunk
        if mask is not None:
            s6.masked_fill_(mask, ops.NEG_INF)
        s[:, :, c:].diagonal(dim1=1, dim2=2).fill_(SELF_MASK)
        p = torch.softmax(s, dim=-1)
        w = None
        if r > 1:  # round weights softmax_r(lse_r); at the row max, p = exp(max - lse)
            lse = s.amax(-1).sub_(p.amax(-1).log_())
            lse_u = lse.view(-1).index_select(0, idx.unsort).view(b, h, n, r)
            w = torch.softmax(lse_u, dim=-1).view(-1).index_select(0, idx.resort)  # sorted
        del s, s6
        pd = p
        if dropout > 0.0:
            pd = p * (torch.rand_like(p) >= dropout) / (1.0 - dropout)
        out = torch.bmm(pd, v).view(-1, d)  # (T * c, D) sorted
        if w is not None:
            out.mul_(w.unsqueeze(-1))
        out = out.index_select(0, idx.unsort).view(b, h, n, r, d).sum(-2)
        ctx.save_for_backward(buf, p, pd, out, w)
        ctx.idx, ctx.chunk, ctx.dropout = idx, chunk, dropout
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
        buf, p, pd, out, w = ctx.saved_tensors
        idx, c, dropout = ctx.idx, ctx.chunk, ctx.dropout
        d = out.shape[-1]
        q, k, v = _views(buf, p.shape[0], c, d)
        # Per round: d out / d out_r = w_r, d out / d lse_r = w_r (out_r - out), so with
        # d out_r / d s = p (dO v^T - rowsum(dO * out_r)) and d lse_r / d s = p, the
        # softmax backward of round r is p * (dO_r v^T - w_r <g, out>), dO_r = w_r g (with
        # dropout too: rowsum(dO * out_r) = rowsum(p * dP) once the dropout scaling is undone).
        shift = (g * out).sum(-1).view(-1).index_select(0, idx.sort)
        do = g.reshape(-1, d).index_select(0, idx.sort)  # (T * c, D) sorted
        if w is not None:
            shift.mul_(w)
            do.mul_(w.unsqueeze(-1))
        do, shift = do.view(-1, c, d), shift.view(-1, c, 1)
        ds = torch.bmm(do, v.transpose(1, 2))  # dP, (T, c, 2c)
        if dropout > 0.0:
            ds.mul_((pd != 0) / (1.0 - dropout))
        ds.sub_(shift).mul_(p)
        ds[:, :, c:].diagonal(dim1=1, dim2=2).zero_()  # the self score is a constant
        dq = torch.bmm(ds, k)
        # a key/value chunk serves its own window and, as the look-back, the next one
        dk = torch.bmm(ds[:, :, c:].transpose(1, 2), q)
        dk[:-1].baddbmm_(ds[1:, :, :c].transpose(1, 2), q[1:])
        dv = torch.bmm(pd[:, :, c:].transpose(1, 2), do)
        dv[:-1].baddbmm_(pd[1:, :, :c].transpose(1, 2), do[1:])
        b, h, n, _ = out.shape
        r = idx.perm.shape[2]
        grads = [
            gr.view(-1, d).index_select(0, idx.unsort).view(b, h, n, r, d).sum(-2)
            for gr in (dq, dk, dv)
        ]
        return grads[0], grads[1], grads[2], None, None, None, None


def _views(buf: Tensor, chunks: int, c: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted queries (T, c, D) and key/value windows (T, 2c, D) inside the sort buffer."""
    q = buf[c:, :d].unflatten(0, (chunks, c))
    return q, _windows(buf[:, d : 2 * d], chunks, c), _windows(buf[:, 2 * d :], chunks, c)


__all__ = ["SELF_MASK", "LSHAttention", "derived_num_buckets"]
