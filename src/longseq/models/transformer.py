"""The Transformer body every longseq model shares: embeddings, blocks, and the layer stack.

A block is two residual sub-layers, attention F and feed-forward G:

    pre-LN  (default):  x = x + F(LN(x));          x = x + G(LN(x))
    post-LN (BERT):     x = LN(x + F(x));          x = LN(x + G(x))

With `reversible=True` (pre-LN only) the stream is split in two, x1 = x2 = embeddings, and the
blocks run as RevNet steps y1 = x1 + F(LN(x2)), y2 = x2 + G(LN(y1)) whose activations are
recomputed in backward (`longseq.layers.ReversibleSequence`); the two streams are merged at the
end by their mean (width h) or concatenation (width 2h, as Reformer). `gradient_checkpointing`
instead recomputes each ordinary block in backward.

The attention mechanism of each layer comes from `ModelConfig.layer_spec(i)`; the body pads
nothing itself: each mechanism handles its own block multiples (see `longseq.attention`).

With a convolutional stem (`conv_layers`, `conv_pool`; `longseq.layers.stem`) the token
embeddings pass through the stem's convolutions, every `conv_pool` inputs become one position
of the blocks (masks pooled: a position is real if any of its inputs is), and the final states
come back to one per input. The hidden states a caller may ask for are the positions'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from longseq import attention
from longseq.attention.cache import AttentionCache
from longseq.attention.shard import Shard
from longseq.layers import (
    AxialPositions,
    ConvStem,
    FeedForward,
    LearnedPositions,
    ReversibleSequence,
    RotaryEmbedding,
    build_norm,
)
from longseq.models.config import ModelConfig


@dataclass
class ModelOutput:
    """What every model returns; fields a model does not compute stay None."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    start_logits: Tensor | None = None
    end_logits: Tensor | None = None


def norm_of(config: ModelConfig, width: int) -> nn.Module:
    """The config's normalisation (`norm_type`: LayerNorm or RMSNorm) over `width` features."""
    return build_norm(config.norm_type, width, config.layer_norm_eps)


