"""Text generation for `ForCausalLM`: sampling, stop conditions, streaming, and a cache.

Decoding. At each step the model gives next-token logits z (B, V) at the last position of each
sequence; the next token is argmax z (greedy) or a sample from softmax(z' ) where
z' = z / temperature, then restricted to the k largest (top-k), then to the smallest set of
most likely tokens whose probability mass reaches p (top-p, nucleus); everything else gets
-inf. A sequence stops at `max_new_tokens`, at `eos_token_id`, when its generated text
contains a stop string, or at the model's position limit (then `finish_reason` says which).

Incremental decoding. A causal layer's output at position t depends only on the keys and
values of the positions it looks at, k_j = Wk LN(x_j), v_j = Wv LN(x_j), which never change
once computed. So the decoder steps each block itself, with the layer's own modules (norm,
query/key/value/out projections, the model's rotary embedding at the token's position,
feed-forward), and keeps per layer a cache of keys and values:

- full attention: every position so far (a key/value cache); a new token costs O(t) per layer.
- causal Longformer: query t sees t - d*j for 0 <= j <= w/2 (dilation d per head), so only the
  last max(d)*w/2 + 1 positions can ever be seen again: a ROLLING buffer of that many slots,
  slot = position mod size. Constant memory, O(w) per token however long the generation runs.

Both are one structure: slots with the position each holds (-1: empty), and a query at
position t may see slot s iff 0 <= t - pos(s) <= reach_h and (t - pos(s)) % d_h == 0.
Mechanisms without an exact incremental form recompute the whole forward at every step:
causal BigBird (prefix-stable, but its block cache is not built yet) and causal LSH (bucket
sorting and chunk boundaries are over the whole sequence). `cache_kind(model)` says which
path a model takes.

Positions. Learned and axial tables end at `max_length`, and full attention was trained on at
most `max_length` tokens: generation stops there (`finish_reason == "max_length"`). A model
whose every layer is a rolling Longformer cache with rotary (or no) positions has no limit.

Batches. Prompts of different lengths come with an `attention_mask` (left or right padding);
each row is decoded at its own positions, exactly as if it were alone.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.attention import ops
from longseq.layers.positions import (
    AxialPositions,
    LearnedPositions,
    RotaryEmbedding,
    apply_rotary,
)

if TYPE_CHECKING:
    from longseq.models.heads import ForCausalLM

FINISH_REASONS = ("max_new_tokens", "eos", "stop_string", "max_length")
# Prompt tokens per prefill chunk: bounds the (chunk x keys) score tensor of full attention.
PREFILL_CHUNK = 256

# ------------------------------------------------------------------------------ cache plan

_RECOMPUTE_REASONS = {
    "bigbird": "causal BigBird is prefix-stable, but its incremental block cache is not built yet",
    "lsh": "LSH sorts the whole sequence into hash buckets and chunks, whose boundaries move as "
    "tokens are added: no exact incremental form",
}


def layer_plan(model: nn.Module) -> list[tuple[str, str | None]]:
    """Per layer: ("kv" | "rolling" | "recompute", reason for recomputing or None)."""
    plan: list[tuple[str, str | None]] = []
    for block in model.body.layers:
        att = block.attn.attention
        if att.rotary is not None and not isinstance(att.rotary, RotaryEmbedding):
            plan.append(("recompute", f"unknown position transform {type(att.rotary).__name__}"))
        elif att.name == "full":
            plan.append(("kv", None))
        elif att.name == "longformer" and att.causal:
            plan.append(("rolling", None))
        else:
            reason = _RECOMPUTE_REASONS.get(att.name, f"no incremental form for {att.name!r}")
            plan.append(("recompute", reason))
    return plan


def cache_kind(model: nn.Module) -> str:
    """How `generate` decodes this model: "kv" (key/value cache, every layer full attention),
    "rolling" (every layer causal Longformer: constant memory), "kv+rolling" (a mix), or
    "recompute" (some layer has no exact incremental form: full forward at every step)."""
    kinds = {k for k, _ in layer_plan(model)}
    if "recompute" in kinds:
        return "recompute"
    return "+".join(k for k in ("kv", "rolling") if k in kinds)


def recompute_reason(model: nn.Module) -> str | None:
    """Why `cache_kind(model) == "recompute"` (the first such layer), else None."""
    for i, (kind, reason) in enumerate(layer_plan(model)):
        if kind == "recompute":
            return f"layer {i}: {reason}"
    return None


def position_limit(model: nn.Module, use_cache: bool = True) -> int | None:
    """Longest sequence (prompt + generated) this model can decode; None: unbounded."""
    cfg = model.config
    if use_cache and cache_kind(model) == "rolling" and cfg.position in ("rotary", "none"):
        return None
    return cfg.max_length


# ------------------------------------------------------------------------------ sampling


def filter_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """(B, V) logits / temperature, with -inf outside the top-k and then the top-p set.

    top-p keeps, in order of decreasing probability, every token whose preceding mass is
    < p (so the most likely token always stays). Ties at the k-th value are all kept.
    """
    z = logits.float() / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_z, order = z.sort(dim=-1, descending=True)
        probs = sorted_z.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, -math.inf)
    return z


def sample_next(
    logits: Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, V) logits -> (B,) next tokens: argmax, or a sample from the filtered softmax."""
    if not do_sample:
        return logits.argmax(-1)
    z = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(-1)


