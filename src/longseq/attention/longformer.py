"""Longformer attention (Beltagy et al., 2020): a sliding window plus a few global tokens.

Local (band) attention. With window w (even, as Hugging Face's `attention_window`) and
dilation d (per head), query i sees the keys

    j = i + d*t,  |t| <= w/2          (w + 1 keys including itself)
    j = i - d*t,  0 <= t <= w/2       when causal (the w/2 previous tokens and itself)

and, when some tokens are global, every global token g (band keys that are global are
counted once, as global keys):

    out_i = sum_j softmax_j(q_i . k_j) v_j        over j in band(i) | global, real j only

with the ordinary projections q, k, v (q carries the 1/sqrt(D) scale). The row of a global
token is then recomputed with the separate global projections over ALL real tokens:

    out_g = sum_j softmax_j(qg_g . kg_j) vg_j,  qg = query_global(x) / sqrt(D),
                                                 kg = key_global(x), vg = value_global(x)

This is the paper's and Hugging Face's `LongformerSelfAttention` (tested against it).

Causal, global tokens are attention sinks (StreamingLLM, Xiao et al. 2023): query i sees the
keys j <= i of its band plus the global keys j <= i, all with the ordinary projections q, k, v;
a global token's own row is an ordinary causal row (a row over every token would see the
future). The global projections are not used by a causal layer: a decoder trained with dense
attention scored its first tokens with q, k, v, which is what keeps it exact under the mask
causal & (band | global). `global_tokens=G` makes positions 0..G-1 global (with or without a
`global_attention_mask`); the decoding cache then keeps those G keys beside the ring.

Sink positions (rotary models). With `sink_positions="absolute"` (the default) a sink is
scored at its distance i - j from the query, as under the dense model's mask; past the
trained context those distances are ones the model never saw. `sink_positions="cache"` is
StreamingLLM's rule, positions within the cache: the sinks sit just before the window, so
the query is rotated as if at min(i, cap), cap = G + max(d) * w/2, when it scores a sink:

    score(i, sink j) = rot(q_i, min(i, cap)) . rot(k_j, j)       (band keys: as before)

identical to "absolute" while i <= cap (the sinks still inside or next to the band). The
kernel scores both kinds of key in its one call by doubling the query-key width:
[q_i, q'_i] . [k_j, 0] for band keys and [q_i, q'_i] . [0, k_g] for the sinks.

Kernel (never n x n, memory linear in n). Heads are grouped by dilation; a group with
dilation d reorders the sequence into d interleaved subsequences (position m*d + r ->
subsequence r, index m), where the dilated band becomes an ordinary band of half-width h=w/2.
Each subsequence is cut into query blocks of c tokens; block i needs the keys
[i*c - h, i*c + c + h) (only the left part when causal). These windows are strided views
(`unfold`) of the halo-padded keys; with global tokens, the G global keys are stored after
every block (one copy of the keys, not one per window), so each window also holds them. One
fused `scaled_dot_product_attention` call over all (batch, subsequence, block) x head windows,
with an additive mask for the exact band, key padding and global slots, does the rest:
c + w + 2G keys scored per query instead of w + 1 + G.

Global rows never need the key_global / value_global projections of the whole sequence:
qg . (Wk x_j + bk) = (Wk^T qg) . x_j + (a constant of the row, which softmax ignores) and
sum_j p_j (Wv x_j + bv) = Wv (sum_j p_j x_j) + bv, so a few (G x N) products replace two
(N x hidden x hidden) projections when G * heads < hidden.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.attention import flex, ops, patterns, pictures
from longseq.attention.base import At, SelfAttention
from longseq.attention.cache import AttentionCache, SlotCache
from longseq.attention.shard import Shard

# Query block size c: w/2 clamped to [MIN_BLOCK, MAX_BLOCK] (see _block_size). Scores computed
# per query: c + w instead of w + 1; smaller blocks waste fewer but the fused kernel runs less
# efficiently on them. Measured (fp32, 2 threads, fwd+bwd, n = 4096 and 16384): c = 64, 128,
# 192, 256 within noise of each other at w = 512; c = 64 best at w = 64 and 128. 256 keeps the
# window copies (memory) smallest.
MIN_BLOCK, MAX_BLOCK = 64, 256
# where a causal layer's sinks sit for the rotary scores (module docstring)
SINK_POSITIONS: tuple[str, ...] = ("absolute", "cache")


class LongformerAttention(SelfAttention):
    """Sliding-window (optionally dilated) attention with global tokens.

    Args:
        window: total window width w (Hugging Face's `attention_window`): w/2 tokens on each
            side, so w + 1 keys including the token itself; when causal, the w/2 previous
            tokens plus itself. Even, >= 2.
        dilation: gap between the keys of the window: one int for all heads or one per head.
            A head with dilation d sees the keys i + d*t, |t| <= w/2.
        global_tokens: the first G positions are global, as if `global_attention_mask`
            marked them (a model sets it from `ModelConfig.global_tokens`).
        sink_positions: causal with global tokens and rotary positions, "absolute" scores a
            sink at its distance from the query, "cache" as if it sat just before the
            window (StreamingLLM; module docstring).
        causal, dropout, bias: as for every layer.

    Global tokens (`global_attention_mask`, `global_tokens`) are seen by every query and see
    every real token, through the separate projections `query_global`, `key_global`,
    `value_global`. Causal, they are sinks: seen by every later query, their rows causal, the
    ordinary projections throughout (module docstring).
    """

    name = "longformer"
    sequence_parallel = True
    supports_global = True
    flex_refusal = None
    auto_flex = True

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        window: int = 512,
        dilation: int | Sequence[int] = 1,
        global_tokens: int = 0,
        sink_positions: str = "absolute",
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        num_key_value_heads: int | None = None,
        backend: str = "native",
    ) -> None:
        super().__init__(
            hidden_size,
            num_heads,
            causal=causal,
            dropout=dropout,
            bias=bias,
            num_key_value_heads=num_key_value_heads,
            backend=backend,
        )
        if isinstance(window, bool) or not isinstance(window, int) or window < 2 or window % 2:
            raise ValueError(
                f"window must be an even int >= 2 (w/2 tokens on each side), got {window!r}"
            )
        if isinstance(dilation, int) and not isinstance(dilation, bool):
            dilations = (dilation,) * num_heads
        elif isinstance(dilation, Sequence) and not isinstance(dilation, str):
            dilations = tuple(dilation)
            if len(dilations) != num_heads:
                raise ValueError(
                    f"dilation has {len(dilations)} values but the layer has num_heads="
                    f"{num_heads}; give one int for all heads or exactly one per head"
                )
        else:
            raise ValueError(f"dilation must be an int or a sequence of ints, got {dilation!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilations):
            raise ValueError(f"dilation values must be ints >= 1, got {dilation!r}")
        ops.check_int("global_tokens", global_tokens, 0)
        self.global_tokens = global_tokens
        if sink_positions not in SINK_POSITIONS:
            raise ValueError(
                f"unknown sink_positions {sink_positions!r}; valid: {', '.join(SINK_POSITIONS)}"
            )
        if sink_positions == "cache" and not (causal and global_tokens):
            raise ValueError(
                "sink_positions='cache' places a causal layer's attention sinks just before "
                f"its window; it needs causal=True and global_tokens > 0 (got causal={causal}, "
                f"global_tokens={global_tokens})"
            )
        if sink_positions == "cache" and backend != "native":
            raise ValueError(
                "sink_positions='cache' runs on backend='native' only (its sinks are scored "
                f"with queries at other positions, which a FlexAttention mask cannot say), got "
                f"backend={backend!r}"
            )
        self.sink_positions = sink_positions
        self.window = window
        self.dilation = dilation if isinstance(dilation, int) else dilations
        self.dilations = dilations
        # cache positions: a query scores the sinks as if at most this far along
        self.sink_cap = global_tokens + max(dilations) * (window // 2)
        self.query_global = nn.Linear(hidden_size, hidden_size, bias=bias)
        # grouped-query layers: the global keys and values have the KV heads too
        kv_size = self.num_key_value_heads * self.head_dim
        self.key_global = nn.Linear(hidden_size, kv_size, bias=bias)
        self.value_global = nn.Linear(hidden_size, kv_size, bias=bias)

    def extra_repr(self) -> str:
        sinks = f", global_tokens={self.global_tokens}" if self.global_tokens else ""
        if self.sink_positions != "absolute":
            sinks += f", sink_positions={self.sink_positions!r}"
        return f"{super().extra_repr()}, window={self.window}, dilation={self.dilation}{sinks}"

    @classmethod
    def options_at(cls, at: At, given: dict[str, Any]) -> dict[str, Any]:
        """Under a reach: a window of `reach` keys (rounded down to even: w/2 each side)."""
        derived = {} if at.reach is None else {"window": max(2, at.reach // 2 * 2)}
        return {**derived, **given}

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Shard
    ) -> Tensor:
        """The band needs max(d) * w/2 neighbours on each side (the left only when causal): a
        halo from the neighbouring ranks, then this layer's own kernel on the stretch."""
        if self.sink_positions == "cache":
            raise ValueError(
                "sink_positions='cache' has no sequence-parallel form (a stretch's rows do not "
                "know their absolute positions); use sink_positions='absolute' or one process"
            )
        reach = max(self.dilations) * (self.window // 2)
        left, right = reach, 0 if self.causal else reach
        held = (torch.zeros(1) if glob is None else glob.sum().reshape(1)).double()
        if float(shard.total_sum(held.to(hidden_states.device))) == 0:  # every rank alike
            return self._window_sharded(hidden_states, real, shard, left, right)
        return self._sharded_with_globals(hidden_states, real, glob, shard, reach)

    def _sharded_with_globals(
        self, x: Tensor, real: Tensor, glob: Tensor | None, shard: Shard, reach: int
    ) -> Tensor:
        """Global tokens under sequence parallelism. Every rank gets every global token's
        hidden state (an all-gather of a few rows); the band runs on [halo, shard, halo, the
        global tokens outside that stretch] (global keys count as global, never as band keys,
        so where they sit does not matter); a global token's own row, a softmax over every
        real token with the global projections, is summed over the ranks: shift by the
        maximum over all ranks, then all-reduce the exponentials' sums and their weighted
        values (exact, as FlashAttention combines blocks). Rotary positions: the stretch runs
        at 0.. and each appended global key at its own position relative to the stretch's
        start, so every band score keeps its position difference, and causal visibility
        (a sink is seen from its own position on) is decided on those positions. Causal,
        global rows are ordinary causal rows: nothing is summed over the ranks."""
        b, n, e = x.shape
        glob = torch.zeros_like(real) if glob is None else glob
        gmax = int(shard.maximum(glob.sum(1).max().double().reshape(1)))
        gidx, g_ok = _global_indices(glob) if bool(glob.any()) else (None, None)
        slots = torch.zeros(b, gmax, dtype=torch.long, device=x.device)
        ok = torch.zeros(b, gmax, dtype=torch.bool, device=x.device)
        if gidx is not None:
            slots[:, : gidx.shape[1]], ok[:, : gidx.shape[1]] = gidx, g_ok
        xg = x.gather(1, slots[..., None].expand(-1, -1, e)) * ok[..., None]
        pos = (shard.start + slots).masked_fill(~ok, -1)
        xg_all = shard.gather(xg, 1)  # (B, W * gmax, E): every global token
        pos_all = shard.gather(pos.to(x.dtype), 1).round().long()
        ok_all = pos_all >= 0
        # the band and the global keys, through this layer's kernel
        x_ext, (r_ext, g_ext) = shard.halo_with_masks(x, [real, glob], reach, reach)
        lo, hi = shard.start - reach, shard.start + n + reach
        outside = ok_all & ((pos_all < lo) | (pos_all >= hi))
        x_all = torch.cat([x_ext, xg_all], 1)
        r_all = torch.cat([r_ext, outside], 1)
        x_all = x_all.masked_fill(~r_all.unsqueeze(-1), 0.0)
        stretch = torch.arange(x_ext.shape[1], device=x.device).expand(b, -1)
        pos_ext = torch.cat([stretch, torch.where(ok_all, pos_all - lo, 0)], 1)
        ctx = self.attend(x_all, r_all, torch.cat([g_ext, outside], 1), positions=pos_ext)
        ctx = ctx[:, :, reach : reach + n]
        if self.causal:  # sinks: their own rows are ordinary causal rows, computed above
            return ctx
        # the global tokens' own rows, over every rank's real tokens
        h, d = self.num_heads, self.head_dim
        qg = ops.split_heads(self.query_global(xg_all), h) * d**-0.5  # (B, H, G, D)
        kg, vg = self._global_kv(x)
        s = (qg @ kg.transpose(-1, -2)).masked_fill(~real[:, None, None, :], float("-inf"))
        top = s.amax(-1, keepdim=True)
        shift = shard.maximum(torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
        p = torch.exp(s - shift)  # 0 at padding
        total = shard.total_sum(p.sum(-1, keepdim=True))
        p = F.dropout(p, self.dropout, self.training)
        rows = shard.total_sum(p @ vg) / total  # (B, H, G, D)
        mine = ok_all & (pos_all >= shard.start) & (pos_all < shard.start + n)
        bi, gi = mine.nonzero(as_tuple=True)
        ctx = ctx.clone()
        ctx[bi, :, pos_all[bi, gi] - shard.start] = rows[bi, :, gi].to(ctx.dtype)
        return ctx

    def export_padding(self) -> int:
        """Tokens a traced program appends (longseq.convert.program): with them every input
        is long enough for the full-size block and halo, so the trace holds at any length,
        and holds the global slots."""
        half = self.window // 2
        need = max(self.dilations) * self.export_block() * (-(-half // self._full_block()) + 1)
        return max(need, ops.TRACE_GLOBAL_SLOTS)

    def _full_block(self) -> int:
        half = self.window // 2
        return _block_size(half, MAX_BLOCK * (half + 1))

    def export_block(self) -> int:
        """A traced program's lengths are multiples of this: whole blocks in every
        interleaved subsequence, so every shape is a product the trace can prove."""
        return math.lcm(*self.dilations) * self._full_block()

    def dense_up_to(self, limit: int) -> int:
        """The band covers every pair while n <= w/2 + 1 (dilation 1; global tokens, whose
        projections longify copies from the local ones, add nothing there)."""
        return min(limit, self.window // 2 + 1) if max(self.dilations) == 1 else 1

    def new_cache(self) -> SlotCache:
        """A ring of max(dilation) * window/2 + 1 slots: all a causal query can ever see again
        (constant memory), plus `global_tokens` fixed slots for the sinks; the rule is
        `patterns.sliding_window`, one dilation per head, or `patterns.first_tokens`."""
        self._check_cacheable()
        # one dilation for every head: a mask shared by the heads, (B, 1, C, S); otherwise a
        # dilation per head, (H, 1, 1), and a mask per head
        uniform = len(set(self.dilations)) == 1
        dil = torch.tensor(self.dilations)[:, None, None]
        sinks = patterns.first_tokens(self.global_tokens)

        def rule(q: Tensor, k: Tensor) -> Tensor:
            d = self.dilations[0] if uniform else dil.to(q.device)
            band = patterns.sliding_window(self.window, d, is_causal=True)(q, k)
            return band | sinks(q, k) if self.global_tokens else band

        size = max(self.dilations) * (self.window // 2) + 1
        # without dilation the ring is the band of its newest query, and the sinks are seen
        # by every query (ring_is_rule: a decoding step needs no mask)
        return SlotCache(
            rule, size=size, sinks=self.global_tokens, ring_is_rule=max(self.dilations) == 1
        )

    def attend_cached(
        self, hidden_states: Tensor, cache: AttentionCache, positions: Tensor, real: Tensor
    ) -> Tensor:
        """As every layer's, with the sinks scored by queries at cache positions when
        sink_positions="cache" (the ring's fixed slots are the sinks)."""
        q, k, v = self.project(hidden_states, positions, expand=False)
        qs = self._sink_queries(q, positions)
        if qs is None:
            return cache.attend(q, k, v, positions, real)
        assert isinstance(cache, SlotCache)
        return cache.attend(q, k, v, positions, real, sink_queries=qs)

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        if self.global_tokens:
            first = torch.arange(n) < self.global_tokens
            is_global = first if is_global is None else is_global | first
        return patterns.longformer(
            n, self.window, self.dilations, self.causal, is_global, self.num_heads
        )

    def attend(
        self,
        hidden_states: Tensor,
        real: Tensor,
        glob: Tensor | None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """`positions` (B, N): the rotary positions of the rows (default 0 .. N - 1); the
        sequence-parallel path gives the global keys appended to a stretch their own (a causal
        query sees a global key at a position up to its own)."""
        # work in the projections' own (B, N, H, D) memory: the fused kernel reads strided
        # inputs, writes (blocks, c, H, D), and merging the heads afterwards is free
        q, k, v = self.project(hidden_states, positions)
        qs = None if glob is None else self._sink_queries(q, positions)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        qs = None if qs is None else qs.transpose(1, 2)
        h, d = q.shape[2:]
        key_ok = real
        gk = gv = g_ok = gidx = g_bias = None
        if glob is not None:
            if qs is not None and bool(glob[:, self.global_tokens :].any()):
                raise ValueError(
                    "sink_positions='cache' keeps the first global_tokens positions as sinks; "
                    "a global_attention_mask marking other tokens has no place in the cache"
                )
            gidx, g_ok = _global_indices(glob)
            at = gidx[:, :, None, None].expand(-1, -1, h, d)
            gk, gv = k.gather(1, at), v.gather(1, at)  # (B, G, H, D)
            key_ok = real & ~glob  # global keys in the band are counted once, as global keys
            if self.causal:  # sinks: a query sees the global keys up to its own position
                pos = positions
                if pos is None:
                    pos = torch.arange(q.shape[1], device=q.device).expand(q.shape[0], -1)
                later = pos.gather(1, gidx)[:, None, :] > pos[:, :, None]  # (B, N, G)
                g_bias = ops.mask_bias(~later, q.dtype)
        groups: dict[int, list[int]] = {}
        for i, dil in enumerate(self.dilations):
            groups.setdefault(dil, []).append(i)
        if len(groups) == 1:
            ctx = self._band(q, k, v, key_ok, self.dilations[0], gk, gv, g_ok, g_bias, qs)
        else:
            outs = []
            for dil, heads in groups.items():
                sel = torch.tensor(heads, device=q.device)
                outs.append(
                    self._band(
                        q[:, :, sel],
                        k[:, :, sel],
                        v[:, :, sel],
                        key_ok,
                        dil,
                        None if gk is None else gk[:, :, sel],
                        None if gv is None else gv[:, :, sel],
                        g_ok,
                        g_bias,
                        None if qs is None else qs[:, :, sel],
                    )
                )
            order = torch.tensor([i for heads in groups.values() for i in heads])
            ctx = torch.cat(outs, dim=2).index_select(2, torch.argsort(order).to(q.device))
        if glob is not None and not self.causal:  # causal: sink rows are ordinary rows
            ctx = self._put_global_rows(ctx, hidden_states, real, glob)
        return ctx.transpose(1, 2)

    def _sink_queries(self, q: Tensor, positions: Tensor | None) -> Tensor | None:
        """sink_positions="cache": the queries q (B, H, N, D), rotated at their positions,
        turned back to min(position, sink_cap) for scoring the sinks; None when no query is
        past the cap (or the layer has no rotary positions, or "absolute")."""
        if self.sink_positions != "cache" or self.rotary is None:
            return None
        if positions is None:
            if q.shape[-2] <= self.sink_cap + 1:
                return None
            positions = torch.arange(q.shape[-2], device=q.device).expand(q.shape[0], -1)
        back = positions.clamp(max=self.sink_cap) - positions  # <= 0: rotations compose
        if not bool((back < 0).any()):
            return None
        return self.rotary(q, q, positions=back)[0]

    def _put_global_rows(self, ctx: Tensor, x: Tensor, real: Tensor, glob: Tensor) -> Tensor:
        """ctx (B, N, H, D) with the global tokens' rows replaced by their own attention
        (the global projections over every real token)."""
        gidx, g_ok = _global_indices(glob)
        rows = self._global_rows(x, real, gidx, g_ok)  # (B, G, H, D)
        bi, si = g_ok.nonzero(as_tuple=True)
        # under autocast the band and the global rows can come out in different dtypes
        return ctx.index_put((bi, gidx[bi, si]), rows[bi, si].to(ctx.dtype))

    def attend_flex(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        """The band and the global keys through FlexAttention (`flex_mask`), then the global
        tokens' own rows as `attend` computes them (not when causal: sink rows are ordinary)."""
        ctx = super().attend_flex(hidden_states, real, glob)
        if glob is None or self.causal:
            return ctx
        return self._put_global_rows(ctx.transpose(1, 2), hidden_states, real, glob).transpose(1, 2)

    def flex_mask(self, real: Tensor, glob: Tensor | None) -> flex.FlexMask:
        """`patterns.sliding_window` at each head's dilation, or a global key (causal: one up
        to the query, an attention sink); real keys only. (A global token's own row is replaced
        afterwards when not causal: `attend_flex`.)"""
        dil = torch.tensor(self.dilations, device=real.device)
        window, causal = self.window, self.causal

        def mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            ok = patterns.sliding_window(window, dil[h], causal)(q, k)
            if glob is not None:
                ok = ok | (glob[b, k] & (k <= q) if causal else glob[b, k])
            return ok & real[b, k]

        return flex.FlexMask(
            mod,
            real,
            heads=len(set(self.dilations)) > 1,
            key=(self.name, window, self.dilations, causal),
            tensors=() if glob is None else (glob,),
        )

    def _band(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_ok: Tensor,
        dil: int,
        gk: Tensor | None,
        gv: Tensor | None,
        g_ok: Tensor | None,
        g_bias: Tensor | None = None,
        qs: Tensor | None = None,
    ) -> Tensor:
        """Band (+ global keys) attention for the h heads of one dilation.

        q, k, v: (B, N, h, D); key_ok: (B, N) keys that may be seen in the band; gk, gv:
        (B, G, h, D) global keys/values, g_ok: (B, G) valid global slots; g_bias: (B, N, G)
        additive mask of each query's global keys (causal sinks); qs (B, N, h, D): the queries
        that score the global keys (sink_positions="cache"; None: q). Returns (B, N, h, D).
        """
        b, n, h, d = q.shape
        wide = qs is not None and gk is not None
        if wide:  # [q, qs] . [k, 0] in the band, . [0, gk] sinks
            assert gk is not None and gv is not None and qs is not None
            q = torch.cat((q, qs), -1)
            k = torch.cat((k, torch.zeros_like(k)), -1)
            gk = torch.cat((torch.zeros_like(gk), gk), -1)
            # values as wide as the keys (zeros after them): PyTorch's fused CPU kernel wants
            # one head size for q, k and v, and falls back to materialising the scores
            v = F.pad(v, (0, d))
            gv = F.pad(gv, (0, d))
        half = self.window // 2
        sub = -(-n // dil)  # length of each interleaved subsequence
        c = _block_size(half, sub)
        nb = -(-sub // c)
        lp = nb * c
        m = -(-half // c)  # halo blocks on each side (none past the sequence)
        m = m if nb - 1 >= m else nb - 1  # a branch, not min(): see _block_size
        right = 0 if self.causal else m
        r = max(m * c - half, 0)  # keys of the first halo block that no query needs
        g = 0 if g_ok is None else g_ok.shape[1]
        s = c + g  # a group: a block of keys followed by the global keys
        width = (m + right) * s + c - r - (r if right else 0) + (g if m == 0 else 0)

        def interleave(x: Tensor) -> Tensor:  # (B, N, ...) -> (B, dil, lp, ...)
            x = ops.pad_to_length(x, dil * lp, dim=1)
            return x.unflatten(1, (lp, dil)).transpose(1, 2)

        def windows(x: Tensor, gx: Tensor | None) -> Tensor:
            """(B, dil, lp, ...) -> (B, dil, nb, ..., width): each query block's keys.

            The halo-padded sequence, with the G global keys after every block when there
            are any (one copy of the keys, not one per window), viewed as windows of
            `width` slots at stride s; the first group's global slots count, the others'
            are masked. A view of the padded keys when there is no global key.
            """
            if gx is None:
                buf = F.pad(x, (0, 0) * (x.dim() - 3) + (m * c, right * c))
            else:
                buf = x.new_zeros(b, dil, nb + m + right, s, *x.shape[3:])
                buf[:, :, m : m + nb, :c] = x.unflatten(2, (nb, c))
                buf[:, :, :, c:] = gx[:, None, None]
                buf = buf.flatten(2, 3)
            return buf[:, :, r:].unfold(2, width, s)[:, :, :nb]

        def kv(x: Tensor, gx: Tensor | None) -> Tensor:  # -> (B*dil*nb, h, width, D)
            x = windows(interleave(x), gx).transpose(-1, -2)
            # a view when b * dil == 1 and g == 0
            return x.reshape(b * dil * nb, h, width, x.shape[-1])

        qb = interleave(q).reshape(b * dil * nb, c, h, q.shape[-1]).transpose(1, 2)
        kw, vw = kv(k, gk), kv(v, gv)
        # additive mask (B*dil*nb, 1, c, width) = key bias (padding, global slots, halo)
        # + band bias (the exact band and the first global slots in each window), in one op
        key_bias = ops.mask_bias(windows(interleave(key_ok), g_ok), q.dtype)
        # not cached while tracing: a traced tensor must not outlive its trace
        bias = _band_bias.__wrapped__ if ops.tracing() else _band_bias
        band = bias(c, m, r, half, g, width, self.causal, q.dtype, q.device)
        mask = key_bias.unsqueeze(-2) + band  # (B, dil, nb, c, width)
        if g_bias is not None:  # per query: the first group's global slots, c - r.. in a window
            qg = interleave(g_bias).reshape(b, dil, nb, c, g)
            mask = mask + F.pad(qg, (c - r, width - (c - r) - g))
        mask = mask.reshape(b * dil * nb, 1, c, width)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=mask, dropout_p=p, scale=1.0)
        if wide:
            out = out[..., :d]
        # (B*dil*nb, h, c, D) -> (B, N, h, D); views only when dil == 1
        out = out.transpose(1, 2).reshape(b, dil, lp, h, d).transpose(1, 2)
        return out.reshape(b, lp * dil, h, d)[:, :n]

    def _global_rows(self, x: Tensor, real: Tensor, gidx: Tensor, g_ok: Tensor) -> Tensor:
        """Rows of the global tokens with the global projections: (B, G, H, D)."""
        b, _, e = x.shape
        h, d = self.num_heads, self.head_dim
        g = gidx.shape[1]
        xg = x.gather(1, gidx[..., None].expand(-1, -1, e))
        qg = ops.split_heads(self.query_global(xg), h) * d**-0.5  # (B, H, G, D)
        bias = ops.mask_bias(real, x.dtype)[:, None, None, :]  # (B, 1, 1, N)
        p = self.dropout if self.training else 0.0
        if g * h < e:  # fold the global key/value projections into the G query rows
            # qg . (Wk x_j + bk): the bias term is the same for every key j, softmax drops it.
            # A ones column appended to x (and a zero one to the queries) carries sum_j p_j,
            # which multiplies bv (it is 1 unless dropout removed some p_j).
            # All heads' rows share the keys and values x: one head of H*G queries.
            wk = ops.repeat_kv(self.key_global.weight.view(-1, d, e), self.kv_groups, 0)
            qk = torch.einsum("bhgd,hde->bhge", qg, wk)
            qk = F.pad(qk.reshape(b, 1, h * g, e), (0, 1))
            x1 = F.pad(x, (0, 1), value=1.0)[:, None]
            px = F.scaled_dot_product_attention(
                qk, x1, x1, attn_mask=bias, dropout_p=p, scale=1.0
            ).view(b, h, g, e + 1)
            wv = ops.repeat_kv(self.value_global.weight.view(-1, d, e), self.kv_groups, 0)
            out = torch.einsum("bhge,hde->bhgd", px[..., :e], wv)
            if self.value_global.bias is not None:
                bv = ops.repeat_kv(self.value_global.bias.view(-1, 1, d), self.kv_groups, 0)
                out = out + px[..., e:] * bv
        else:  # many global tokens: project the whole sequence
            kg, vg = self._global_kv(x)
            out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=bias, dropout_p=p, scale=1.0)
        return out.transpose(1, 2)

    def _global_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every token's global keys and values, (B, H, N, D) (KV heads expanded)."""
        kv, groups = self.num_key_value_heads, self.kv_groups
        kg = ops.repeat_kv(ops.split_heads(self.key_global(x), kv), groups)
        vg = ops.repeat_kv(ops.split_heads(self.value_global(x), kv), groups)
        return kg, vg

    @classmethod
    def picture(cls, n: int) -> pictures.Picture:
        """Window w ~ n/8: plain, a dilated head, two global tokens (the pairs of their rows and
        columns a part of their own), causal."""
        w = max(2, (n // 8) // 2 * 2)
        glob = torch.zeros(n, dtype=torch.bool)
        glob[[0, n // 2]] = True
        plain = cls(pictures.HIDDEN, pictures.HEADS, window=w)
        dilated = cls(pictures.HIDDEN, pictures.HEADS, window=w, dilation=[1, 2])
        causal = cls(pictures.HIDDEN, pictures.HEADS, window=w, causal=True)
        pic = pictures.Picture(
            cls.name,
            f"Longformer (n={n}): sliding window w={w} (w/2 each side), dilation, global tokens",
        )
        for title, layer, head, g in (
            ("dilation=1", plain, 0, None),
            ("dilation=[1, 2]: head 1 (d=2)", dilated, 1, None),
            (f"global tokens 0 and {n // 2}", plain, 0, glob),
            ("causal=True", causal, 0, None),
        ):
            mask = layer.pattern(n, g)[head]
            parts = mask.long()
            if g is not None:
                parts[(g[:, None] | g[None, :]) & mask] = 2
            labels = ["window", "global token"]
            pic.panels.append(pictures.category_panel(f"window={w}, {title}", parts, labels))
        return pic


def _global_indices(glob: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of each sequence's global tokens, padded to the batch maximum G.

    Returns gidx (B, G) long (padding slots point at a valid position) and g_ok (B, G) bool.
    """
    counts = glob.sum(1)
    if ops.tracing():  # a fixed number of slots: the count is data (see ops.TRACE_GLOBAL_SLOTS)
        g = ops.TRACE_GLOBAL_SLOTS
        torch._check(counts.max().item() <= g, lambda: f"more than {g} global tokens in a row")
    else:
        g = int(counts.max())
    gidx = ops.front(glob)[:, :g]
    g_ok = torch.arange(g, device=glob.device) < counts[:, None]
    return gidx, g_ok


def _block_size(half: int, sub: int) -> int:
    """Query block size c: about w/2 within [MIN_BLOCK, MAX_BLOCK], ceil(w/2 / c) * c - w/2
    small (wasted halo keys), and no longer than the (sub)sequence."""
    blocks_per_half = -(-half // MAX_BLOCK)
    c = max(half, MIN_BLOCK) if blocks_per_half == 1 else -(-half // blocks_per_half)
    # a branch, not min(): under torch.compile's dynamic shapes the comparison becomes a guard
    # and c stays a constant (a symbolic Min(c, n) breaks Inductor's lowering of the windows)
    return c if sub >= c else sub


@functools.lru_cache(maxsize=16)
def _band_bias(
    c: int,
    m: int,
    r: int,
    half: int,
    g: int,
    width: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """(c, width) additive mask of the band and global slots inside a window (see `windows`).

    Slot t of the window of a block lies r + t slots after the start of its first group;
    within a group of c + g slots, the first c are keys (m blocks before the query block for
    the first group), the rest global keys, counted in the first group only. Cached: it
    depends on the shapes only (and is never written to).
    """
    u = r + torch.arange(width, device=device)
    group, within = u // (c + g), u % (c + g)
    key_pos = (group - m) * c + within  # relative to the start of the query block
    diff = torch.arange(c, device=device)[:, None] - key_pos
    ok = (diff <= half) & (diff >= (0 if causal else -half)) & (within < c)
    return ops.mask_bias(ok | ((within >= c) & (group == 0)), dtype)
