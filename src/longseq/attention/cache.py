"""Incremental caches: what a causal layer keeps of the past to score new tokens exactly.

A causal, prefix-stable layer's output at position t is a softmax over the keys k_j = Wk x_j
and values v_j = Wv x_j of the positions j <= t its pattern lets t see, and k_j, v_j never
change once computed. So decoding stores them once, in slots that remember the position they
hold, and a new query at position t attends over the slots its rule allows:

    out_t = sum_{slots s: kpos(s) <= t, rule(t, kpos(s))} softmax_s(q_t . k_s) v_s

The rule is the mechanism's own pattern (`patterns.py`, the functions its kernel is tested
against), evaluated on positions: (qpos (B, 1, C, 1), kpos (B, 1, 1, S)) -> bool broadcastable
to (B, heads, C, S). A query at t sees nothing after t, so what it computes does not depend on
how the past was fed in: token by token, in chunks, or as one prompt.

`SlotCache(rule)` keeps every position (full attention, BigBird, whose random blocks reach
anywhere back); storage grows by doubling, so nothing is reserved for tokens not yet made.
`SlotCache(rule, size=m)` is a ring of m slots, slot = position mod m, for rules that never
look back more than m - 1 positions (Longformer's window, local attention's chunks): constant
memory however long the generation runs. `SlotCache(rule, size=m, sinks=G)` also keeps
positions 0..G-1 in G fixed slots before the ring (Longformer's global tokens under a causal
mask, StreamingLLM's attention sinks): position p < G in slot p, p >= G in slot
G + (p - G) mod m. LSH keeps buckets beside its keys (`LSHCache`, in
`lsh.py`).

Attention sinks at cache positions (Longformer's `sink_positions="cache"`): the layer gives
`sink_queries` q', its queries rotated as if at the cache position, which score the sink
slots (positions < sinks) while the queries score the rest: the attention call adds
(q' - q) . k_s to the scores of the sink slots s (a float mask), so that they are q' . k_s.

Grouped-query layers (fewer key/value heads than query heads) store their KV heads only,
never copies expanded to the query heads: the attention expands them (`enable_gqa`).

Several new tokens per row (a prompt, in chunks) are scored against the cache plus the chunk
itself; rows of a batch advance at their own positions, and `valid` marks the new tokens that
exist (a row that has finished, or the right padding of a shorter prompt, stores nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# (qpos (B, 1, C, 1), kpos (B, 1, 1, S)) -> allowed, broadcastable to (B, H, C, S)
Rule = Callable[[Tensor, Tensor], Tensor]

_FIRST_CAPACITY = 64  # slots of a growing cache before its first doubling


class AttentionCache:
    """The incremental state of one attention layer (see the module docstring)."""

    bounded: bool = False  # memory independent of the sequence length (a ring)
    kind: str = "kv"  # what it keeps, for messages: "kv" (every position), "ring", "lsh"

    def tensors(self) -> tuple[Tensor, ...]:
        """What the cache holds (for measuring its memory)."""
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor, valid: Tensor) -> Tensor:
        """Context (B, H, C, D) of C new queries at positions qpos (B, C), queries pre-scaled;
        their keys and values k, v (B, KV, C, D), KV dividing H, are stored where `valid`
        (B, C)."""
        raise NotImplementedError


class SlotCache(AttentionCache):
    """Keys and values in slots with the position each holds (-1: empty).

    k, v: (B, KV, S, D), the layer's key/value heads; pos: (B, S). `rule` is the mechanism's
    pattern on positions (None: every earlier position); `size` makes a ring of that many
    slots (None: grows), after `sinks` fixed slots for positions 0..sinks-1.
    """

    def __init__(
        self,
        rule: Rule | None = None,
        size: int | None = None,
        sinks: int = 0,
        ring_is_rule: bool = False,
    ) -> None:
        if sinks and size is None:
            raise ValueError("sinks are slots kept beside a ring: give size too")
        self.rule = rule
        self.size = size
        self.sinks = sinks
        self.bounded = size is not None
        self.kind = "kv" if size is None else "ring"
        # a ring that holds exactly what its newest query may see (Longformer without
        # dilation: the last w/2 + 1 positions): one token per row needs no rule, and no mask
        # at all once every slot is filled (the decoding step, `_ring_step`)
        self.ring_is_rule = ring_is_rule and size is not None
        self.full = False  # every slot of every row holds a position
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.pos: Tensor | None = None
        self.hi = 0  # a growing cache: slots >= hi are still empty

    def tensors(self) -> tuple[Tensor, ...]:
        return () if self.k is None else (self.k, self.v, self.pos)  # type: ignore[return-value]

    def _allocate(self, like: Tensor, slots: int) -> None:
        b, h, _, d = like.shape
        k = like.new_zeros(b, h, slots, d)
        v = torch.zeros_like(k)
        pos = torch.full((b, slots), -1, dtype=torch.long, device=like.device)
        if self.k is not None:  # grow: the old slots keep their places
            n = self.k.shape[2]
            k[:, :, :n], v[:, :, :n], pos[:, :n] = self.k, self.v, self.pos
        self.k, self.v, self.pos = k, v, pos

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        qpos: Tensor,
        valid: Tensor,
        sink_queries: Tensor | None = None,
    ) -> Tensor:
        """See `AttentionCache.attend`; `sink_queries` (B, H, C, D): what scores the sink
        slots instead of q (module docstring)."""
        if self.k is None:
            self._allocate(k, self.slots or _FIRST_CAPACITY)
        if self.ring_is_rule and q.shape[2] == 1 and bool(valid.all()):
            return self._ring_step(q, k, v, qpos, sink_queries)
        kpos_new = qpos.masked_fill(~valid, -1)
        if self.size is not None and q.shape[2] > 1:
            # a chunk can overwrite ring slots its own earlier queries still need:
            # attend over (ring + chunk), then store the chunk's last positions
            keys = torch.cat((self.k, k), 2)
            values = torch.cat((self.v, v), 2)
            kpos = torch.cat((self.pos, kpos_new), 1)
            self.store(k, v, qpos, valid)
        else:
            self.store(k, v, qpos, valid)
            n = self.slots or self.hi
            keys, values, kpos = self.k[:, :, :n], self.v[:, :, :n], self.pos[:, :n]
        q4, k4 = qpos[:, None, :, None], kpos[:, None, None, :]
        ok = (k4 >= 0) & (k4 <= q4)
        if self.rule is not None:
            ok = ok & self.rule(q4, k4)
        ok = ok | ~valid[:, None, :, None]  # padding queries: any finite row, never used
        mask: Tensor = ok
        if sink_queries is not None:
            is_sink = (kpos >= 0) & (kpos < self.sinks)
            extra = _sink_bias(q, sink_queries, keys) * is_sink[:, None, None, :]
            mask = extra.masked_fill(~ok, float("-inf"))
        gqa = q.shape[1] != keys.shape[1]  # query head i reads KV head i // (H / KV)
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=1.0, enable_gqa=gqa
        )

    def _ring_step(
        self, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor, sink_queries: Tensor | None = None
    ) -> Tensor:
        """`attend` for one new token in every row of a `ring_is_rule` ring: store it, then
        attend over every filled slot (all of them, unmasked, once the ring is full). A
        decoding step's few small ops instead of the rule's mask over every slot."""
        assert self.k is not None and self.v is not None and self.pos is not None
        rows = torch.arange(qpos.shape[0], device=qpos.device)
        slot = self.slot(qpos[:, 0])
        self.k[rows, :, slot] = k[:, :, 0]
        self.v[rows, :, slot] = v[:, :, 0]
        self.pos[rows, slot] = qpos[:, 0]
        mask = None
        if not self.full:
            filled = self.pos >= 0
            self.full = bool(filled.all())
            mask = None if self.full else filled[:, None, None, :]
        if sink_queries is not None:  # the sinks are slots 0..sinks-1 (position p < sinks: p)
            g = self.sinks
            extra = F.pad(_sink_bias(q, sink_queries, self.k[:, :, :g]), (0, self.k.shape[2] - g))
            mask = extra if mask is None else extra.masked_fill(~mask, float("-inf"))
        gqa = q.shape[1] != self.k.shape[1]
        return F.scaled_dot_product_attention(
            q, self.k, self.v, attn_mask=mask, scale=1.0, enable_gqa=gqa
        )

    @property
    def slots(self) -> int | None:
        """A ring's slots (sinks included); None for a growing cache."""
        return None if self.size is None else self.sinks + self.size

    def slot(self, pos: Tensor) -> Tensor:
        """The slot that holds position `pos` (a growing cache's capacity covers it)."""
        if self.size is None:
            return pos
        ring = self.sinks + (pos - self.sinks) % self.size
        return torch.where(pos < self.sinks, pos, ring) if self.sinks else ring

    def store(self, k: Tensor, v: Tensor, qpos: Tensor, valid: Tensor) -> None:
        """Keep keys and values (B, H, C, D) at positions qpos (B, C) where `valid`."""
        if self.k is None:
            self._allocate(k, self.slots or _FIRST_CAPACITY)
        assert self.k is not None and self.v is not None and self.pos is not None
        if self.size is None:
            top = int(qpos.masked_fill(~valid, -1).max()) + 1
            if top > self.k.shape[2]:
                self._allocate(k, max(top, 2 * self.k.shape[2]))
            self.hi = max(self.hi, top)
        b, c = qpos.shape
        if c == 1:  # one token per row; invalid rows rewrite the slot with its old content
            rows = torch.arange(b, device=qpos.device)
            slot = self.slot(qpos[:, 0])
            ok = valid[:, 0]
            keep = ok[:, None, None]
            self.k[rows, :, slot] = torch.where(keep, k[:, :, 0], self.k[rows, :, slot])
            self.v[rows, :, slot] = torch.where(keep, v[:, :, 0], self.v[rows, :, slot])
            self.pos[rows, slot] = torch.where(ok, qpos[:, 0], self.pos[rows, slot])
        else:  # a chunk: per row, its valid positions that fit (distinct slots), and sinks
            last = qpos.masked_fill(~valid, -1).amax(1, keepdim=True)
            span = self.size or self.k.shape[2]
            bi, ci = (valid & ((qpos > last - span) | (qpos < self.sinks))).nonzero(as_tuple=True)
            slot = self.slot(qpos[bi, ci])
            self.k[bi, :, slot] = k[bi, :, ci]
            self.v[bi, :, slot] = v[bi, :, ci]
            self.pos[bi, slot] = qpos[bi, ci]


def _sink_bias(q: Tensor, qs: Tensor, keys: Tensor) -> Tensor:
    """(qs - q) . k for queries q, qs (B, H, C, D) and keys (B, KV, S, D), KV dividing H
    (query head i reads KV head i // (H / KV)): (B, H, C, S), what turns q . k into qs . k."""
    b, h, c, d = q.shape
    kv = keys.shape[1]
    diff = (qs - q).reshape(b, kv, (h // kv) * c, d) @ keys.transpose(-1, -2)
    return diff.reshape(b, h, c, -1)


__all__ = ["AttentionCache", "Rule", "SlotCache"]