def _check_sampling(
    do_sample: bool, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if not do_sample:
        given = [
            name
            for name, v, default in (
                ("temperature", temperature, 1.0),
                ("top_k", top_k, None),
                ("top_p", top_p, None),
            )
            if v != default
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} given but do_sample=False (greedy decoding ignores them); "
                "pass do_sample=True"
            )
        return
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 (or None), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p}")


# ------------------------------------------------------------------------------ text


class IncrementalText:
    """Decodes a growing token list into text deltas, holding back incomplete characters.

    Decoding token by token breaks multi-byte characters (and tokenizers that merge spaces),
    so each push decodes the tokens since the last stable point and emits the new suffix
    only when it does not end in U+FFFD (a character still being completed).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix = 0  # tokens[prefix:read] decode to text already emitted
        self.read = 0

    def push(self, token: int) -> str:
        self.tokens.append(int(token))
        return self._delta(final=False)

    def flush(self) -> str:
        """What is held back (an incomplete character at the end, decoded as U+FFFD)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        done = self.tokenizer.decode(self.tokens[self.prefix : self.read])
        text = self.tokenizer.decode(self.tokens[self.prefix :])
        if len(text) > len(done) and (final or not text.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.tokens)
            return text[len(done) :]
        return ""


class TextStreamer:
    """A `streamer` for `generate` that writes the new text of a single sequence as it comes."""

    def __init__(self, tokenizer: Any, file: TextIO | None = None) -> None:
        self.text = IncrementalText(tokenizer)
        self.file = file

    def __call__(self, tokens: Tensor) -> None:
        if tokens.numel() != 1:
            raise ValueError(
                f"TextStreamer prints one sequence, got a batch of {tokens.numel()}; "
                "generate one prompt at a time or pass your own callback"
            )
        self._write(self.text.push(int(tokens.reshape(-1)[0])))

    def end(self) -> None:
        self._write(self.text.flush())

    def _write(self, s: str) -> None:
        if s:
            out = self.file if self.file is not None else sys.stdout
            out.write(s)
            out.flush()


# ------------------------------------------------------------------------------ cache


