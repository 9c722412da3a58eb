"""BigBird block-sparse attention (Zaheer et al., 2020), ITC and ETC variants.

The sequence is cut into blocks of `block_size` tokens (b). With s = (num_sliding_blocks-1)/2,
g = num_global_blocks and r = num_random_blocks, query block i sees the key blocks

    sliding   i-s .. i+s
    global    the g global blocks (whose own queries see every key)
    random    r blocks drawn for (head, i) among the blocks it does not already see

and each query t attends with softmax over exactly those keys:

    out_t = sum_{k in allowed(t)} softmax_k(q_t . k_k / sqrt(d)) v_k

`patterns.bigbird_layout` is the single source of truth for the blocks; `patterns.bigbird`
turns it into the token mask the tests compare this kernel with.

Variants:
- ITC (internal transformer construction): the global blocks are blocks of the sequence, the
  first ceil(g/2) and the last floor(g/2) real blocks (g = 2: first and last, as in Hugging
  Face).
- ETC (extended): g*b extra global tokens with learned states (`global_states`, initialised
  N(0, 0.02) like BERT/BigBird embeddings) are prepended inside the layer, projected by the
  layer's key/value projections. They see everything and everything sees them; every sequence
  block is non-global. Simplification: their outputs are dropped (so their queries are never
  computed); in a full ETC model their states would flow from layer to layer. In `pattern`
  they are the first g*b rows and columns.
- causal: the pattern restricted to keys k <= q (token level); the global blocks are the first
  g blocks, the window is i-s..i, and random blocks come from blocks before the window.

Global attention is given by blocks, not tokens: `global_attention_mask` is not accepted
(supports_global = False), as in the paper's ITC, where no token-level globals exist.

Random blocks depend only on (seed, layer_idx, head, query block, number of real blocks): a
sequence's prediction never depends on what else is in the batch, and train and eval draw the
same blocks. The number of real blocks is ceil(t / b), t = one past the last real token.
Causal layers drop the number of real blocks from that list (query block i draws among blocks
< i from a generator of its own): the output at t depends on tokens <= t only, whatever
follows, so a causal LM computes in training what it computes when generating.

Kernel (never n x n): per batch element the layout depends only on its real length, so one
index (B, H, nb, K) lists the K key blocks of every query block. Rows (batch, head, query
block) are processed in a few chunks of <= 8M scores: gather the chunk's key/value blocks
(c, K*b, D), one batched matmul for the scores (c, b, K*b), an additive mask (unused slots,
padding keys, causal), softmax, one batched matmul with the values. The backward is written out
(`_GatheredAttention`): it keeps only the probabilities, re-gathers keys/values, uses
sum_j P dP = dout . out for the softmax, and sums key/value gradients back per block. Chunk
buffers are reused, so memory beyond the probabilities stays small. Global query blocks (ITC)
are dense rows over all keys (g*b x n, PyTorch's fused SDPA) written over their block rows.
The layout is always used, even when it covers everything (short sequences): there is no dense
fallback. Time and memory are O(n * (num_sliding_blocks + g + r) * b).

Hugging Face's BigBird in eval mode (every "random" block is block 0, the layout of the whole
padded input, full attention for short inputs) is the port `bigbird-hf` in
`longseq.convert.hf_attention`, for converted checkpoints: it changes `layout`,
`sequence_ends` and `pattern`, and reuses this kernel.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.attention import flex, ops, patterns, pictures
from longseq.attention.base import At, SelfAttention
from longseq.attention.cache import AttentionCache, SlotCache
from longseq.attention.shard import Shard

VARIANTS = ("itc", "etc")


# Layouts are tiny (blocks, not tokens) and reused by every forward of the same length.
_layout = functools.lru_cache(maxsize=128)(patterns.bigbird_layout)


class BigBirdAttention(SelfAttention):
    name = "bigbird"
    not_exportable = (
        "its block layout (the random blocks) is built in Python for each row's number of "
        "real blocks, so a traced program would hold one layout for one length"
    )
    sequence_parallel = True
    supports_global = False
    flex_refusal = None
    auto_flex = True

    @classmethod
    def options_at(cls, at: At, given: dict[str, Any]) -> dict[str, Any]:
        """Under a reach: blocks of reach/4 tokens (the 3 sliding blocks span 3/4 of it), at
        most the paper's 64, and 2 random blocks. In a model, each layer draws its own random
        blocks (`layer_idx`: the layer's index)."""
        derived = {}
        if at.reach is not None:
            derived = {"block_size": max(1, min(64, at.reach // 4)), "num_random_blocks": 2}
        opts = {**derived, **given}
        return opts if at.layer is None else {**opts, "layer_idx": at.layer}

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        block_size: int = 64,
        num_random_blocks: int = 3,
        num_global_blocks: int = 2,
        num_sliding_blocks: int = 3,
        variant: str = "itc",
        seed: int = 0,
        layer_idx: int = 0,
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
        ops.check_int("block_size", block_size, 1)
        ops.check_int("num_random_blocks", num_random_blocks, 0)
        ops.check_int("num_global_blocks", num_global_blocks, 0)
        ops.check_int("num_sliding_blocks", num_sliding_blocks, 1)
        if num_sliding_blocks % 2 == 0:
            raise ValueError(
                f"num_sliding_blocks must be odd (a window centred on the query block), got "
                f"{num_sliding_blocks}"
            )
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        ops.check_int("seed", seed, None)
        ops.check_int("layer_idx", layer_idx, 0)
        self.block_size = block_size
        self.num_random_blocks = num_random_blocks
        self.num_global_blocks = num_global_blocks
        self.num_sliding_blocks = num_sliding_blocks
        self.variant = variant
        self.seed = seed
        self.layer_idx = layer_idx
        # ETC's extra global tokens: whole blocks prepended to the keys and values.
        self.extra_blocks = num_global_blocks if variant == "etc" else 0
        self.global_states = (
            nn.Parameter(torch.randn(self.extra_blocks * block_size, hidden_size) * 0.02)
            if self.extra_blocks
            else None
        )

    @property
    def length_multiple(self) -> int:
        return self.block_size

    def _pattern_options(self) -> dict[str, int | str | bool]:
        """The options that define this layer's block layout (shared by kernel and pattern)."""
        return {
            "num_heads": self.num_heads,
            "num_random_blocks": self.num_random_blocks,
            "num_global_blocks": self.num_global_blocks,
            "num_sliding_blocks": self.num_sliding_blocks,
            "variant": self.variant,
            "causal": self.causal,
            "seed": self.seed,
            "layer_idx": self.layer_idx,
        }

    def layout(self, nb_real: int) -> patterns.BigBirdLayout:
        """This layer's (cached) block layout for a sequence of `nb_real` real blocks."""
        return _layout(nb_real, **self._pattern_options())

    def refuse_global_tokens(self, is_global: Tensor | None) -> None:
        if is_global is not None and bool(is_global.any()):
            raise ValueError(
                f"'{self.name}' attention has no global tokens; its globals are blocks"
            )

    def sequence_ends(self, real: Tensor) -> Tensor:
        """(B,) one past each sequence's last real token: the length its layout is drawn for
        (trailing padding is dropped, so it never changes the blocks)."""
        return real.shape[1] - real.flip(1).to(torch.int8).argmax(1)

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        """(heads, N, N) bool; ETC: N = g*block_size + n, the extra tokens first."""
        self.refuse_global_tokens(is_global)
        return patterns.bigbird(n, block_size=self.block_size, **self._pattern_options())

    def dense_up_to(self, limit: int) -> int:
        """ITC: as long as the layout covers every block, read from `pattern` (there is no
        dense fallback; ETC never: its extra global states are keys a dense layer lacks)."""
        if self.extra_blocks:
            return 0
        b, nb = self.block_size, 0
        # coverage is decided per block and is only lost as blocks are added (r is fixed)
        while nb * b < limit:
            mask = self.pattern((nb + 1) * b)
            full = torch.ones_like(mask)
            if not bool((mask == (full.tril() if self.causal else full)).all()):
                break
            nb += 1
        return min(limit, nb * b)

    def new_cache(self) -> SlotCache:
        """Every earlier position (random blocks reach anywhere back). A query sees the
        positions of the key blocks its layout row lists (`patterns.bigbird_blocks`, the
        prefix-stable causal layout), earlier than itself. ETC's extra global tokens are the
        first slots (positions are shifted by their number)."""
        self._check_cacheable()
        b, gx = self.block_size, self.extra_blocks
        tables: dict[tuple[int, torch.device], Tensor] = {}

        def rule(q: Tensor, k: Tensor) -> Tensor:
            qb, kb = q[:, 0, :, 0] // b, k[:, 0, 0, :].clamp(min=0) // b  # (B, C), (B, S)
            top = max(int(qb.max()), int(kb.max()))  # other rows may be further on
            nb = 1 << top.bit_length()  # blocks 0..nb-1 (powers of 2: few tables)
            if (nb, q.device) not in tables:  # a causal layout's rows do not depend on nb
                blk = patterns.bigbird_blocks(self.layout(max(1, nb - gx)))
                tables[nb, q.device] = blk.to(q.device)
            blk = tables[nb, q.device]
            return blk[:, qb[:, :, None], kb[:, None, :]].transpose(0, 1)  # (B, H, C, S)

        return SlotCache(rule)

    def attend_cached(
        self, hidden_states: Tensor, cache: AttentionCache, positions: Tensor, real: Tensor
    ) -> Tensor:
        q, k, v = self.project(hidden_states, positions, expand=False)
        if not self.extra_blocks:
            return cache.attend(q, k, v, positions, real)
        gxb = self.extra_blocks * self.block_size
        assert isinstance(cache, SlotCache)
        if cache.hi == 0:  # ETC: the extra global tokens take the first slots
            _, ek, ev = self.project(self.global_states[None].to(q.dtype), expand=False)
            bsz = q.shape[0]
            epos = torch.arange(gxb, device=q.device).expand(bsz, gxb)
            cache.store(ek.expand(bsz, -1, -1, -1), ev.expand(bsz, -1, -1, -1), epos, epos >= 0)
        return cache.attend(q, k, v, positions + gxb, real)

    def _batch_layout(
        self, nb_real: list[int], nb: int, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Stacked layouts: index, valid (B, H, gx + nb, K) and global blocks (B, g).

        Rows past a sequence's real blocks are unused; global-block slots a sequence lacks
        point at block nb (a dummy block the kernel discards).
        """
        gx, g = self.extra_blocks, self.num_global_blocks
        first = self.layout(nb_real[0])
        h, _, k = first.index.shape
        index = torch.zeros(len(nb_real), h, gx + nb, k, dtype=torch.long)
        valid = torch.zeros(len(nb_real), h, gx + nb, k, dtype=torch.bool)
        glob = torch.full((len(nb_real), g), nb, dtype=torch.long)
        for length in set(nb_real):  # a loop over the batch's distinct lengths, not blocks
            lay = self.layout(length)
            rows = torch.tensor([i for i, x in enumerate(nb_real) if x == length])
            index[rows, :, : gx + length] = lay.index
            valid[rows, :, : gx + length] = lay.valid
            glob[rows, : len(lay.global_blocks)] = lay.global_blocks
        return index.to(device), valid.to(device), glob.to(device)

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        b, gx = self.block_size, self.extra_blocks
        n = hidden_states.shape[1]
        ends = self.sequence_ends(real)
        n_eff = int(ends.max())
        q, k, v = self.project(hidden_states[:, :n_eff])
        q, k, v = (ops.pad_to_multiple(t, b, dim=2) for t in (q, k, v))
        real = ops.pad_to_multiple(real[:, :n_eff], b, dim=1, value=False)
        bsz, h, length, d = q.shape
        nb = length // b
        index, valid, glob_blocks = self._batch_layout(
            (-(-ends // b)).tolist(), nb, hidden_states.device
        )
        if gx:  # ETC: the extra global tokens' keys and values come first
            _, ek, ev = self.project(self.global_states[None].to(q.dtype))
            k = torch.cat([ek.expand(bsz, -1, -1, -1), k], dim=2)
            v = torch.cat([ev.expand(bsz, -1, -1, -1), v], dim=2)
            real_k = torch.cat([real.new_ones(bsz, gx * b), real], dim=1)
        else:
            real_k = real
        ctx = self._sparse_rows(q, k, v, real_k, index[:, :, gx:], valid[:, :, gx:])
        if self.num_global_blocks and not gx:
            ctx = self._global_rows(ctx, q, k, v, real, glob_blocks)
        ctx = ctx.view(bsz, h, length, d)[:, :, :n_eff]
        return ctx if n_eff == n else F.pad(ctx, (0, 0, 0, n - n_eff))

    def _extra_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """ETC: the extra global tokens' keys and values before the sequence's."""
        if not self.extra_blocks:
            return k, v
        _, ek, ev = self.project(self.global_states[None].to(k.dtype), expand=False)
        bsz = k.shape[0]
        return torch.cat([ek.expand(bsz, -1, -1, -1), k], 2), torch.cat(
            [ev.expand(bsz, -1, -1, -1), v], 2
        )

    def attend_flex(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        """FlexAttention under `flex_mask`; ETC's extra global keys first."""
        self.refuse_global_tokens(glob)
        self.refuse_flex_dropout()
        q, k, v = self.project(hidden_states, expand=False)
        k, v = self._extra_kv(k, v)
        return flex.attend(q, k, v, self.flex_mask(real, glob))

    def flex_mask(self, real: Tensor, glob: Tensor | None) -> flex.FlexMask:
        """Each sequence's layout (`patterns.bigbird_blocks`, drawn for its real blocks as
        `attend` draws it) as a (B, H, blocks, blocks) table: query q (token q + g*b of the
        pattern under ETC) sees key k where its block row lists k's block; real keys only,
        k <= q when causal."""
        b, gx = self.block_size, self.extra_blocks
        bsz, n = real.shape
        nb = -(-n // b)
        off = gx * b
        table = torch.zeros(bsz, self.num_heads, gx + nb, gx + nb, dtype=torch.bool)
        lengths = (-(-self.sequence_ends(real) // b)).tolist()
        for length in set(lengths):
            rows = [i for i, x in enumerate(lengths) if x == length]
            table[rows, :, : gx + length, : gx + length] = patterns.bigbird_blocks(
                self.layout(length)
            )
        table = table.to(real.device)
        real_k = torch.cat([real.new_ones(bsz, off), real], 1)
        causal = self.causal

        def mod(bi: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            ok = table[bi, h, (q + off) // b, k // b] & real_k[bi, k]
            return ok & (k <= q + off) if causal else ok

        key = (self.name, self.block_size, tuple(sorted(self._pattern_options().items())))
        return flex.FlexMask(mod, real, heads=True, key=key, tensors=(table,), q_offset=off)

    def _sparse_rows(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        real_k: Tensor,
        index: Tensor,
        valid: Tensor,
        first_block: int | None = None,
    ) -> Tensor:
        """Every query block against its K gathered key blocks: (B, H, nb, b, D). The query
        blocks are key blocks first_block.. (default: the extra ETC blocks' count)."""
        b, gx = self.block_size, self.extra_blocks
        bsz, h, length, d = q.shape
        nb, nbk, kk = length // b, k.shape[2] // b, index.shape[-1]
        # Rows: (batch, head, query block) flattened; index rows of the (B*H*nbk, b*D) blocks.
        flat = index + torch.arange(bsz * h, device=q.device).view(bsz, h, 1, 1) * nbk
        batch = torch.arange(bsz, device=q.device).view(bsz, 1, 1, 1)
        key_ok = real_k.view(bsz, nbk, b)[batch, index] & valid[..., None]  # (B, H, nb, K, b)
        key_bias = ops.mask_bias(key_ok.view(-1, 1, kk * b), q.dtype)
        if self.causal:
            offs = torch.arange(b, device=q.device)
            k_pos = (index[..., None] * b + offs).view(-1, kk * b)
            q0 = gx if first_block is None else first_block
            q_pos = (torch.arange(q0, q0 + nb, device=q.device)[:, None] * b + offs).repeat(
                bsz * h, 1
            )

            def bias(s: int, e: int) -> Tensor:
                causal = ops.causal_allowed(q_pos[s:e], k_pos[s:e])
                return key_bias[s:e] + ops.mask_bias(causal, q.dtype)
        else:

            def bias(s: int, e: int) -> Tensor:
                return key_bias[s:e]

        p = self.dropout if self.training else 0.0
        out = _GatheredAttention.apply(
            ops.blocks(q, b).reshape(-1, b, d),
            k.reshape(bsz * h * nbk, b * d),
            v.reshape(bsz * h * nbk, b * d),
            flat.view(-1, kk),
            bias,
            p,
        )
        return out.view(bsz, h, nb, b, d)

    def _global_rows(
        self,
        ctx: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        real_k: Tensor,
        glob_blocks: Tensor,
        first_block: int = 0,
    ) -> Tensor:
        """ITC: overwrite the global query blocks of ctx (B, H, nb, b, D) with dense rows over
        all keys. ctx and q hold query blocks first_block.. (a shard); k, v, real_k every key;
        global blocks elsewhere (or missing: index nbk) are left alone."""
        b = self.block_size
        bsz, h, nb, _, d = ctx.shape
        nbk = k.shape[2] // b
        g = glob_blocks.shape[1]
        local = glob_blocks - first_block
        held = (local >= 0) & (local < nb) & (glob_blocks < nbk)
        slot = torch.where(held, local, nb)  # nb: a dummy block, dropped below
        pick = slot.view(bsz, 1, g, 1, 1).expand(bsz, h, g, b, d)
        gq = ops.blocks(q, b).gather(2, pick.clamp(max=nb - 1)).view(bsz, h, g * b, d)
        allowed = None if bool(real_k.all()) else real_k[:, None, None, :]
        if self.causal:
            k_pos = torch.arange(nbk * b, device=q.device)
            q_pos = (glob_blocks.clamp(max=nbk - 1)[..., None] * b + k_pos[:b]).view(bsz, g * b)
            # the diagonal keeps a padding query from having an empty row (its output is unused)
            allowed = (ops.causal_allowed(q_pos, k_pos) & real_k[:, None, :]) | (
                q_pos[..., None] == k_pos
            )
            allowed = allowed[:, None]
        # Dense rows over all keys: PyTorch's fused (flash) kernel, no (g*b, n) scores kept.
        p = self.dropout if self.training else 0.0
        rows = F.scaled_dot_product_attention(gq, k, v, attn_mask=allowed, dropout_p=p, scale=1.0)
        rows = rows.view(bsz, h, g, b, d).to(ctx.dtype)  # autocast: SDPA half, kernel fp32
        ctx = torch.cat([ctx, ctx.new_zeros(bsz, h, 1, b, d)], dim=2)
        return ctx.scatter(2, pick, rows)[:, :, :nb]

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Shard
    ) -> Tensor:
        """Random and global blocks reach anywhere: every rank's keys and values are
        all-gathered, and this rank's query blocks are scored against the blocks their layout
        rows list (the layout of the whole sequence), global query blocks densely."""
        b, gx = self.block_size, self.extra_blocks
        n = hidden_states.shape[1]
        if n % b:
            raise ValueError(
                f"sequence-parallel BigBird needs shards of whole blocks ({n} tokens per shard, "
                f"block_size {b})"
            )
        positions = (shard.start + torch.arange(n, device=hidden_states.device)).expand(
            hidden_states.shape[0], n
        )
        q, k, v = self.project(hidden_states, positions)
        k, v = shard.gather(k, 2), shard.gather(v, 2)
        real_k = shard.gather(real.to(q.dtype), 1) > 0
        ends = shard.total - real_k.flip(1).to(torch.int8).argmax(1)
        ends = torch.where(real_k.any(1), ends, torch.ones_like(ends))
        nbk = shard.total // b
        index, valid, glob_blocks = self._batch_layout(
            (-(-ends // b)).tolist(), nbk, hidden_states.device
        )
        first = shard.start // b
        if gx:  # ETC: the extra global tokens' keys and values come first
            _, ek, ev = self.project(self.global_states[None].to(q.dtype))
            bsz = q.shape[0]
            k = torch.cat([ek.expand(bsz, -1, -1, -1), k], dim=2)
            v = torch.cat([ev.expand(bsz, -1, -1, -1), v], dim=2)
            real_k = torch.cat([real_k.new_ones(bsz, gx * b), real_k], dim=1)
        rows = slice(gx + first, gx + first + n // b)
        ctx = self._sparse_rows(
            q, k, v, real_k, index[:, :, rows], valid[:, :, rows], first_block=gx + first
        )
        if self.num_global_blocks and not gx:
            ctx = self._global_rows(ctx, q, k, v, real_k, glob_blocks, first)
        return ctx.reshape(q.shape)

    def _pattern_parts(self, n: int, head: int = 0) -> Tensor:
        """(N, N) long, `pattern(n)[head]` split by the layout slot that scores each pair:
        0 none, 1 sliding, 2 global (rows of global blocks: every key), 3 random. Raises if
        the parts do not add up to the pattern."""
        b, r, g = self.block_size, self.num_random_blocks, self.num_global_blocks
        lay = self.layout(-(-n // b))
        index, valid = lay.index[head], lay.valid[head]
        nb, k = index.shape
        slot_part = torch.tensor([1] * (k - g - r) + [2] * g + [3] * r).expand(nb, k)
        blocks = torch.zeros(nb, nb, dtype=torch.long)
        rows = torch.arange(nb)[:, None].expand(nb, k)
        blocks[rows[valid], index[valid]] = slot_part[valid]
        blocks[lay.global_blocks] = 2
        pattern = self.pattern(n)[head]
        parts = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)
        parts = parts[: pattern.shape[0], : pattern.shape[1]]
        if self.causal:
            parts = parts.tril()
        if not torch.equal(parts > 0, pattern):
            raise RuntimeError("bigbird layout parts do not add up to layer.pattern(n)")
        return parts

    @classmethod
    def picture(cls, n: int) -> pictures.Picture:
        """Blocks of n/16 tokens, sliding / global / random, for ITC, ETC and causal (head 0)."""
        b = max(1, n // 16)
        opts = {
            "block_size": b,
            "num_random_blocks": 2,
            "num_global_blocks": 2,
            "num_sliding_blocks": 3,
            "seed": 0,
        }
        pic = pictures.Picture(cls.name, f"BigBird (n={n}): block-sparse, block_size={b}")
        pic.note = (
            "head 0 shown; the random blocks differ per head and are fixed by (seed, "
            "layer_idx, number of blocks). Grid lines: blocks."
        )
        for extra in ({}, {"variant": "etc"}, {"causal": True}):
            layer = cls(pictures.HIDDEN, pictures.HEADS, **opts, **extra)
            parts = layer._pattern_parts(n)
            extra_tokens = layer.extra_blocks * b
            title = (
                f"variant={layer.variant}, causal={layer.causal}\nblock_size={b}, "
                f"sliding={layer.num_sliding_blocks}, global={layer.num_global_blocks}, "
                f"random={layer.num_random_blocks}\n{pictures.density(parts)}"
            ) + (f"; +{extra_tokens} extra global tokens first" if extra_tokens else "")
            labels = {1: "sliding", 2: "global", 3: "random"}
            pic.panels.append(pictures.Panel(title, parts, labels, grid=b))
        return pic


# Scores per chunk (at most): the chunk buffers (<= 32 MB in fp32) are reused from chunk to
# chunk instead of n-sized temporaries freshly faulted in each call, while a step stays a few
# large ops (many small ones stall when the machine's cores are shared). Measured at n = 4096:
# 2**22 is ~4% faster on an idle machine, 2**23 ~20% faster on a loaded one.
_CHUNK_ELEMENTS = 1 << 23


def _chunk_rows(rows: int, per_row: int) -> int:
    """Rows per chunk: as few chunks as keep each under _CHUNK_ELEMENTS, of equal sizes."""
    chunks = -(-rows * per_row // _CHUNK_ELEMENTS)
    return -(-rows // max(1, chunks))


def _accumulate(dst: Tensor, idx: Tensor, src: Tensor, lo: int, hi: int) -> None:
    """dst[idx[i]] += src[i], repeated indices summed; idx spans rows lo..hi-1 of dst.

    Embedding's backward does this with row-wise vector adds; index_add_ goes through
    scatter_add, many times slower on CPU when indices repeat (they do: window blocks).
    """
    dst[lo:hi] += torch.ops.aten.embedding_dense_backward(src, idx - lo, hi - lo, -1, False)


class _GatheredAttention(torch.autograd.Function):
    """softmax(q_r kg_r^T + bias_r) vg_r for every row r of query blocks, where kg_r, vg_r are
    the key/value blocks listed in index[r]. Chunked over rows, with reused buffers.

    q (R, b, D); k, v (Rk, b*D) blocks; index (R, K) rows of k/v; bias(s, e) -> additive mask
    broadcastable to (e-s, b, K*b); dropout on the probabilities (0 in eval).
    Saves the probabilities (R, b, K*b) (and the dropout mask), re-gathers kg, vg in backward.
    """

    @staticmethod
    # under CUDA autocast the inputs come in mixed dtypes, and the out= buffers need one:
    # the kernel runs in fp32 (the projections around it stay in low precision)
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, q, k, v, index, bias, dropout):  # type: ignore[override]
        rows, b, d = q.shape
        kk = index.shape[1]
        chunk = _chunk_rows(rows, b * kk * b)
        out = q.new_empty(rows, b, d)
        probs = []  # one tensor per chunk: small allocations the allocator reuses
        keep = torch.empty(rows, b, kk * b, dtype=torch.bool, device=q.device) if dropout else None
        kg = q.new_empty(min(chunk, rows), kk * b, d)
        vg = torch.empty_like(kg)
        scores = q.new_empty(min(chunk, rows), b, kk * b)
        for s in range(0, rows, chunk):
            e = min(s + chunk, rows)
            c, idx = e - s, index[s:e].reshape(-1)
            torch.index_select(k, 0, idx, out=kg[:c].view(c * kk, b * d))
            torch.index_select(v, 0, idx, out=vg[:c].view(c * kk, b * d))
            torch.matmul(q[s:e], kg[:c].transpose(1, 2), out=scores[:c])
            scores[:c] += bias(s, e)
            p = torch.softmax(scores[:c], -1)
            probs.append(p)
            if keep is not None:
                torch.ge(torch.rand(p.shape, out=scores[:c]), dropout, out=keep[s:e])
                p = torch.mul(p, keep[s:e], out=scores[:c]).div_(1.0 - dropout)
            torch.matmul(p, vg[:c], out=out[s:e])
        ctx.save_for_backward(q, k, v, index, out, keep, *probs)
        ctx.dropout = dropout
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, index, out, keep, *probs = ctx.saved_tensors
        dropout = ctx.dropout
        rows, b, d = q.shape
        kk = index.shape[1]
        chunk = _chunk_rows(rows, b * kk * b)
        dout = dout.contiguous()
        # Softmax backward needs sum_j P_ij dP_ij, which equals dout_i . out_i.
        delta = (dout * out).sum(-1, keepdim=True)
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        kg = q.new_empty(min(chunk, rows), kk * b, d)
        dkv = torch.empty_like(kg)
        dp = q.new_empty(min(chunk, rows), b, kk * b)
        pd = torch.empty_like(dp) if keep is not None else None
        for s, p in zip(range(0, rows, chunk), probs, strict=True):
            e = min(s + chunk, rows)
            c, idx = e - s, index[s:e].reshape(-1)
            lo, hi = (int(t) for t in idx.aminmax())
            hi += 1
            # the (dropped-out) probabilities the forward multiplied by v
            pdrop = p if pd is None else torch.mul(p, keep[s:e], out=pd[:c]).div_(1 - dropout)
            torch.matmul(pdrop.transpose(1, 2), dout[s:e], out=dkv[:c])
            _accumulate(dv, idx, dkv[:c].view(c * kk, b * d), lo, hi)
            torch.index_select(v, 0, idx, out=kg[:c].view(c * kk, b * d))
            torch.matmul(dout[s:e], kg[:c].transpose(1, 2), out=dp[:c])
            if keep is not None:
                dp[:c].mul_(keep[s:e]).div_(1.0 - dropout)
            dp[:c].sub_(delta[s:e]).mul_(p)  # now d scores
            torch.index_select(k, 0, idx, out=kg[:c].view(c * kk, b * d))
            torch.matmul(dp[:c], kg[:c], out=dq[s:e])
            torch.matmul(dp[:c].transpose(1, 2), q[s:e], out=dkv[:c])
            _accumulate(dk, idx, dkv[:c].view(c * kk, b * d), lo, hi)
        return dq, dk, dv, None, None, None
