"""Attention patterns: the single source of truth for which (query, key) pairs a mechanism sees.

A pattern is a small pure function in the spirit of FlexAttention's ``mask_mod``:
``mod(q_idx, kv_idx) -> bool`` on broadcastable index tensors. Patterns drive the dense
references in the tests, the pictures drawn by ``longseq patterns``, and any mask-taking
backend. Fast kernels are checked against these functions, never the other way round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

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


def chunked_local(
    chunk: int,
    before: int = 1,
    after: int = 0,
    is_causal: bool = False,
) -> MaskMod:
    """Reformer's local attention: query q sees the keys of chunks q//chunk - before ..
    q//chunk + after (only k <= q when causal)."""

    def mod(q: Tensor, k: Tensor) -> Tensor:
        cq, ck = q // chunk, k // chunk
        ok = (ck - cq >= -before) & (ck - cq <= after)
        return ok & (k <= q) if is_causal else ok

    return mod


def global_tokens(is_global: Tensor) -> MaskMod:
    """Global tokens see every key and are seen by every query. `is_global`: (n,) bool."""
    return lambda q, k: is_global[q] | is_global[k]


def sinks(is_global: Tensor) -> MaskMod:
    """Global tokens under a causal mask (StreamingLLM's attention sinks): every query sees the
    global keys up to itself; a global token's own row is an ordinary causal row."""
    return lambda q, k: is_global[k] & (k <= q)


def first_tokens(count: int) -> MaskMod:
    """The keys at positions < count (the sinks of a layer with `global_tokens=count`), seen
    by every query at or after them: on positions, so a cache can evaluate it."""
    return lambda q, k: (k < count) & (k <= q)


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
    """Longformer's pattern for one sequence: (heads, n, n) bool (one head per dilation).
    Causal, global tokens are sinks (`sinks`): seen by the queries after them, rows causal."""
    dilations = [dilation] * (num_heads or 1) if isinstance(dilation, int) else list(dilation)
    masks = []
    for d in dilations:
        mod = sliding_window(window, d, causal)
        if is_global is not None:
            mod = or_masks(mod, (sinks if causal else global_tokens)(is_global))
        masks.append(materialize(mod, n))
    return torch.stack(masks)


def lsh_round(buckets: Tensor, chunk: int, causal: bool = False) -> MaskMod:
    """One round of Reformer's LSH attention, given every token's bucket (n,) (n a multiple of
    `chunk`): the tokens sorted by (bucket, position) are cut into chunks of `chunk`, and a
    query sees the keys of its own chunk and of the previous one (no wrap-around). Causal, the
    rule is prefix-stable instead: a query sees the `chunk` latest tokens of its own bucket up
    to itself (same bucket, k <= q, fewer than `chunk` tokens of that bucket in (k, q]). The
    buckets are data (the hash of each token); the pattern is this cut."""
    n = buckets.shape[-1]
    buckets = buckets.long()
    order = torch.argsort(buckets * n + torch.arange(n))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    chunk_of = rank // chunk

    def mod(q: Tensor, k: Tensor) -> Tensor:
        if causal:  # within a bucket, sorted ranks differ by the tokens of it in between
            d = rank[q] - rank[k]
            return (buckets[q] == buckets[k]) & (d >= 0) & (d < chunk)
        d = chunk_of[q] - chunk_of[k]
        return (d == 0) | (d == 1)

    return mod


# --- BigBird ---------------------------------------------------------------------------------


class BigBirdLayout(NamedTuple):
    """Which key blocks each query block of one sequence sees (blocks, not tokens).

    index: (heads, nb, K) long. Row i lists query block i's key blocks in slots: the sliding
        window (num_sliding_blocks slots, or its past half when causal), then the global
        blocks (num_global_blocks slots), then the random blocks (num_random_blocks slots).
    valid: (heads, nb, K) bool, the slots in use (an unused slot's index is 0). The valid slots
        of a row never repeat a block.
    global_blocks: (G,) long, sorted, G <= num_global_blocks: the query blocks that see every
        key (their rows in `index` are all invalid); every query sees them.
    """

    index: Tensor
    valid: Tensor
    global_blocks: Tensor


# Rows of random block scores drawn per generator: bounds the memory of very long layouts.
_RANDOM_ROWS = 256