class LayerCache:
    """Keys and values of one attention layer: `size` slots, slot = position mod size.

    k, v: (B, H, size, D); pos: (B, size) the position each slot holds (-1: empty). A query at
    position t sees slot s iff 0 <= t - pos[s] <= reach[h] and (t - pos[s]) % dilation[h] == 0.
    `ring` is True when positions wrap around (size < the longest sequence).
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        size: int,
        ring: bool,
        reach: Sequence[int] | None,
        dilation: Sequence[int] | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.k = torch.zeros(batch, heads, size, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, size), -1, dtype=torch.long, device=device)
        self.size = size
        self.ring = ring
        self.hi = 0  # for a cache that never wraps: slots >= hi are still empty
        self.windowed = reach is not None
        if reach is not None and dilation is not None:
            self.reach = torch.tensor(reach, device=device)[None, :, None, None]
            self.dilation = torch.tensor(dilation, device=device)[None, :, None, None]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.k, self.v, self.pos

    def attend(self, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor, valid: Tensor) -> Tensor:
        """Context (B, H, C, D) of C new queries at positions qpos (B, C); their keys/values
        k, v (B, H, C, D) are stored where `valid`. Queries carry the 1/sqrt(D) scale."""
        kpos_new = qpos.masked_fill(~valid, -1)
        if self.ring and q.shape[2] > 1:
            # a chunk longer than the ring would overwrite keys its own queries still need:
            # attend over (ring + chunk), then store the chunk's last positions
            keys = torch.cat((self.k, k), 2)
            values = torch.cat((self.v, v), 2)
            kpos = torch.cat((self.pos, kpos_new), 1)
            self._store(k, v, qpos, valid)
        else:
            self._store(k, v, qpos, valid)
            n = self.size if self.ring else self.hi
            keys, values, kpos = self.k[:, :, :n], self.v[:, :, :n], self.pos[:, :n]
        diff = qpos[:, :, None] - kpos[:, None, :]  # (B, C, S)
        ok = ((kpos[:, None, :] >= 0) & (diff >= 0))[:, None]  # (B, 1, C, S)
        if self.windowed:
            d = diff[:, None]
            ok = ok & (d <= self.reach) & (d % self.dilation == 0)
        ok = ok | ~valid[:, None, :, None]  # padding queries: any finite row, never used
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=ok, scale=1.0)

    def _store(self, k: Tensor, v: Tensor, qpos: Tensor, valid: Tensor) -> None:
        b, c = qpos.shape
        if c == 1:  # one token per row; invalid rows rewrite the slot with its old content
            rows = torch.arange(b, device=qpos.device)
            slot = qpos[:, 0] % self.size
            ok = valid[:, 0]
            keep = ok[:, None, None]
            self.k[rows, :, slot] = torch.where(keep, k[:, :, 0], self.k[rows, :, slot])
            self.v[rows, :, slot] = torch.where(keep, v[:, :, 0], self.v[rows, :, slot])
            self.pos[rows, slot] = torch.where(ok, qpos[:, 0], self.pos[rows, slot])
        else:  # a prompt chunk: per row, its valid positions that fit (distinct slots)
            last = qpos.masked_fill(~valid, -1).amax(1, keepdim=True)
            bi, ci = (valid & (qpos > last - self.size)).nonzero(as_tuple=True)
            slot = qpos[bi, ci] % self.size
            self.k[bi, :, slot] = k[bi, :, ci]
            self.v[bi, :, slot] = v[bi, :, ci]
            self.pos[bi, slot] = qpos[bi, ci]
        if not self.ring:
            self.hi = min(self.size, max(self.hi, int(qpos.max()) + 1))


class CachedDecoder:
    """Steps a `ForCausalLM` token by token with per-layer caches (see the module docstring).

        dec = CachedDecoder(model, batch=2, capacity=n_max)
        logits = dec.prefill(ids, lengths)     # (B, V) at each row's last prompt token
        logits = dec.step(next_tokens)         # (B, V) after appending one token per row

    `capacity` is the longest sequence (prompt + generated) any row will reach: the size of
    full-attention caches. Rolling caches hold max(dilation) * window/2 + 1 slots whatever it is.
    Put the model in eval mode first (`generate` does): the steps apply no attention dropout.
    """

    def __init__(
        self,
        model: ForCausalLM,
        batch: int,
        capacity: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        reason = recompute_reason(model)
        if reason is not None:
            raise ValueError(f"this model cannot be decoded with a cache ({reason})")
        self.model = model
        self.config = model.config
        first = next(model.parameters())
        device = device or first.device
        dtype = dtype or first.dtype
        self.caches: list[LayerCache] = []
        for block, (kind, _) in zip(model.body.layers, layer_plan(model), strict=True):
            att = block.attn.attention
            reach = dil = None
            size = capacity
            if kind == "rolling":
                half = att.window // 2
                dil = att.dilations
                reach = [d * half for d in dil]
                size = min(max(reach) + 1, capacity)
            self.caches.append(
                LayerCache(
                    batch,
                    att.num_heads,
                    att.head_dim,
                    size,
                    size < capacity,
                    reach,
                    dil,
                    device=device,
                    dtype=dtype,
                )
            )
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self._axial: Tensor | None = None
        self._rotary: dict[int, tuple[Tensor, Tensor]] = {}  # per forward: cos, sin

    # ---------------------------------------------------------------- public steps
    @torch.no_grad()
    def prefill(self, input_ids: Tensor, lengths: Tensor, chunk: int = PREFILL_CHUNK) -> Tensor:
        """Run right-padded prompts (B, N) of `lengths` (B,) through the model in chunks of
        `chunk` tokens, filling the caches; returns the logits at each row's last token."""
        b, n = input_ids.shape
        lengths = lengths.to(self.lengths.device)
        last: Tensor | None = None
        for s in range(0, n, chunk):
            ids = input_ids[:, s : s + chunk]
            qpos = s + torch.arange(ids.shape[1], device=ids.device).expand(b, -1)
            valid = qpos < lengths[:, None]
            h = self._forward(ids, qpos, valid)
            here = (lengths - 1 >= s) & (lengths - 1 < s + ids.shape[1])
            idx = (lengths - 1 - s).clamp(0, ids.shape[1] - 1)
            picked = h[torch.arange(b, device=h.device), idx]
            last = picked if last is None else torch.where(here[:, None], picked, last)
        assert last is not None
        self.lengths = lengths.clone()
        return self._logits(last)

    @torch.no_grad()
    def step(self, tokens: Tensor, active: Tensor | None = None) -> Tensor:
        """Append one token per row (B,) and return the next logits (B, V). Rows with
        active=False (finished) neither advance nor store anything."""
        b = tokens.shape[0]
        if active is None:
            active = torch.ones(b, dtype=torch.bool, device=tokens.device)
        qpos = torch.where(active, self.lengths, 0)[:, None]
        h = self._forward(tokens[:, None], qpos, active[:, None])
        self.lengths = self.lengths + active.long()
        return self._logits(h[:, 0])

    # ---------------------------------------------------------------- the model, stepped
    def _logits(self, h: Tensor) -> Tensor:
        body = self.model.body
        if body.final_norm is not None:
            h = body.final_norm(h)
        return self.model.lm_head(h)

    def _embed(self, ids: Tensor, pos: Tensor) -> Tensor:
        emb = self.model.body.embeddings
        x = emb.word(ids)
        if isinstance(emb.position, LearnedPositions):
            x = x + emb.position.weight[pos + self.config.position_offset].to(x.dtype)
        elif isinstance(emb.position, AxialPositions):
            if self._axial is None:
                self._axial = emb.position.table()
            x = x + self._axial[pos].to(x.dtype)
        if emb.token_type is not None:  # segment 0, as the model's forward without ids
            x = x + emb.token_type(torch.zeros_like(ids))
        if emb.norm is not None:
            x = emb.norm(x)
        return emb.dropout(x)

    def _attention(self, i: int, x: Tensor, qpos: Tensor, valid: Tensor) -> Tensor:
        """The attention branch F of block i for the new positions (B, C, hidden)."""
        sub = self.model.body.layers[i].attn
        att = sub.attention
        a = sub.norm(x) if sub.pre else x
        h = att.num_heads
        q = ops.split_heads(att.query(a), h) * att.head_dim**-0.5
        k = ops.split_heads(att.key(a), h)
        v = ops.split_heads(att.value(a), h)
        if att.rotary is not None:
            cos, sin = self._rotary_tables(att.rotary, qpos, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        ctx = self.caches[i].attend(q, k, v, qpos, valid)
        return sub.dropout(att.out(ops.merge_heads(ctx)))

    def _rotary_tables(
        self, rotary: RotaryEmbedding, qpos: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """cos, sin (B, 1, C, D) at positions qpos, computed once per forward (layers share
        the model's rotary embedding)."""
        if id(rotary) not in self._rotary:
            lo = int(qpos.min())
            cos, sin = rotary.cos_sin(int(qpos.max()) - lo + 1, lo, device=qpos.device, dtype=dtype)
            self._rotary[id(rotary)] = (cos[qpos - lo][:, None], sin[qpos - lo][:, None])
        return self._rotary[id(rotary)]

    def _forward(self, ids: Tensor, qpos: Tensor, valid: Tensor) -> Tensor:
        """Hidden states (B, C, width) of C new tokens per row, before the final norm."""
        cfg = self.config
        self._rotary = {}
        layers = self.model.body.layers
        x = self._embed(ids, qpos)
        if cfg.reversible:  # y1 = x1 + F(x2), y2 = x2 + G(y1), then merge the streams
            x1 = x2 = x
            for i, block in enumerate(layers):
                x1 = x1 + self._attention(i, x2, qpos, valid)
                x2 = x2 + block.ff(x1)
            return torch.cat((x1, x2), -1) if cfg.reversible_output == "concat" else (x1 + x2) / 2
        for i, block in enumerate(layers):
            if block.pre:
                x = x + self._attention(i, x, qpos, valid)
                x = x + block.ff(x)
            else:
                x = block.attn.norm(x + self._attention(i, x, qpos, valid))
                x = block.ff.norm(x + block.ff(x))
        return x


class _Recompute:
    """The fallback: the model's full forward over every row's whole sequence at each step."""

    def __init__(self, model: ForCausalLM, sequences: Tensor) -> None:
        self.model = model
        self.sequences = sequences  # (B, capacity), shared with `generate`, written there
        self.lengths = torch.zeros(sequences.shape[0], dtype=torch.long)

    @torch.no_grad()
    def _run(self) -> Tensor:
        n = int(self.lengths.max())
        ids = self.sequences[:, :n]
        lengths = self.lengths.to(ids.device)
        mask = torch.arange(n, device=ids.device)[None] < lengths[:, None]
        logits = self.model(ids, attention_mask=None if bool(mask.all()) else mask.long()).logits
        return logits[torch.arange(ids.shape[0], device=ids.device), lengths - 1]

    def prefill(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        self.lengths = lengths.clone()
        return self._run()

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        self.lengths = self.lengths + active.to(self.lengths.device).long()
        return self._run()


# ------------------------------------------------------------------------------ generate


@dataclass
class GenerationOutput:
    """sequences: (B, T) each row's prompt then its new tokens, right-padded with the model's
    pad_token_id; lengths and prompt_lengths: (B,); finish_reasons: one of FINISH_REASONS per
    row; logits: the raw next-token logits (B, V) of every step when output_logits=True."""

    sequences: Tensor
    prompt_lengths: Tensor
    lengths: Tensor
    finish_reasons: list[str]
    cache: str
    logits: list[Tensor] | None = field(default=None, repr=False)

    def new_tokens(self, row: int = 0) -> Tensor:
        return self.sequences[row, int(self.prompt_lengths[row]) : int(self.lengths[row])]


class _StopRules:
    """The end conditions of each row, checked after each new token (max_new_tokens aside)."""

    def __init__(
        self, batch: int, eos: int | None, stops: list[str], tokenizer: Any, limit: int | None
    ) -> None:
        self.eos, self.stops, self.limit = eos, stops, limit
        self.texts = [IncrementalText(tokenizer) for _ in range(batch)] if stops else []
        self.generated = [""] * batch
        self.longest = max((len(s) for s in stops), default=0)

    def check(self, row: int, token: int, length: int) -> str | None:
        if self.eos is not None and token == self.eos:
            return "eos"
        if self.stops:
            delta = self.texts[row].push(token)
            self.generated[row] += delta
            # only a stop string that ends in the new text can be new
            tail = self.generated[row][-(len(delta) + self.longest - 1) :] if delta else ""
            if any(s in tail for s in self.stops):
                return "stop_string"
        if self.limit is not None and length >= self.limit:
            return "max_length"
        return None


def _prompts(input_ids: Tensor, attention_mask: Tensor | None, vocab: int) -> tuple[Tensor, Tensor]:
    """Validated prompts as (right-padded ids (B, N), lengths (B,)); left padding is moved."""
    if not isinstance(input_ids, Tensor):
        raise ValueError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(
            f"input_ids must be (batch, seq) with seq >= 1, got {tuple(input_ids.shape)}"
        )
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    ids = input_ids.long()
    b, n = ids.shape
    if attention_mask is None:
        lengths = torch.full((b,), n, dtype=torch.long, device=ids.device)
    else:
        if tuple(attention_mask.shape) != (b, n):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {(b, n)}"
            )
        real = attention_mask.bool()
        lengths = real.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("a prompt has no real tokens (its attention_mask row is all 0)")
        ar = torch.arange(n, device=ids.device)
        right = real == (ar[None] < lengths[:, None])
        left = real == (ar[None] >= (n - lengths)[:, None])
        if not bool((right.all(1) | left.all(1)).all()):
            raise ValueError(
                "attention_mask must pad each prompt on one side (1s then 0s, or 0s then 1s); "
                "it has padding between real tokens"
            )
        # stable sort puts each row's real tokens first, in order: right padding
        order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices
        ids = ids.gather(1, order).masked_fill(ar[None] >= lengths[:, None], 0)
    real_ids = ids[torch.arange(n, device=ids.device)[None] < lengths[:, None]]
    lo, hi = int(real_ids.min()), int(real_ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}) (vocab_size), got min {lo} max {hi}")
    return ids, lengths


def generate(
    model: ForCausalLM,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    stop_strings: str | Iterable[str] | None = None,
    tokenizer: Any = None,
    seed: int | None = None,
    streamer: Callable[[Tensor], None] | None = None,
    use_cache: bool = True,
    output_logits: bool = False,
) -> GenerationOutput:
    """Continue each prompt by up to `max_new_tokens` tokens (see the module docstring).

    input_ids (B, N) or (N,); attention_mask (B, N) for prompts of different lengths, padded
    on either side. Greedy unless do_sample=True (then temperature, top_k, top_p apply, drawn
    from a generator seeded by `seed` if given). A row stops at eos_token_id (default: the
    tokenizer's eos_id when a tokenizer is given), when its generated text contains one of
    `stop_strings` (needs `tokenizer`; the tokens that complete it are kept), or at the model's
    position limit. `streamer(tokens)` is called once per step with the (B,) new tokens
    (finished rows get pad_token_id); if it has `end()`, that is called at the end.
    use_cache=False recomputes the full forward at every step (the reference for the cache).
    The model runs in eval mode (its mode is restored afterwards).
    """
    cfg = model.config
    if cfg.architecture != "causal-lm" or not hasattr(model, "lm_head"):
        raise ValueError(
            f"generate needs a causal-lm model, got architecture {cfg.architecture!r}; load one "
            "saved with architecture='causal-lm'"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    _check_sampling(do_sample, temperature, top_k, top_p)
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    stops = list(stop_strings or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
    if stops and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (to decode the text): pass tokenizer=")
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = getattr(tokenizer, "eos_id", None)

    device = next(model.parameters()).device
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    ids, lengths = _prompts(input_ids.to(device), attention_mask, cfg.vocab_size)
    b = ids.shape[0]
    ids = ids[:, : int(lengths.max())]  # no column of padding only
    n = ids.shape[1]
    prompt_lengths = lengths.clone()
    use_cache = use_cache and cache_kind(model) != "recompute"
    limit = position_limit(model, use_cache)
    if limit is not None and n > limit:
        raise ValueError(
            f"prompt of {n} tokens exceeds this model's max_length={limit} "
            f"(position {cfg.position!r}, cache {cache_kind(model)!r}); truncate the prompt"
        )
    capacity = n + max_new_tokens if limit is None else min(limit, n + max_new_tokens)
    pad = cfg.pad_token_id
    sequences = torch.full((b, capacity), pad, dtype=torch.long, device=device)
    sequences[:, :n] = ids

    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    rules = _StopRules(b, eos_token_id, stops, tokenizer, limit)

    was_training = model.training
    model.eval()
    try:
        runner: CachedDecoder | _Recompute
        runner = CachedDecoder(model, b, capacity) if use_cache else _Recompute(model, sequences)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        reasons: list[str | None] = [None] * b
        if limit is not None:
            for r in (lengths >= limit).nonzero().flatten().tolist():
                finished[r], reasons[r] = True, "max_length"
        logits = runner.prefill(ids, lengths)
        all_logits: list[Tensor] = []
        rows = torch.arange(b, device=device)
        for step in range(max_new_tokens):
            if bool(finished.all()):
                break
            if output_logits:
                all_logits.append(logits.clone())
            active = ~finished
            nxt = sample_next(
                logits,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            nxt = torch.where(active, nxt, pad)
            sequences[rows[active], lengths[active]] = nxt[active]
            lengths = lengths + active.long()
            if streamer is not None:
                streamer(nxt)
            for r in active.nonzero().flatten().tolist():
                reason = rules.check(r, int(nxt[r]), int(lengths[r]))
                if reason is None and step == max_new_tokens - 1:
                    reason = "max_new_tokens"
                if reason is not None:
                    finished[r], reasons[r] = True, reason
            if step < max_new_tokens - 1 and not bool(finished.all()):
                logits = runner.step(nxt, ~finished)
        if streamer is not None and hasattr(streamer, "end"):
            streamer.end()
    finally:
        model.train(was_training)
    out_len = int(lengths.max())
    return GenerationOutput(
        sequences=sequences[:, :out_len],
        prompt_lengths=prompt_lengths,
        lengths=lengths,
        finish_reasons=[r or "max_new_tokens" for r in reasons],
        cache=cache_kind(model) if use_cache else "recompute",
        logits=all_logits if output_logits else None,
    )


__all__ = [
    "FINISH_REASONS",
    "CachedDecoder",
    "GenerationOutput",
    "IncrementalText",
    "LayerCache",
    "TextStreamer",
    "cache_kind",
    "filter_logits",
    "generate",
    "layer_plan",
    "position_limit",
    "recompute_reason",
    "sample_next",
]
