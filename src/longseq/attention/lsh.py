"""Reformer's LSH attention (Kitaev et al., 2020): shared-QK attention within hash buckets.

Per head, one projection gives qk_i; keys are qk normalised to unit length (Hugging Face's
`_len_and_dim_norm`: key_j = qk_j / rms(qk_j) / sqrt(d), rms over the head dim, eps 1e-6), so

    score(i, j) = qk_i . key_j

Hashing (angular LSH). Random rotations R (heads, d, n_hashes, num_buckets/2) are drawn from a
`torch.Generator` seeded by `seed` (the same draw as Hugging Face's `torch.manual_seed(hash_seed)`;
the same in training and eval). In round r, token i goes to bucket
argmax(cat[qk_i R_r, -qk_i R_r]); padding tokens go to the extra bucket `num_buckets`.
Factorised buckets, num_buckets = [f_1, f_2, ...] (Hugging Face's list form, used by its
pre-trained checkpoints): R has (f_1 + f_2 + ...)/2 columns per round, split in consecutive
groups of f_k/2; group k gives b_k = argmax(cat[x_k, -x_k]) and the bucket is
b_1 + f_1 b_2 + f_1 f_2 b_3 + ..., one of f_1 f_2 ... buckets.

Scoring windows. Each round sorts the tokens by (bucket, position), so padding comes after
every real token; the sorted sequence is cut into chunks of `chunk_length`, and each chunk
attends to itself and to the previous chunk of the SAME round. The first chunk of a round has
no previous chunk: nothing wraps around (from the first chunk to the last one, or across
rounds). This is what makes a batch of padded sequences give the same outputs as each sequence
alone (padding only ever fills the tail of a round). Hugging Face's rule, where the rounds are
laid end to end and a first chunk looks back at the previous round's last chunk, is the port
`lsh-hf` (`longseq.convert.hf_attention`), for converted checkpoints.

Masks within a window: padding keys get NEG_INF (-1e9); the query's own key gets -1e5
(Hugging Face's self_mask_value), so a token attends to itself only when no other key is
available, and a row is never empty (no NaN).

Causal attention is prefix-stable: the output at t depends on tokens <= t only, so a causal LM
computes in training what it computes token by token when generating (`LSHCache`). Chunk
boundaries in the sorted order move with where LATER tokens hash, so they cannot decide what an
earlier query sees. Instead, with rank_r(t) = #{s < t : bucket_r(s) = bucket_r(t)} (how many
earlier tokens share t's bucket in round r), query t sees in round r the keys

    { s : bucket_r(s) = bucket_r(t),  0 <= rank_r(t) - rank_r(s) < chunk_length },

the chunk_length latest tokens of its own bucket, itself included: a sliding window over each
bucket, a function of tokens <= t. Within a bucket the sorted order is the position order, so
rank differences are differences of sorted index, and those keys always lie in the query's
window (its chunk and the previous one): the same kernel, with a mask (same bucket, sorted
index in (i - chunk_length, i]) in place of "position <= t". The number of buckets must then be
fixed (`num_buckets=None` derives it from the padded length).

Rounds. Round r gives out_r(i) and lse_r(i) (the logsumexp of row i); they are combined as

    out(i) = sum_r softmax_r(lse_r(i)) out_r(i)
           = sum_j count(i, j) exp(s_ij) v_j / sum_j count(i, j) exp(s_ij),

one softmax over every scored pair, a pair scored in several rounds counted as many times
(no de-duplication, as in Hugging Face). `count` is what `scored_pairs` returns.

Dropout (training only) drops each round's attention probabilities, as Hugging Face does.
`num_buckets=None` takes Hugging Face's default for the padded length (never factorised).

The fast path sorts queries, keys and values with one gather per group of heads into a buffer
where each chunk's window (previous chunk, own chunk) is an overlapping view, and runs batched
matmuls over (n_hashes * n_chunks, chunk, 2 * chunk) per head: time and memory are linear in
the sequence length, nothing is n x n. The backward is written by hand and recomputes the
probabilities from the saved logsumexps (as FlashAttention does), so only O(n) is kept for it.
The sequence is padded internally to a multiple of `chunk_length`. The plan and group classes
(`_Plan`, `_Group`) have small hooks (the windows' keys, the first chunk's look-back, the row
softmax, the round weights) through which a port of another rule reuses this kernel.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from longseq.attention import ops, patterns, pictures
from longseq.attention.base import At, SelfAttention
from longseq.attention.cache import AttentionCache, SlotCache

SELF_MASK = -1e5  # a query's score with itself (Hugging Face's self_mask_value)
_NORM_EPS = 1e-6  # Hugging Face's _len_norm epsilon


BucketSpec = int | list[int] | None  # an even int, factors [f_1, f_2, ...], or None (derived)


def derived_num_buckets(padded_len: int, chunk_length: int) -> int:
    """Hugging Face's default: 2 * padded_len / chunk_length, rounded down to a power of 2, >= 2."""
    return max(2, 2 ** ((2 * (padded_len // chunk_length)).bit_length() - 1))


class LSHAttention(SelfAttention):
    """Reformer LSH self-attention (shared QK). See the module docstring for the math.

    Options:
        num_buckets: buckets per hashing round (even, >= 2), or a list of even factors
            [f_1, f_2, ...] for f_1 * f_2 * ... factorised buckets (see the module docstring).
            None derives it from the padded batch length like Hugging Face (about
            2 * n / chunk_length, a power of two): the bucket count then depends on the padded
            length of the batch, so a batch matches each sequence alone only with a fixed
            `num_buckets`.
        n_hashes: hashing rounds; more rounds, fewer missed neighbours, proportional cost.
        chunk_length: tokens per chunk; a query sees its chunk and the previous one.
        seed: seed of the random rotations (deterministic, the same in train and eval).
    """

    name = "lsh"
    shared_qk = True
    # causal queries see the chunk_length latest keys of their bucket (prefix-stable), which
    # needs a fixed bucket count; a port of another causal rule sets this False
    bucket_window_causal: ClassVar[bool] = True

    @classmethod
    def options_at(cls, at: At, given: dict[str, Any]) -> dict[str, Any]:
        """Under a reach: Reformer's chunk of 64 (its paper's and Hugging Face's at every
        length: more rounds, not longer chunks, buy recall), or the reach if shorter, and 2
        hashing rounds; the bucket count is left to the layer (about 2n/chunk per batch, as
        Hugging Face). A causal layer's bucket count is fixed from n (prefix stability)."""
        derived = {} if at.reach is None else {"chunk_length": min(64, at.reach), "n_hashes": 2}
        opts = {**derived, **given}
        if at.causal and cls.bucket_window_causal and opts.get("num_buckets") is None:
            c = opts.get("chunk_length", 64)
            if ops.is_int(c) and c >= 1:
                padded = -(-at.n // c) * c
                opts = {**opts, "num_buckets": derived_num_buckets(padded, c)}
        return opts

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        num_buckets: BucketSpec = None,
        n_hashes: int = 1,
        chunk_length: int = 64,
        seed: int = 0,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        num_key_value_heads: int | None = None,
    ) -> None:
        factors = [num_buckets] if ops.is_int(num_buckets) else num_buckets
        if num_buckets is not None and (
            not isinstance(factors, (list, tuple))
            or not factors
            or not all(ops.is_int(f) and f >= 2 and f % 2 == 0 for f in factors)
        ):
            raise ValueError(
                f"num_buckets must be an even integer >= 2, a list of them (factorised "
                f"buckets), or None to derive it from the sequence length; got {num_buckets!r}"
            )
        ops.check_int("n_hashes", n_hashes, 1)
        ops.check_int("chunk_length", chunk_length, 1)
        ops.check_int("seed", seed)
        if causal and self.bucket_window_causal and num_buckets is None:
            raise ValueError(
                "causal LSH attention needs a fixed num_buckets: None derives it from the padded "
                "length, so earlier outputs would change as the sequence grows (models set it "
                "from max_length)"
            )
        super().__init__(  # grouped-query attention is refused there: keys are queries
            hidden_size,
            num_heads,
            causal=causal,
            dropout=dropout,
            bias=bias,
            num_key_value_heads=num_key_value_heads,
        )
        self.num_buckets = list(num_buckets) if isinstance(num_buckets, tuple) else num_buckets
        self.n_hashes = n_hashes
        self.chunk_length = chunk_length
        self.seed = seed
        self._rotations: tuple[Any, Tensor | None] = (None, None)

    # ----------------------------------------------------------------------------- hashing

    def qk_and_value(
        self, hidden_states: Tensor, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Shared query/key vectors and values, (B, H, N, D), before any normalisation. Under
        rotary positions the shared vector of position p is rotated by p (default 0 .. N - 1)
        before hashing and scoring, so q_i . k_j depends on i - j as in the dense model (its
        buckets then depend on the position too)."""
        h = self.num_heads
        qk = ops.split_heads(self.query(hidden_states), h)
        if self.rotary is not None:
            qk, _ = self.rotary(qk, qk, positions=positions)
        return qk, ops.split_heads(self.value(hidden_states), h)

    def bucket_factors(self, padded_len: int) -> list[int]:
        """[f_1, ...]: the factors of the bucket count (one factor unless factorised)."""
        if self.num_buckets is None:
            return [derived_num_buckets(padded_len, self.chunk_length)]
        return [self.num_buckets] if ops.is_int(self.num_buckets) else list(self.num_buckets)

    def rotations(self, num_buckets: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Random rotations (heads, head_dim, n_hashes, num_buckets / 2), a function of `seed`.

        For factorised buckets pass the sum of the factors (Hugging Face's rotation_size)."""
        key = (self.seed, num_buckets, dtype, device)
        if self._rotations[0] != key:  # drawn once per setting (decoding hashes every token)
            gen = torch.Generator().manual_seed(self.seed)
            shape = (self.num_heads, self.head_dim, self.n_hashes, num_buckets // 2)
            self._rotations = (key, torch.randn(shape, generator=gen, dtype=dtype).to(device))
        return self._rotations[1]

    def hash(self, qk: Tensor, real: Tensor) -> Tensor:
        """Bucket of every token in every round, (B, H, n_hashes, N); padding -> the bucket
        count (f_1 * f_2 * ...).

        `qk` (B, H, N, D) with N a multiple of chunk_length; `real` (B, N) bool.
        """
        b, h, n, d = qk.shape
        factors = self.bucket_factors(n)
        rot = self.rotations(sum(factors), qk.dtype, qk.device).reshape(h, d, -1)
        x = torch.matmul(qk.detach(), rot).view(b, h, n, self.n_hashes, sum(factors) // 2)
        buckets = torch.zeros(b, h, n, self.n_hashes, dtype=torch.long, device=qk.device)
        start, scale = 0, 1
        for f in factors:
            xf = x[..., start : start + f // 2]
            # argmax over cat([xf, -xf]) without building it (first index wins ties, as argmax)
            hi, i_hi = xf.max(dim=-1)
            lo, i_lo = xf.min(dim=-1)
            buckets += scale * torch.where(hi >= -lo, i_hi, i_lo + f // 2)
            start, scale = start + f // 2, scale * f
        return buckets.transpose(2, 3).masked_fill(~real[:, None, None, :], scale)

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

    @property
    def length_multiple(self) -> int:
        return self.chunk_length

    def reach_bound(
        self, n: int, num_layers: int, *, samples: int = 400, seed: int = 0
    ) -> tuple[Tensor, Tensor, str]:
        """Identical shared-QK vectors share a bucket in every round; whether the sorted chunks
        put them in one window depends on how many other tokens share it. Estimated by drawing
        the other tokens' buckets uniformly (`samples` draws) and counting, among draws where
        p and q share a bucket, those where `patterns.lsh_round` lets q see p; reached if some
        round of some layer does (content decides, not distance: no relays, low = high)."""
        c = self.chunk_length
        padded = -(-n // c) * c
        buckets = math.prod(self.bucket_factors(padded))
        gen = torch.Generator().manual_seed(seed)
        seen = torch.zeros(n, n)
        same = torch.zeros(n, n)
        for _ in range(samples):
            draw = torch.randint(0, buckets, (n,), generator=gen)
            both = draw[:, None] == draw[None, :]
            mod = patterns.lsh_round(draw, c, self.causal)
            seen += (patterns.materialize(mod, n) & both).float()
            same += both.float()
        per_round = seen / same.clamp_min(1)
        r = 1 - (1 - per_round) ** (self.n_hashes * num_layers)
        basis = (
            f"identical shared-QK vectors share a bucket in every round; the sorted chunks of "
            f"{c} put them in one window (patterns.lsh_round, {buckets} buckets, other tokens "
            f"uniform, {samples} draws); {self.n_hashes} rounds x {num_layers} layers"
        )
        return r, r, basis

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Any
    ) -> Tensor:
        raise ValueError(
            "LSH attention has no exact sequence-parallel form: it sorts the whole sequence by "
            "hash bucket, so any token's window can hold any other's; use one process per "
            "sequence (data parallel) for LSH layers"
        )

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        n0 = hidden_states.shape[1]
        m = self.length_multiple
        qk, v = self.qk_and_value(hidden_states)
        qk = ops.pad_to_multiple(qk, m, dim=2)
        v = ops.pad_to_multiple(v, m, dim=2)
        real = ops.pad_to_multiple(real, m, dim=1, value=False)
        key = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + _NORM_EPS) * self.head_dim**-0.5
        with torch.no_grad():
            buckets = self.hash(qk, real)
            perm = self.sort_order(buckets)  # (B, H, R, N)
            n_real = None if bool(real.all()) else real.sum(-1)
            plan = self.plan(buckets, perm, n_real, qk.element_size())
        p = self.dropout if self.training else 0.0
        return _run_kernel(qk, key, v, plan, p)[:, :, :n0]

    def plan(
        self, buckets: Tensor, perm: Tensor, n_real: Tensor | None, element_size: int
    ) -> _Plan:
        """The kernel's plan for buckets and sort order perm (B, H, R, N)."""
        sorted_buckets = buckets.gather(-1, perm) if self.causal else None
        return _Plan(perm, self.chunk_length, n_real, self.causal, element_size, sorted_buckets)

    # ----------------------------------------------------------------------------- decoding

    def new_cache(self) -> LSHCache:
        """Every earlier token's key, value, buckets and rank in its bucket (see `LSHCache`)."""
        self._check_cacheable()
        return LSHCache(self.chunk_length, math.prod(self.bucket_factors(self.chunk_length)) + 1)

    def attend_cached(
        self, hidden_states: Tensor, cache: AttentionCache, positions: Tensor, real: Tensor
    ) -> Tensor:
        assert isinstance(cache, LSHCache)
        qk, v = self.qk_and_value(hidden_states, positions)
        key = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + _NORM_EPS) * self.head_dim**-0.5
        with torch.no_grad():
            buckets = self.hash(qk, real)  # (B, H, R, C); a fixed bucket count
        return cache.attend(qk, key, v, buckets, positions, real)

    # ----------------------------------------------------------------------------- pattern

    def scored_pairs(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, H, N, N) int64: in how many rounds key j was scored for query i.

        count(i, j) = number of rounds in which j lies in i's window (i's chunk or the previous
        chunk of the same round, after sorting) AND the pair is allowed: i and j are real
        tokens and, when causal, j is one of the chunk_length latest tokens of i's bucket up to
        i. The self pair (i, i) is counted (n_hashes times for a real i): it is in the window,
        with score SELF_MASK instead of qk_i . key_i. Rows of padding queries are zero. Dense
        in N: for tests and pictures on short sequences.
        """
        n0 = hidden_states.shape[1]
        qk, real = self._prepare(hidden_states, attention_mask)
        c, n = self.chunk_length, qk.shape[2]
        with torch.no_grad():
            buckets = self.hash(qk, real)
            perm = self.sort_order(buckets)
            q_pos, k_pos = _query_pos(perm, c), _window_pos(perm, c).unsqueeze(-2)
            ok = _window_rank(n, c, qk.device) >= 0  # a first chunk has no previous one
            ok = ok & _take(real, q_pos) & _take(real, k_pos)
            if self.causal:
                ok = ok & ~_bucket_window_hidden(buckets.gather(-1, perm), c)
        return _count_pairs(q_pos, k_pos, ok, n)[:, :, :n0, :n0]

    def _prepare(
        self, hidden_states: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        ops.check_hidden(hidden_states, self.hidden_size)
        real, _ = ops.check_masks(hidden_states, attention_mask, None, False, self.name)
        with torch.no_grad():
            qk = self.qk_and_value(hidden_states)[0]
        m = self.length_multiple
        return ops.pad_to_multiple(qk, m, dim=2), ops.pad_to_multiple(real, m, dim=1, value=False)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_buckets={self.num_buckets}, n_hashes={self.n_hashes}, "
            f"chunk_length={self.chunk_length}, seed={self.seed}"
        )

    @classmethod
    def picture(cls, n: int) -> pictures.Picture:
        """`scored_pairs` on four shuffled clusters of tokens (head 0), by how many rounds
        scored each pair: in token order; in round 1's sorted (bucket, position) order, where
        the chunks show; and the bucket of each token per round."""
        c, rounds = max(2, n // 8), 2
        nbk = derived_num_buckets(n, c)
        layer = cls(
            pictures.HIDDEN,
            pictures.HEADS,
            num_buckets=nbk,
            n_hashes=rounds,
            chunk_length=c,
            seed=0,
        )
        x = pictures.clustered_input(n)
        counts = layer.scored_pairs(x)[0, 0]
        buckets = layer.buckets(x)[0, 0]
        order = layer.sort_order(buckets)[0]
        rounds_scored = [f"scored in {i} round{'s' * (i > 1)}" for i in range(1, rounds + 1)]
        pic = pictures.Picture(
            cls.name,
            f"Reformer LSH (n={n}): chunk_length={c}, num_buckets={nbk}, "
            f"n_hashes={rounds}; input: 4 clusters of tokens, shuffled",
            note="Head 0. Tokens are sorted by (bucket, position) in each round and cut into "
            "chunks; a pair is scored when the key is in the query's chunk or the previous "
            "one. Grid lines: chunks.",
        )
        token_order = pictures.category_panel(
            "scored pairs, token order (head 0)", counts, rounds_scored, shaded=True
        )
        sorted_order = pictures.Panel(
            "same pairs in round-1 sorted order\n(bucket, position); "
            "a chunk sees itself + the previous chunk",
            counts[order][:, order],
            token_order.categories,
            shaded=True,
            grid=c,
            xlabel="key rank (sorted)",
            ylabel="query rank (sorted)",
        )
        bucket_ids = pictures.Panel(
            "bucket of each token per round",
            buckets,
            colorbar="bucket id",
            identifiers=True,
            xlabel="token position",
            ylabel="hashing round",
            vmax=nbk,
            yticks={r: str(r + 1) for r in range(rounds)},
        )
        pic.panels = [token_order, sorted_order, bucket_ids]
        return pic


class LSHCache(AttentionCache):
    """Incremental prefix-stable causal LSH: every earlier token's key and value, its bucket
    in each round, and its rank there (how many earlier tokens share that bucket).

    A new token t with buckets b_r and ranks rank_r(t) scores stored key s count(t, s) times,

        count(t, s) = #{r : bucket_r(s) = b_r, 0 <= rank_r(t) - rank_r(s) < chunk_length},

    its own key with SELF_MASK, in one softmax: out = sum_s count exp(score) v / sum_s count
    exp(score), the kernel's combination of the rounds (module docstring). Memory grows with
    the sequence, by doubling, like a key/value cache.

    One new token per row (decoding) reads only `latest`: per (round, bucket) the positions of
    the chunk_length latest tokens, exactly the keys it may see, so a token costs
    O(n_hashes * chunk_length). Several new tokens (a prompt, in chunks) are compared with every
    stored token, O(t) each, and then recorded in `latest` too.
    """

    kind = "lsh"

    def __init__(self, chunk_length: int, num_buckets: int) -> None:
        self.chunk = chunk_length
        self.num_buckets = num_buckets  # padding's bucket included
        self.kv = SlotCache()  # keys and values, slot = position
        self.buckets: Tensor | None = None  # (B, H, R, S), -1 empty
        self.rank: Tensor | None = None  # (B, H, R, S)
        self.latest: Tensor | None = None  # (B, H, R, buckets, chunk) positions, -1 empty
        self.count: Tensor | None = None  # (B, H, R, buckets): tokens so far per bucket

    def tensors(self) -> tuple[Tensor, ...]:
        parts = (self.buckets, self.rank, self.latest, self.count)
        return (*self.kv.tensors(), *(t for t in parts if t is not None))

    def attend(  # type: ignore[override]
        self, qk: Tensor, key: Tensor, v: Tensor, buckets: Tensor, qpos: Tensor, valid: Tensor
    ) -> Tensor:
        if self.latest is None:
            b, h, r = buckets.shape[:3]
            self.latest = buckets.new_full((b, h, r, self.num_buckets, self.chunk), -1)
            self.count = buckets.new_zeros((b, h, r, self.num_buckets))
        self.kv.store(key, v, qpos, valid)
        self._grow()
        if qpos.shape[1] == 1:
            return self._step(qk, buckets, qpos, valid)
        return self._chunk(qk, buckets, qpos, valid)

    def _grow(self) -> None:
        """Bucket and rank stores as long as the key/value store."""
        assert self.kv.k is not None and self.count is not None
        size = self.kv.k.shape[2]
        if self.buckets is None or self.buckets.shape[-1] < size:
            grown = self.count.new_full((*self.count.shape[:3], size), -1)
            rank = torch.zeros_like(grown)
            if self.buckets is not None and self.rank is not None:
                n = self.buckets.shape[-1]
                grown[..., :n], rank[..., :n] = self.buckets, self.rank
            self.buckets, self.rank = grown, rank

    def _record(self, buckets: Tensor, rank: Tensor, qpos: Tensor, valid: Tensor) -> None:
        """Store the new tokens' buckets and ranks (B, H, R, C) and update `latest`/`count`:
        a bucket keeps the positions of its chunk_length latest tokens, slot = rank mod it."""
        assert self.buckets is not None and self.rank is not None
        assert self.latest is not None and self.count is not None
        bi, ci = valid.nonzero(as_tuple=True)
        pos = qpos[bi, ci]
        self.buckets[bi, :, :, pos] = buckets[bi, :, :, ci]
        self.rank[bi, :, :, pos] = rank[bi, :, :, ci]
        new = self.count.scatter_reduce(
            -1, buckets, (rank + 1).masked_fill(~valid[:, None, None, :], 0), "amax"
        )
        keep = valid[:, None, None, :] & (rank >= new.gather(-1, buckets) - self.chunk)
        bb, hh, rr, cc = keep.nonzero(as_tuple=True)
        self.latest[bb, hh, rr, buckets[bb, hh, rr, cc], rank[bb, hh, rr, cc] % self.chunk] = qpos[
            bb, cc
        ]
        self.count = new

    def _step(self, qk: Tensor, buckets: Tensor, qpos: Tensor, valid: Tensor) -> Tensor:
        """One token per row: its rank is its bucket's count; it sees its buckets' latest."""
        assert self.latest is not None and self.count is not None
        kv = self.kv
        assert kv.k is not None and kv.v is not None
        rank = self.count.gather(-1, buckets)  # (B, H, R, 1)
        self._record(buckets, rank, qpos, valid)
        b, h, r, _ = buckets.shape
        seen = self.latest.gather(3, buckets[..., None].expand(b, h, r, 1, self.chunk)).reshape(
            b, h, r * self.chunk
        )  # every round's keys of this token (with repeats)
        idx = seen.clamp(min=0)[..., None].expand(-1, -1, -1, kv.k.shape[-1])
        keys, values = kv.k.gather(2, idx), kv.v.gather(2, idx)
        scores = torch.matmul(qk, keys.transpose(-1, -2))  # (B, H, 1, R * chunk)
        own = max(SELF_MASK, ops.neg_inf(scores.dtype) / 2)
        scores = scores.masked_fill((seen == qpos[:, :1, None])[:, :, None], own)
        scores = scores.masked_fill((seen < 0)[:, :, None], float("-inf"))
        scores = scores.masked_fill(~valid[:, None, :, None], 0.0)  # padding: any finite row
        return torch.matmul(torch.softmax(scores, -1), values)

    def _chunk(self, qk: Tensor, buckets: Tensor, qpos: Tensor, valid: Tensor) -> Tensor:
        """Several tokens per row: compared with every stored token (ranks counted there)."""
        kv = self.kv
        assert kv.k is not None and kv.v is not None and kv.pos is not None
        assert self.buckets is not None and self.rank is not None
        n = kv.hi
        bi, ci = valid.nonzero(as_tuple=True)  # the new tokens' slots are their positions
        self.buckets[bi, :, :, qpos[bi, ci]] = buckets[bi, :, :, ci]
        kb, kpos = self.buckets[..., :n], kv.pos[:, None, None, None, :n]  # (B, H, R, n)
        q5 = qpos[:, None, None, :, None]
        same = (kb[..., None, :] == buckets[..., None]) & (kpos >= 0)  # (B, H, R, C, n)
        rank = (same & (kpos < q5)).sum(-1)  # earlier tokens of the query's bucket
        self._record(buckets, rank, qpos, valid)
        d = rank[..., None] - self.rank[..., None, :n]
        count = (same & (kpos <= q5) & (d < self.chunk)).sum(2)  # (B, H, C, n): rounds seen
        scores = torch.matmul(qk, kv.k[:, :, :n].transpose(-1, -2))
        own = max(SELF_MASK, ops.neg_inf(scores.dtype) / 2)
        is_self = (kv.pos[:, None, :n] == qpos[:, :, None])[:, None]  # (B, 1, C, n)
        scores = scores.masked_fill(is_self, own) + count.to(scores.dtype).clamp(min=1).log()
        scores = scores.masked_fill(count == 0, float("-inf"))
        scores = scores.masked_fill(~valid[:, None, :, None], 0.0)  # padding: any finite row
        return torch.matmul(torch.softmax(scores, -1), kv.v[:, :, :n])


def _take(real: Tensor, pos: Tensor) -> Tensor:
    """real (B, N) bool at positions pos (B, ...)."""
    return real.gather(1, pos.reshape(pos.shape[0], -1)).view(pos.shape)


def _window_pos(perm: Tensor, c: int) -> Tensor:
    """Original positions of each window's keys (previous chunk, own chunk): (..., R, C, 2c).

    A round's first chunk has no previous chunk: its first half is a placeholder (masked; here
    the round's last chunk)."""
    win = perm.unflatten(-1, (-1, c))
    return torch.cat([win.roll(1, dims=-2), win], dim=-1)


def _query_pos(perm: Tensor, c: int) -> Tensor:
    """Original positions of each window's queries: (..., R, C, c, 1)."""
    return perm.unflatten(-1, (-1, c)).unsqueeze(-1)


def _window_rank(n: int, c: int, device: torch.device) -> Tensor:
    """Rank in its round (sorted index) of each window's keys, (C, 1, 2c): -c..-1 for a first
    chunk's look-back."""
    return torch.arange(-c, n, device=device).unfold(0, 2 * c, c)[:, None, :]


def _count_pairs(q_pos: Tensor, k_pos: Tensor, ok: Tensor, n: int) -> Tensor:
    """(B, H, n, n) int64: how many windows (over the rounds) score each allowed (query, key)."""
    b, h = ok.shape[:2]
    flat = (q_pos * n + k_pos).expand(ok.shape).reshape(b, h, -1)
    counts = torch.zeros(b, h, n * n, dtype=torch.int64, device=ok.device)
    counts.scatter_add_(-1, flat, ok.reshape(b, h, -1).long())
    return counts.view(b, h, n, n)


def _bucket_window_hidden(sorted_buckets: Tensor, c: int) -> Tensor:
    """Prefix-stable causal LSH: True where a window key is hidden from its query,
    (..., R, C, c, 2c). A query at sorted index i sees sorted index j iff both share a bucket
    and i - c < j <= i (the c latest tokens of its bucket; the window starts at chunk - 1)."""
    q_b = sorted_buckets.unflatten(-1, (-1, c)).unsqueeze(-1)
    k_b = _window_pos(sorted_buckets, c).unsqueeze(-2)
    i = torch.arange(c, device=sorted_buckets.device)[:, None]
    j = torch.arange(2 * c, device=sorted_buckets.device)
    return (q_b != k_b) | (j <= i) | (j > i + c)


_GROUP_BYTES = 32 << 20  # a group's scores (fp32, n = 4096, 4 hashes: four heads)
# Keep all probabilities for the backward up to this size (fp32, n = 4096, 4 hashes, 12 heads:
# 100 MiB); recompute them beyond it (one more score matmul: 5-10% slower on CPU).
_KEEP_PROBS_BYTES = 128 << 20


class _Plan:
    """The non-differentiable part of a call: each round's sort, the masks, the head groups.

    Units are the B*H (sequence, head) pairs. The kernel works on groups of whole units (every
    round of a head at once, so the rounds can be combined within a group) sized so that a
    group's scores take about _GROUP_BYTES: the per-group buffers are allocated once per call
    and reused (large fresh allocations cost page faults that can exceed the arithmetic), and
    a group's scores stay in cache between the ops that use them.

    Causal, `sorted_buckets` (each round's buckets in sorted order) decide what a query sees.
    A subclass (a port of another rule) may change the group class and size, the row softmax
    and the round weights.
    """

    group_class: type[_Group]  # set below, once _Group is defined

    def __init__(
        self,
        perm: Tensor,
        chunk: int,
        n_real: Tensor | None,
        causal: bool,
        element_size: int,
        sorted_buckets: Tensor | None = None,
    ) -> None:
        b, h, r, n = perm.shape
        self.units, self.heads, self.rounds, self.n = b * h, h, r, n
        self.chunk, self.causal = chunk, causal
        # causal: each round's buckets in sorted order, per unit (B*H, R, N)
        self.sorted_buckets = None if sorted_buckets is None else sorted_buckets.flatten(0, 1)
        self.perm = perm.reshape(b * h, r, n)
        self.inv = torch.empty_like(self.perm).scatter_(
            -1, self.perm, torch.arange(n, device=perm.device).expand_as(self.perm)
        )
        self.n_real = None if n_real is None else n_real.repeat_interleave(h)  # per unit
        size = self.group_size(r * n * 2 * chunk * element_size)
        self.groups = [
            self.group_class(self, u0, min(u0 + size, b * h)) for u0 in range(0, b * h, size)
        ]

    def group_size(self, unit_bytes: int) -> int:
        """Units per group: about _GROUP_BYTES of scores."""
        return max(1, min(self.units, _GROUP_BYTES // unit_bytes))

    def row_softmax(self, s: Tensor, p: Tensor, lse: Tensor, need_lse: bool) -> None:
        """p = softmax of the score rows s (T, c, 2c), and their logsumexps into lse (T, c)."""
        torch.softmax(s, dim=-1, out=p)
        if need_lse:  # at the row max, p = exp(s - lse)
            torch.sub(s.amax(-1), p.amax(-1).log_(), out=lse)

    def round_weights(self, lse: Tensor) -> Tensor:
        """Each round's weight per token, a softmax over the rounds (last dim) of the rows'
        logsumexps: the rounds' outputs combine into one softmax over every scored pair."""
        return torch.softmax(lse, dim=-1)


class _Workspace:
    """Buffers reused by the groups of one call, by name (a smaller last group takes a prefix)."""

    def __init__(self, like: Tensor) -> None:
        self.like, self.bufs = like, {}

    def __call__(self, name: str, *shape: int, zero_rows: int = 0) -> Tensor:
        """A (shape) view of buffer `name`; its first `zero_rows` rows are zero (set once)."""
        numel = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.bufs[name] = self.like.new_empty(numel)
            buf[: zero_rows * math.prod(shape[1:])].zero_()
        return buf[:numel].view(shape)


class _Group:
    """Units [u0, u1) of a plan: gather indices, masks and the masked scores of its windows."""

    def __init__(self, plan: _Plan, u0: int, u1: int) -> None:
        r, n, c = plan.rounds, plan.n, plan.chunk
        g, dev = u1 - u0, plan.perm.device
        self.plan, self.u0, self.u1, self.chunks = plan, u0, u1, g * r * (n // c)
        self.slots = slice(u0 * r * n, u1 * r * n)  # this group's rows in sorted order
        perm = plan.perm[u0:u1]
        rows = perm + (torch.arange(u0, u1, device=dev) * n).view(g, 1, 1)
        self.sort = rows.reshape(-1)  # sorted slot -> input row (b, h, n) of the whole batch
        local = torch.arange(g * r, device=dev).view(g, r, 1) * n
        self.unsort = (plan.inv[u0:u1] + local).transpose(1, 2).reshape(-1)  # (u, n, r) -> slot
        # sorted slot -> position in (u, n, r) order, for per-token round weights
        self.resort = ((rows - u0 * n) * r + torch.arange(r, device=dev).view(1, r, 1)).reshape(-1)
        self.mask = self._mask(perm)

    def _mask(self, perm: Tensor) -> Tensor | None:
        """True where a window key gets NEG_INF (padding; causal: see the module docstring),
        broadcastable to (units, R, C, c, 2c); None when nothing is masked beyond first chunks."""
        plan = self.plan
        mask = None
        if plan.n_real is not None:
            # padding sorts last: a key is padding iff its rank in its round >= #real tokens
            # (a first chunk's look-back: the rank it has at the end of its round)
            rank = _window_rank(plan.n, plan.chunk, perm.device) % plan.n
            mask = rank >= plan.n_real[self.u0 : self.u1].view(-1, 1, 1, 1, 1)
        if plan.causal:
            hidden = self.causal_hidden(perm)
            mask = hidden if mask is None else mask | hidden
        return mask

    def causal_hidden(self, perm: Tensor) -> Tensor:
        """Causal: True where a window key is hidden from its query (module docstring)."""
        assert self.plan.sorted_buckets is not None
        return _bucket_window_hidden(self.plan.sorted_buckets[self.u0 : self.u1], self.plan.chunk)

    def fill_lookback(self, buf: Tensor) -> None:
        """The placeholder chunk before a group's first chunk: zeros (masked, must be finite),
        written once by the workspace."""

    def score_lookback(self, s5: Tensor, neg: float, own: float) -> None:
        """A round's first chunk has no previous chunk: its window's first half is masked.
        s5: the scores (units, R, C, c, 2c)."""
        s5[:, :, 0, :, : self.plan.chunk] = neg

    def constant_scores(self, ds: Tensor) -> None:
        """Zero the score gradients ds (T, c, 2c) where a score is a constant: the self score."""
        ds[:, :, self.plan.chunk :].diagonal(dim1=1, dim2=2).zero_()

    def lookback_grads(
        self, ds: Tensor, p: Tensor, q: Tensor, do: Tensor, dk: Tensor, dv: Tensor
    ) -> None:
        """Key/value gradients of the first window's look-back: none (masked placeholder)."""

    def gather(self, ws: _Workspace, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sorted queries (T, c, D) and key/value windows (T, 2c, D) of this group, as views of
        one buffer filled by a single gather from the rows (B * H * N, 3D) of qk | key | value.

        The rows go after a placeholder chunk, so that the window of chunk t (chunk t - 1,
        chunk t) is an overlapping view: no copy per window. A window crossing a round or unit
        boundary only does so in a first chunk's masked half."""
        c, t, d3 = self.plan.chunk, self.chunks, qkv.shape[-1]
        d = d3 // 3
        buf = ws("qkv", (t + 1) * c, d3, zero_rows=c)
        torch.index_select(qkv, 0, self.sort, out=buf[c:])
        self.fill_lookback(buf)
        q = buf[c:, :d].unflatten(0, (t, c))
        k, v = (
            buf[:, j * d : (j + 1) * d].as_strided((t, 2 * c, d), (c * d3, d3, 1)) for j in (1, 2)
        )
        return q, k, v

    def scores(self, ws: _Workspace, q: Tensor, k: Tensor) -> Tensor:
        """Masked window scores (T, c, 2c): q . k, NEG_INF where masked, SELF_MASK on self."""
        plan, c = self.plan, self.plan.chunk
        s = torch.bmm(q, k.transpose(1, 2), out=ws("s", self.chunks, c, 2 * c))
        s5 = s.view(self.u1 - self.u0, plan.rounds, plan.n // c, c, 2 * c)
        # fp16 holds neither -1e9 nor -1e5: its lowest value, and half of it for self
        neg = ops.neg_inf(s.dtype)
        own = max(SELF_MASK, neg / 2)
        self.score_lookback(s5, neg, own)
        if self.mask is not None:
            s5.masked_fill_(self.mask, neg)
        s[:, :, c:].diagonal(dim1=1, dim2=2).fill_(own)
        return s

    def to_tokens(self, ws: _Workspace, x: Tensor, out: Tensor) -> None:
        """Sorted rows (..., T * c, W) -> out (..., B * H * N, W): back to token order, the
        rounds summed. A gather then a sum (index_add_ would avoid the sum but is slower on
        CPU with several threads, and its order of additions is not deterministic on GPU)."""
        n, r = self.plan.n, self.plan.rounds
        dst = out[..., self.u0 * n : self.u1 * n, :]
        if r == 1:
            torch.index_select(x, -2, self.unsort, out=dst)
        else:
            tmp = torch.index_select(x, -2, self.unsort, out=ws("u", *x.shape))
            torch.sum(tmp.unflatten(-2, (-1, r)), -2, out=dst)


class _LSHKernel(torch.autograd.Function):
    """(qk, key, value) (B, H, N, D) -> context (B, H, N, D).

    Per group of heads: gather the sorted queries and key/value windows, score, softmax (keeping
    each row's logsumexp), attend, weight round r by w_r = softmax_r(lse_r) in sorted order,
    gather back into token order and sum the rounds. The hand-written backward sorts the
    incoming gradient with the forward's gather indices. It reuses the forward's probabilities
    when all of them take at most _KEEP_PROBS_BYTES; beyond that it recomputes them from the
    saved logsumexps, as FlashAttention does, so that memory stays O(n * (D + n_hashes)).
    """

    @staticmethod
    # under CUDA autocast the inputs come in mixed dtypes, and the out= buffers need one:
    # the kernel runs in fp32 (the projections around it stay in low precision)
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(
        ctx: Any, qk: Tensor, key: Tensor, value: Tensor, plan: _Plan, dropout: float
    ) -> Tensor:
        b, h, n, d = qk.shape
        r, c = plan.rounds, plan.chunk
        rows = torch.cat([qk, key, value], dim=-1).view(-1, 3 * d)  # one gather sorts all three
        out = qk.new_empty(b * h * n, d)
        lse = qk.new_empty(b * h * r * n)  # sorted order
        w = qk.new_empty(b * h * r * n) if r > 1 else None
        probs: list[Tensor] | None = None
        if b * h * r * n * 2 * c * qk.element_size() <= _KEEP_PROBS_BYTES:
            probs = []
        keeps = []
        ws = _Workspace(qk)
        for grp in plan.groups:
            t = grp.chunks
            q, k, v = grp.gather(ws, rows)
            s = grp.scores(ws, q, k)
            p = ws("p", t, c, 2 * c) if probs is None else torch.empty_like(s)
            lse_g = lse[grp.slots].view(t, c)
            plan.row_softmax(s, p, lse_g, need_lse=r > 1 or probs is None)
            if probs is not None:
                probs.append(p)
            if dropout > 0.0:
                keeps.append(torch.rand_like(p) >= dropout)
                p = _dropped(ws, p, keeps[-1], dropout)
            o = torch.bmm(p, v, out=ws("o", t, c, d)).view(-1, d)  # (T * c, D) sorted
            if w is not None:
                w_u = plan.round_weights(lse_g.view(-1)[grp.unsort].view(-1, n, r))
                w_g = w[grp.slots]
                torch.index_select(w_u.view(-1), 0, grp.resort, out=w_g)
                o.mul_(w_g.unsqueeze(-1))
            grp.to_tokens(ws, o, out)
        ctx.save_for_backward(rows, out, lse, w)
        ctx.plan, ctx.dropout, ctx.keeps, ctx.probs = plan, dropout, keeps, probs
        return out.view(b, h, n, d)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
        rows, out, lse, w = ctx.saved_tensors
        plan, dropout = ctx.plan, ctx.dropout
        c, d = plan.chunk, out.shape[-1]
        # Round r: d out / d out_r = w_r and d out / d lse_r = w_r (out_r - out); with
        # d out_r / d s = p (dO v^T - rowsum(dO * out_r)) and d lse_r / d s = p, the softmax
        # backward is p * (dO_r v^T - w_r <g, out>) with dO_r = w_r g (with dropout too:
        # rowsum(dO * out_r) = rowsum(p * dP) once the dropout scaling is undone).
        g = g.reshape(-1, d)
        g_ext = torch.cat([g, (g * out).sum(-1, keepdim=True)], dim=-1)  # (BHN, D + 1)
        grads = out.new_empty(3, *out.shape)  # qk, key, value
        ws = _Workspace(out)
        for i, grp in enumerate(plan.groups):
            t = grp.chunks
            q, k, v = grp.gather(ws, rows)
            if ctx.probs is None:
                p = grp.scores(ws, q, k).sub_(lse[grp.slots].view(t, c, 1)).exp_()
            else:
                p = ctx.probs[i]
            gs = torch.index_select(g_ext, 0, grp.sort, out=ws("g", t * c, d + 1))
            if w is not None:
                gs.mul_(w[grp.slots].unsqueeze(-1))
            do, shift = gs[:, :d].unflatten(0, (t, c)), gs[:, d:].view(t, c, 1)
            ds = torch.bmm(do, v.transpose(1, 2), out=ws("ds", t, c, 2 * c))  # dP
            if dropout > 0.0:
                ds.mul_(ctx.keeps[i]).div_(1.0 - dropout)
            ds.sub_(shift).mul_(p)
            grp.constant_scores(ds)
            if dropout > 0.0:
                p = _dropped(ws, p, ctx.keeps[i], dropout)
            # dq, dk, dv: contiguous outputs (bmm into strided views falls back to a slow loop)
            dbuf = ws("d", 3, t * c, d)
            dq, dk, dv = dbuf.view(3, t, c, d).unbind(0)
            torch.bmm(ds, k, out=dq)
            # a key/value chunk is its own window's second half and the next window's first
            torch.bmm(ds[:, :, c:].transpose(1, 2), q, out=dk)
            dk[:-1].baddbmm_(ds[1:, :, :c].transpose(1, 2), q[1:])
            torch.bmm(p[:, :, c:].transpose(1, 2), do, out=dv)
            dv[:-1].baddbmm_(p[1:, :, :c].transpose(1, 2), do[1:])
            grp.lookback_grads(ds, p, q, do, dk, dv)
            grp.to_tokens(ws, dbuf, grads)
        shape = (plan.units // plan.heads, plan.heads, plan.n, d)
        return grads[0].view(shape), grads[1].view(shape), grads[2].view(shape), None, None


# torch.compile traced the kernel's out= buffers and overlapping views into wrong numbers (NaN,
# 1e35); it runs eagerly inside a compiled model instead (a graph break around this call).
@torch.compiler.disable
def _run_kernel(qk: Tensor, key: Tensor, v: Tensor, plan: _Plan, dropout: float) -> Tensor:
    return _LSHKernel.apply(qk, key, v, plan, dropout)


_Plan.group_class = _Group


def _dropped(ws: _Workspace, p: Tensor, keep: Tensor, dropout: float) -> Tensor:
    """Dropout of probabilities p with the mask `keep`, in a workspace buffer (p unchanged)."""
    return torch.mul(p, keep, out=ws("pd", *p.shape)).div_(1.0 - dropout)


__all__ = ["SELF_MASK", "LSHAttention", "LSHCache", "derived_num_buckets"]