def _bigbird_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def bigbird_layout(
    nb_real: int,
    *,
    num_heads: int,
    num_random_blocks: int = 3,
    num_global_blocks: int = 2,
    num_sliding_blocks: int = 3,
    variant: str = "itc",
    causal: bool = False,
    seed: int = 0,
    layer_idx: int = 0,
) -> BigBirdLayout:
    """BigBird's block layout for a sequence of `nb_real` real blocks.

    ITC: the blocks are the sequence's; the global blocks are its first ceil(g/2) and last
    floor(g/2) blocks (the first g when causal). ETC: blocks 0..g-1 are the g extra global
    blocks prepended by the layer and blocks g..g+nb_real-1 the sequence's (nb = g + nb_real).

    Non-global query block i sees the window i-s..i+s (i-s..i when causal; s =
    (num_sliding_blocks - 1) / 2), the global blocks, and r random blocks drawn without
    replacement from the blocks it does not already see (not in the window, not global; when
    causal, only blocks before the window). The draw: iid uniform scores over the blocks from
    a generator, forbidden blocks removed, top r kept; fewer than r allowed blocks: all of
    them. Bidirectional, the generator is seeded by (seed, layer_idx, head, nb_real, rows):
    one draw per chunk of rows. Causal, it is seeded by (seed, layer_idx, head, i) and scores
    only the blocks 0..i-1, so row i's blocks do not depend on how long the sequence is:
    the layout of a prefix is the prefix of the layout (prefix stability, which makes
    training compute what generation computes).
    """
    g, r, s = num_global_blocks, num_random_blocks, (num_sliding_blocks - 1) // 2
    etc = variant == "etc"
    nb = nb_real + (g if etc else 0)
    blk = torch.arange(nb)
    first, last = (g, 0) if etc or causal else ((g + 1) // 2, g // 2)
    is_glob = (blk < first) | (blk >= nb - last)
    global_blocks = blk[is_glob]
    i = blk[:, None]

    # Sliding window, without the blocks that are global anyway (no duplicates).
    sl = i + torch.arange(-s, 1 if causal else s + 1)
    sl_ok = (sl >= 0) & (sl < nb)
    sl = sl.clamp(0, nb - 1)
    sl_ok &= ~is_glob[sl]

    gl = torch.zeros(g, dtype=torch.long)
    gl[: len(global_blocks)] = global_blocks
    gl_ok = (torch.arange(g) < len(global_blocks)).expand(nb, g)
    gl = gl.expand(nb, g)

    # Random blocks: top r of iid scores over the allowed blocks, per head and row chunk.
    rnd = torch.zeros(num_heads, nb, r, dtype=torch.long)
    rnd_ok = torch.zeros(num_heads, nb, r, dtype=torch.bool)
    k = min(r, nb)
    if causal:
        _causal_random(rnd, rnd_ok, is_glob, s, seed, layer_idx)
    for start in range(0, 0 if causal else nb, _RANDOM_ROWS):
        rows = i[start : start + _RANDOM_ROWS]
        forbidden = ((blk - rows).abs() <= s) | is_glob
        for h in range(num_heads):
            gen = torch.Generator().manual_seed(_bigbird_seed(seed, layer_idx, h, nb_real, start))
            scores = torch.rand(len(rows), nb, generator=gen).masked_fill(forbidden, -1.0)
            top, idx = scores.topk(k, dim=-1)
            rnd[h, start : start + len(rows), :k] = idx
            rnd_ok[h, start : start + len(rows), :k] = top >= 0

    index = torch.cat([sl.expand(num_heads, nb, -1), gl.expand(num_heads, nb, g), rnd], -1)
    valid = torch.cat([sl_ok.expand(num_heads, nb, -1), gl_ok.expand(num_heads, nb, g), rnd_ok], -1)
    valid[:, global_blocks] = False
    return BigBirdLayout(index.masked_fill(~valid, 0), valid, global_blocks)


def _causal_random(
    rnd: Tensor, ok: Tensor, is_glob: Tensor, s: int, seed: int, layer_idx: int
) -> None:
    """Causal random blocks in place: row i's r blocks from a generator seeded by (seed,
    layer_idx, head, i) over the blocks 0..i-1, keeping those before the window, not global."""
    heads, nb, r = rnd.shape
    for i in range(s + 1, nb):  # rows up to s have no block before their window
        allowed = ~is_glob[: i - s]
        if not bool(allowed.any()):
            continue
        for h in range(heads):
            gen = torch.Generator().manual_seed(_bigbird_seed(seed, layer_idx, h, i, -1))
            scores = torch.rand(i, generator=gen)[: i - s].masked_fill(~allowed, -1.0)
            top, idx = scores.topk(min(r, i - s))
            rnd[h, i, : len(idx)] = idx
            ok[h, i, : len(idx)] = top >= 0


def bigbird(
    n: int,
    *,
    block_size: int,
    num_heads: int,
    num_random_blocks: int = 3,
    num_global_blocks: int = 2,
    num_sliding_blocks: int = 3,
    variant: str = "itc",
    causal: bool = False,
    seed: int = 0,
    layer_idx: int = 0,
) -> Tensor:
    """BigBird's pattern for one n-token sequence: (heads, N, N) bool, from `bigbird_layout`.

    ITC: N = n. ETC: N = g * block_size + n; the extra global tokens are the first g *
    block_size rows and columns. A query sees the tokens of its layout's key blocks (every
    key for a global block), and only keys k <= q when causal.
    """
    b = block_size
    lay = bigbird_layout(
        -(-n // b),
        num_heads=num_heads,
        num_random_blocks=num_random_blocks,
        num_global_blocks=num_global_blocks,
        num_sliding_blocks=num_sliding_blocks,
        variant=variant,
        causal=causal,
        seed=seed,
        layer_idx=layer_idx,
    )
    blk = bigbird_blocks(lay)
    big_n = n + (num_global_blocks * b if variant == "etc" else 0)
    mask = blk.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :big_n, :big_n]
    return mask.tril() if causal else mask


def bigbird_blocks(lay: BigBirdLayout) -> Tensor:
    """(heads, nb, nb) bool: query block i sees key block j (global query blocks: every j)."""
    h, nb, _ = lay.index.shape
    blk = torch.zeros(h, nb, nb + 1, dtype=torch.bool, device=lay.index.device)
    blk.scatter_(2, lay.index.masked_fill(~lay.valid, nb), True)
    blk = blk[..., :nb]
    blk[:, lay.global_blocks] = True
    return blk
