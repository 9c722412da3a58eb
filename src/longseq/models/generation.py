"""Text generation for `ForCausalLM`: sampling, stop conditions, streaming, and a cache.

Decoding. At each step the model gives next-token logits z (B, V) at the last position of each
sequence; the next token is argmax z (greedy) or a sample from softmax(z' ) where
z' = z / temperature, then restricted to the k largest (top-k), then to the smallest set of
most likely tokens whose probability mass reaches p (top-p, nucleus); everything else gets
-inf. A sequence stops at `max_new_tokens`, at `eos_token_id`, when its generated text
contains a stop string, or at the model's position limit (then `finish_reason` says which).

Incremental decoding goes through the model's own forward: `model.new_cache(batch)` gives
each attention layer its own cache (the layer class says how it caches, see
`longseq.attention.cache`), the prompt is fed in chunks and each new token after it, and the
logits equal the full forward over the whole sequence at every step. This module holds no copy
of any model logic and never looks at a mechanism's name. `cache_kind(model)` says what the
layers keep: "kv" (every position: full attention, BigBird), "ring" (a fixed window: causal
Longformer, local attention: constant memory), "lsh" (every position with its buckets).

Positions. Learned and axial tables end at `max_length`, and a layer that keeps every
position was trained on at most `max_length` tokens: generation stops there
(`finish_reason == "max_length"`). A model whose every layer keeps a ring (a fixed window),
with rotary (or no) positions, has no limit.

Memory. Nothing is reserved for `max_new_tokens` up front: the token buffer and growing
caches double as they fill, so a huge `max_new_tokens` costs only what is generated.

Batches. Prompts of different lengths come with an `attention_mask` (left or right padding);
each row is decoded at its own positions, exactly as if it were alone.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import Tensor, nn

# The model's type from its base class: heads imports this module (ForCausalLM.generate), so
# this module does not import heads.
from longseq.models.base import LongseqModel
from longseq.models.transformer import DecodingCache

FINISH_REASONS = ("max_new_tokens", "eos", "stop_string", "max_length")
# Prompt tokens per prefill chunk: bounds the (chunk x keys) score tensor of full attention.
PREFILL_CHUNK = 256

# ------------------------------------------------------------------------------ cache plan


def cache_kind(model: nn.Module) -> str:
    """What the layers of this causal model keep when decoding: their cache kinds joined by
    "+", in layer order ("kv", "ring", "lsh"; e.g. "kv+ring" for a mixed model). Raises
    ValueError, with the reason, when some layer has no exact incremental form."""
    kinds: list[str] = []
    for c in model.body.new_cache(1).layers:
        if c.kind not in kinds:
            kinds.append(c.kind)
    return "+".join(kinds)


def position_limit(model: nn.Module, use_cache: bool = True) -> int | None:
    """Longest sequence (prompt + generated) this model can decode; None: unbounded."""
    return model.body.new_cache(1).limit if use_cache else model.config.max_length


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


# ------------------------------------------------------------------------------ runners


class _Cached:
    """Decoding through the model's forward with a `DecodingCache` (see the module docstring)."""

    def __init__(self, model: LongseqModel, batch: int) -> None:
        self.model = model
        self.cache: DecodingCache = model.body.new_cache(batch)

    @torch.no_grad()
    def prefill(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """(B, V) logits at each row's last prompt token; prompts right-padded (B, N)."""
        b, n = ids.shape
        last = lengths - 1
        out: Tensor | None = None
        for s in range(0, n, PREFILL_CHUNK):
            chunk = ids[:, s : s + PREFILL_CHUNK]
            c = chunk.shape[1]
            cols = torch.arange(s, s + c, device=ids.device)
            valid = cols[None] < lengths[:, None]
            here = (last >= s) & (last < s + c)
            # one position's logits per row, its last prompt token where this chunk holds it
            # (the (hidden x vocab) output layer over every prompt token would be a large
            # part of the prefill's work)
            at = (last - s).clamp(0, c - 1)[:, None]
            mask = None if bool(valid.all()) else valid.long()  # None: no per-layer masking
            logits = self.model(chunk, attention_mask=mask, cache=self.cache, logits_at=at)
            logits = logits.logits[:, 0]
            if out is None:
                out = logits.new_zeros(b, logits.shape[-1])
            out[here] = logits[here]
        assert out is not None
        return out

    @torch.no_grad()
    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        """(B, V) logits after appending one token to each active row."""
        mask = None if bool(active.all()) else active[:, None].long()
        return self.model(tokens[:, None], attention_mask=mask, cache=self.cache).logits[:, 0]


class _FullForward:
    """The reference (use_cache=False): the model's forward over every row's whole sequence
    at each step; also the way to decode layers that are not prefix-stable (Hugging Face
    parity modes), whose outputs change as tokens are added."""

    def __init__(self, model: LongseqModel, tokens: _Tokens) -> None:
        self.model = model
        self.tokens = tokens

    @torch.no_grad()
    def _run(self) -> Tensor:
        lengths = self.tokens.lengths
        n = int(lengths.max())
        ids = self.tokens.buf[:, :n]
        mask = torch.arange(n, device=ids.device)[None] < lengths[:, None]
        logits = self.model(ids, attention_mask=None if bool(mask.all()) else mask.long()).logits
        return logits[torch.arange(ids.shape[0], device=ids.device), lengths - 1]

    def prefill(self, ids: Tensor, lengths: Tensor) -> Tensor:
        return self._run()

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        return self._run()


class _Tokens:
    """Each row's tokens so far, right-padded, in a buffer that doubles as it fills."""

    def __init__(self, ids: Tensor, lengths: Tensor, pad: int) -> None:
        self.buf, self.lengths, self.pad = ids.clone(), lengths.clone(), pad

    def append(self, tokens: Tensor, active: Tensor) -> None:
        b = self.buf.shape[0]
        if int(self.lengths.max()) + 1 > self.buf.shape[1]:
            grown = self.buf.new_full((b, 2 * self.buf.shape[1]), self.pad)
            grown[:, : self.buf.shape[1]] = self.buf
            self.buf = grown
        rows = torch.arange(b, device=self.buf.device)[active]
        self.buf[rows, self.lengths[active]] = tokens[active]
        self.lengths = self.lengths + active.long()


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
    model: LongseqModel,
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
    use_cache=False runs the full forward at every step (the reference for the cache, and the
    way to decode a layer that is not prefix-stable, e.g. Hugging Face's wrapped LSH rounds).
    The model runs in eval mode (its mode is restored afterwards).
    """
    cfg = model.config
    stops = _check_arguments(model, max_new_tokens, stop_strings, tokenizer)
    _check_sampling(do_sample, temperature, top_k, top_p)
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = getattr(tokenizer, "eos_id", None)

    device = next(model.parameters()).device
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    ids, lengths = _prompts(input_ids.to(device), attention_mask, cfg.vocab_size)
    ids = ids[:, : int(lengths.max())]  # no column of padding only
    kind = cache_kind(model) if use_cache else "none"  # a layer without a cache says why
    limit = position_limit(model, use_cache)
    if limit is not None and ids.shape[1] > limit:
        raise ValueError(
            f"prompt of {ids.shape[1]} tokens exceeds this model's max_length={limit} "
            f"(position {cfg.position!r}); truncate the prompt"
        )
    tokens = _Tokens(ids, lengths, cfg.pad_token_id)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    def choose(logits: Tensor) -> Tensor:
        return sample_next(
            logits,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )

    was_training = model.training
    model.eval()
    try:
        runner = _Cached(model, ids.shape[0]) if use_cache else _FullForward(model, tokens)
        rules = _StopRules(ids.shape[0], eos_token_id, stops, tokenizer, limit)
        reasons, all_logits = _decode(
            runner, tokens, rules, choose, max_new_tokens, streamer, output_logits
        )
    finally:
        model.train(was_training)
    out_len = int(tokens.lengths.max())
    return GenerationOutput(
        sequences=tokens.buf[:, :out_len],
        prompt_lengths=lengths,
        lengths=tokens.lengths,
        finish_reasons=reasons,
        cache=kind,
        logits=all_logits if output_logits else None,
    )


def _check_arguments(
    model: nn.Module, max_new_tokens: int, stop_strings: Any, tokenizer: Any
) -> list[str]:
    """Validate generate's model and limits; the stop strings as a list."""
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
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
    if stops and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (to decode the text): pass tokenizer=")
    return stops


def _decode(
    runner: _Cached | _FullForward,
    tokens: _Tokens,
    rules: _StopRules,
    choose: Callable[[Tensor], Tensor],
    max_new_tokens: int,
    streamer: Callable[[Tensor], None] | None,
    output_logits: bool,
) -> tuple[list[str], list[Tensor]]:
    """The decoding loop: prefill, then choose, append, stream, check the stops, step. Returns
    each row's finish reason and (with output_logits) every step's logits."""
    b, device = tokens.buf.shape[0], tokens.buf.device
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    reasons: list[str | None] = [None] * b
    if rules.limit is not None:
        for r in (tokens.lengths >= rules.limit).nonzero().flatten().tolist():
            finished[r], reasons[r] = True, "max_length"
    logits = runner.prefill(tokens.buf, tokens.lengths)
    all_logits: list[Tensor] = []
    for step in range(max_new_tokens):
        if bool(finished.all()):
            break
        if output_logits:
            all_logits.append(logits.clone())
        active = ~finished
        nxt = torch.where(active, choose(logits), tokens.pad)
        tokens.append(nxt, active)
        if streamer is not None:
            streamer(nxt)
        for r in active.nonzero().flatten().tolist():
            reason = rules.check(r, int(nxt[r]), int(tokens.lengths[r]))
            if reason is None and step == max_new_tokens - 1:
                reason = "max_new_tokens"
            if reason is not None:
                finished[r], reasons[r] = True, reason
        if step < max_new_tokens - 1 and not bool(finished.all()):
            logits = runner.step(nxt, ~finished)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return [r or "max_new_tokens" for r in reasons], all_logits


__all__ = [
    "FINISH_REASONS",
    "GenerationOutput",
    "IncrementalText",
    "TextStreamer",
    "cache_kind",
    "filter_logits",
    "generate",
    "position_limit",
    "sample_next",
]