class Embeddings(nn.Module):
    """token (+ learned/axial position) (+ segment) embeddings, optional LayerNorm, dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position: nn.Module | None = None
        if config.position == "learned":
            self.position = LearnedPositions(config.positions_length + config.position_offset, h)
        elif config.position == "axial":
            assert config.axial_shape and config.axial_dims
            self.position = AxialPositions(
                tuple(config.axial_shape), tuple(config.axial_dims), hidden=h
            )
        self.token_type = (
            nn.Embedding(config.type_vocab_size, h) if config.type_vocab_size else None
        )
        self.norm = norm_of(config, h) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """`positions` (batch, seq): each token's position (default 0 .. seq - 1)."""
        return self.finish(self.word(input_ids), token_type_ids, positions)

    def finish(
        self, x: Tensor, token_type_ids: Tensor | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Token vectors x (batch, seq, h) -> embeddings: positions, segments, norm, dropout."""
        if isinstance(self.position, LearnedPositions):
            x = self.position(x, offset=self.config.position_offset, positions=positions)
        elif self.position is not None:
            x = self.position(x, positions=positions)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = x.new_zeros(x.shape[:2], dtype=torch.long)
            x = x + self.token_type(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the model has no segment embeddings")
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class AttentionSublayer(nn.Module):
    """F: [LN ->] attention -> dropout. Returns the residual branch only."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        name, opts = config.layer_spec(layer)
        at = attention.At(config.positions_length, layer=layer, causal=config.causal)
        opts = attention.get(name).options_at(at, opts)
        if config.grouped:  # only then: a mechanism without GQA keeps its signature
            opts = {**opts, "num_key_value_heads": config.kv_heads}
        if config.global_tokens and "global_tokens" in attention.options(name):
            opts = {**opts, "global_tokens": config.global_tokens}
        self.attention = attention.build(
            name,
            config.hidden_size,
            config.num_heads,
            causal=config.causal,
            dropout=config.attention_dropout,
            bias=config.bias,
            **opts,
        )
        self.norm = norm_of(config, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.pre = config.norm == "pre"

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        cache: AttentionCache | None = None,
        positions: Tensor | None = None,
        shard: Shard | None = None,
    ) -> Tensor:
        if not self.attention.supports_global:
            # In a model that mixes mechanisms, only layers with global tokens use the mask.
            global_attention_mask = None
        extra: dict[str, Any] = {}
        if cache is not None:
            extra = {"cache": cache, "positions": positions}
        elif shard is not None:
            extra = {"shard": shard}
        y = self.attention(
            self.norm(x) if self.pre else x, attention_mask, global_attention_mask, **extra
        )
        return self.dropout(y)


class FeedForwardSublayer(nn.Module):
    """G: [LN ->] feed-forward (dropout inside), chunked along the sequence if configured."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.feed_forward = FeedForward(
            config.hidden_size,
            config.intermediate_size,
            config.activation,
            config.dropout,
            chunk_size=config.feed_forward_chunk_size,
            bias=config.feed_forward_bias,
            gated=config.feed_forward == "gated",
        )
        self.norm = norm_of(config, config.hidden_size)
        self.pre = config.norm == "pre"

    def forward(self, x: Tensor) -> Tensor:
        return self.feed_forward(self.norm(x) if self.pre else x)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn = AttentionSublayer(config, layer)
        self.ff = FeedForwardSublayer(config)
        self.pre = config.norm == "pre"

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        cache: AttentionCache | None = None,
        positions: Tensor | None = None,
        shard: Shard | None = None,
    ) -> Tensor:
        a = self.attn(x, attention_mask, global_attention_mask, cache, positions, shard)
        if self.pre:
            x = x + a
            return x + self.ff(x)
        x = self.attn.norm(x + a)
        return self.ff.norm(x + self.ff(x))


class Transformer(nn.Module):
    """input_ids -> final hidden states (batch, seq, config.output_size)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.stem = (
            ConvStem(
                config.hidden_size,
                config.conv_layers,
                config.conv_kernel,
                config.conv_pool,
                config.output_size,
                config.conv_dilation,
            )
            if config.stem
            else None
        )
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.final_norm = norm_of(config, config.output_size) if config.norm == "pre" else None
        if config.position == "rotary":
            rotary = RotaryEmbedding(config.head_dim, config.rotary_base)
            for block in self.layers:
                block.attn.attention.rotary = rotary
        # Kept out of the module tree (a plain list) so parameter names do not depend on
        # `reversible`: it runs the same F and G modules that `layers` owns.
        self._reversible = (
            [ReversibleSequence([(b.attn, b.ff) for b in self.layers])] if config.reversible else []
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        cache: DecodingCache | None = None,
        shard: Shard | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Final hidden states (and, on request, every layer's input and the last output).

        With `cache` (causal models, see `new_cache`), input_ids are each row's NEXT tokens
        after what the cache holds, right-padded: `attention_mask` marks those that exist.
        With `shard` (sequence parallelism, `attention/shard.py`), input_ids are this rank's
        positions shard.start .. of every sequence; the hidden states are theirs."""
        positions = None if cache is None else cache.positions(input_ids, attention_mask)
        if shard is not None:
            b, n = input_ids.shape
            positions = (shard.start + torch.arange(n, device=input_ids.device)).expand(b, n)
        n, skip, stem_mask, per_input = input_ids.shape[1], None, None, attention_mask
        if self.stem is None:
            x = self.embeddings(input_ids, token_type_ids, positions)
        else:
            if shard is not None:
                raise ValueError("a model with a convolutional stem cannot be split by positions")
            x, stem_mask, skip = self.stem(self.embeddings.word(input_ids), attention_mask)
            x = self.embeddings.finish(x, token_type_ids)
            attention_mask = self.stem.pool_mask(stem_mask)
            global_attention_mask = self.stem.pool_mask(global_attention_mask)
        states: list[Tensor] = [x]
        if cache is not None:
            x = self._cached(x, attention_mask, cache, positions, states)
        elif self._reversible:
            # ReversibleSequence passes keyword arguments to every F.
            kwargs: dict[str, Any] = {"attention_mask": attention_mask}
            if global_attention_mask is not None:
                kwargs["global_attention_mask"] = global_attention_mask
            if shard is not None:
                kwargs["shard"] = shard
            y1, y2 = self._reversible[0](x, x, **kwargs)
            x = (
                torch.cat((y1, y2), -1)
                if self.config.reversible_output == "concat"
                else (y1 + y2) / 2
            )
            states.append(x)
        else:
            for block in self.layers:
                if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(
                        block,
                        x,
                        attention_mask,
                        global_attention_mask,
                        None,
                        None,
                        shard,
                        use_reentrant=False,
                    )
                else:
                    x = block(x, attention_mask, global_attention_mask, None, None, shard)
                states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.stem is not None:
            x = self.stem.unpool(x, skip, n, stem_mask)
            attention_mask = per_input
        if attention_mask is not None:
            x = x.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
        return x, (tuple(states) if output_hidden_states else None)

    def _cached(
        self,
        x: Tensor,
        attention_mask: Tensor | None,
        cache: DecodingCache,
        positions: Tensor | None,
        states: list[Tensor],
    ) -> Tensor:
        """The blocks over new tokens through the layer caches: the same modules, the same
        arithmetic as the forward (reversible: y1 = x1 + F(x2), y2 = x2 + G(y1))."""
        if len(cache.layers) != len(self.layers):
            raise ValueError(f"cache has {len(cache.layers)} layers, model {len(self.layers)}")
        if self._reversible:
            x1 = x2 = x
            for block, c in zip(self.layers, cache.layers, strict=True):
                x1 = x1 + block.attn(x2, attention_mask, None, c, positions)
                x2 = x2 + block.ff(x1)
            x = (
                torch.cat((x1, x2), -1)
                if self.config.reversible_output == "concat"
                else (x1 + x2) / 2
            )
            states.append(x)
        else:
            for block, c in zip(self.layers, cache.layers, strict=True):
                x = block(x, attention_mask, None, c, positions)
                states.append(x)
        cache.advance(attention_mask, x.shape[:2])
        return x

    def new_cache(self, batch: int) -> DecodingCache:
        """An empty decoding cache for `batch` rows: each layer's own cache (see
        `longseq.attention.cache`). Needs a causal model."""
        if not self.config.causal:
            raise ValueError(
                "incremental decoding needs a causal model (a causal-lm, or causal_attention)"
            )
        device = self.embeddings.word.weight.device
        caches = [block.attn.attention.new_cache() for block in self.layers]
        limit = None
        if not (all(c.bounded for c in caches) and self.config.position in ("rotary", "none")):
            limit = self.config.max_length
        return DecodingCache(caches, batch, device, limit)


class DecodingCache:
    """The state of incremental decoding: one attention cache per layer, each row's length.

        cache = model.new_cache(batch)
        model(prompt_ids, attention_mask=mask, cache=cache)   # feeds the prompts
        model(next_ids[:, None], cache=cache)                 # one more token per row

    `limit` is the longest sequence the model may decode (positions of learned or axial
    tables, or max_length when some layer keeps every position); None: unbounded (every layer
    a ring, rotary or no positions).
    """

    def __init__(
        self, layers: list[AttentionCache], batch: int, device: torch.device, limit: int | None
    ) -> None:
        self.layers = layers
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.limit = limit

    def positions(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, C) positions of the new tokens; 0 where a token does not exist."""
        b, c = input_ids.shape
        if b != self.lengths.shape[0]:
            raise ValueError(f"cache holds {self.lengths.shape[0]} rows, input has {b}")
        pos = self.lengths[:, None] + torch.arange(c, device=input_ids.device)
        if attention_mask is None:
            end = pos[:, -1]
        else:
            valid = attention_mask.bool()
            if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
                raise ValueError(
                    "with a cache, each row's new tokens come first: attention_mask must be "
                    "1s then 0s (right padding)"
                )
            pos = pos.masked_fill(~valid, 0)
            end = pos.amax(1)
        if self.limit is not None and int(end.max()) >= self.limit:
            raise ValueError(
                f"decoding past position {self.limit - 1}: this model supports sequences of at "
                f"most {self.limit} tokens (max_length)"
            )
        return pos

    def advance(self, attention_mask: Tensor | None, shape: torch.Size) -> None:
        added = shape[1] if attention_mask is None else attention_mask.bool().sum(1)
        self.lengths = self.lengths + added


__all__ = ["Block", "DecodingCache", "Embeddings", "ModelOutput", "Transformer", "norm_of"]
