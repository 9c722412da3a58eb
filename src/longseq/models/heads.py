"""Task heads on the shared Transformer body; any attention mechanism under any head.

    Encoder                    last_hidden_state (batch, seq, width)
    ForSequenceClassification  pool (mean over real tokens, or the first token) -> logits (B, C)
    ForTokenClassification     per-token logits (B, N, C); labels -100 are ignored
    ForQuestionAnswering       span start/end logits (B, N); loss = mean of the two CEs
    ForMaskedLM                vocabulary logits; labels -100 are ignored
    ForCausalLM                vocabulary logits; labels are the inputs, shifted inside
                               (position t predicts token t + 1), as Hugging Face does

Models whose mechanism has global tokens (Longformer) make the first token global in the
sequence-level heads unless a `global_attention_mask` is given, as HF's Longformer does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.attention.shard import Shard
from longseq.labels import IGNORE
from longseq.layers.feedforward import ACTIVATIONS
from longseq.models.base import LongseqModel
from longseq.models.config import ModelConfig
from longseq.models.evaluation import (
    CausalLMSums,
    ClassificationSums,
    EvalSums,
    MaskedLMSums,
    SpanSums,
    TokenLabelSums,
)
from longseq.models.generation import generate
from longseq.models.transformer import DecodingCache, ModelOutput, norm_of


class Encoder(LongseqModel):
    architecture = "encoder"

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        attention_mask, global_attention_mask = self.check_inputs(
            input_ids, attention_mask, global_attention_mask
        )
        h, states = self.body(
            input_ids, attention_mask, global_attention_mask, token_type_ids, output_hidden_states
        )
        return ModelOutput(last_hidden_state=h, hidden_states=states)


class _Head(LongseqModel):
    """Runs the body and hands the hidden states to `head`. Each head names the sums its
    evaluation keeps (`evaluation`, from `longseq.models.evaluation`)."""

    evaluation: ClassVar[type[EvalSums]]

    @staticmethod
    def loss_items(batch: dict[str, Tensor]) -> int:
        """How many targets the batch's mean loss averages over (labelled tokens; a
        sequence-level head overrides it: sequences), so that a step can weight micro-batches
        and processes by their share of the targets."""
        return int((batch["labels"] != IGNORE).sum())

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        global_attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        output_hidden_states: bool,
        cache: DecodingCache | None = None,
        shard: Shard | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None]:
        attention_mask, global_attention_mask = self.check_inputs(
            input_ids,
            attention_mask,
            global_attention_mask,
            first_token=shard is None or shard.rank == 0,
        )
        h, states = self.body(
            input_ids,
            attention_mask,
            global_attention_mask,
            token_type_ids,
            output_hidden_states,
            cache,
            shard,
        )
        return h, states, attention_mask


class ClassificationHead(nn.Module):
    """dropout -> [dense -> act -> dropout] -> out (BERT/RoBERTa heads with `dense`: tanh)."""

    def __init__(
        self, width: int, num_labels: int, dropout: float, dense: bool, activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(width, width) if dense else None
        self.act = torch.tanh if activation == "tanh" else ACTIVATIONS[activation]
        self.out = nn.Linear(width, num_labels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x)
        if self.dense is not None:
            x = self.dropout(self.act(self.dense(x)))
        return self.out(x)


class ForSequenceClassification(_Head):
    architecture = "sequence-classification"
    evaluation = ClassificationSums
    uses_cls_global = True

    @staticmethod
    def loss_items(batch: dict[str, Tensor]) -> int:
        return int(batch["labels"].shape[0])

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.head = ClassificationHead(
            self.config.output_size,
            self.config.num_labels,
            self.config.dropout,
            self.config.classifier_dense,
            self.config.classifier_activation,
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        shard: Shard | None = None,
    ) -> ModelOutput:
        """With `shard`, the pooled vector, logits and loss are those of the whole sequence,
        the same on every rank (the first token lives on rank 0; means sum over all ranks)."""
        h, states, mask = self.encode(
            input_ids,
            attention_mask,
            global_attention_mask,
            token_type_ids,
            output_hidden_states,
            shard=shard,
        )
        count = (
            h.new_full((h.shape[0], 1), h.shape[1])
            if mask is None
            else mask.sum(1, keepdim=True).to(h.dtype)
        )
        if self.config.pooling == "cls":
            pooled = h[:, 0]
            if shard is not None:
                # rank 0's first token; the others add zero, through the same graph (so every
                # rank takes part in the backward's all-reduce)
                pooled = shard.total_sum(pooled if shard.rank == 0 else pooled * 0)
        elif shard is not None:
            pooled = shard.total_sum(h.sum(1)) / shard.total_sum(count).clamp_min(1)
        else:  # padding rows of h are zero, so the sum runs over real tokens only
            pooled = h.sum(1) / count.clamp_min(1)
        logits = self.head(pooled)
        loss = None
        if labels is not None:
            _check_labels(labels, (input_ids.shape[0],), self.config.num_labels)
            loss = F.cross_entropy(_wide(logits), labels)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=h, hidden_states=states)


class ForTokenClassification(_Head):
    architecture = "token-classification"
    evaluation = TokenLabelSums

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(self.config.dropout)
        self.classifier = nn.Linear(self.config.output_size, self.config.num_labels)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        shard: Shard | None = None,
    ) -> ModelOutput:
        h, states, _ = self.encode(
            input_ids,
            attention_mask,
            global_attention_mask,
            token_type_ids,
            output_hidden_states,
            shard=shard,
        )
        logits = self.classifier(self.dropout(h))
        loss = None
        if labels is not None:
            _check_labels(labels, tuple(input_ids.shape), self.config.num_labels)
            loss = _token_loss(logits, labels, shard)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=h, hidden_states=states)


class ForQuestionAnswering(_Head):
    architecture = "question-answering"
    evaluation = SpanSums

    @staticmethod
    def loss_items(batch: dict[str, Tensor]) -> int:
        return int(batch["start_positions"].shape[0])

    uses_cls_global = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.qa = nn.Linear(self.config.output_size, 2)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        shard: Shard | None = None,
    ) -> ModelOutput:
        """Span logits (B, N) each; with `shard`, this rank's positions of them, and the loss
        of the whole sequence (positions are absolute; a softmax over every rank's)."""
        h, states, mask = self.encode(
            input_ids,
            attention_mask,
            global_attention_mask,
            token_type_ids,
            output_hidden_states,
            shard=shard,
        )
        logits = self.qa(h)
        start, end = logits.unbind(-1)
        if mask is not None:  # a span never starts or ends on padding
            start = start.masked_fill(~mask.bool(), torch.finfo(start.dtype).min)
            end = end.masked_fill(~mask.bool(), torch.finfo(end.dtype).min)
        loss = None
        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions, or neither")
        if start_positions is not None and end_positions is not None:
            n = input_ids.shape[1] if shard is None else shard.total
            for name, p in (("start_positions", start_positions), ("end_positions", end_positions)):
                _check_labels(p, (input_ids.shape[0],), n, what=name)
            loss = (
                _position_loss(start, start_positions, shard)
                + _position_loss(end, end_positions, shard)
            ) / 2
        return ModelOutput(
            loss=loss,
            logits=logits,
            start_logits=start,
            end_logits=end,
            last_hidden_state=h,
            hidden_states=states,
        )


class LMHead(nn.Module):
    """[dense -> act -> LayerNorm ->] decoder (weight tied to the embeddings if configured)."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        w = config.output_size
        self.transform: nn.Sequential | None = None
        if config.lm_transform:
            self.transform = nn.Sequential(
                nn.Linear(w, w),
                _Activation(config.activation),
                norm_of(config, w),
            )
        self.decoder = nn.Linear(w, config.vocab_size, bias=config.output_bias)
        if config.tie_word_embeddings:
            self.decoder.weight = embedding.weight

    def forward(self, h: Tensor) -> Tensor:
        if self.transform is not None:
            h = self.transform(h)
        return self.decoder(h)


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class ForMaskedLM(_Head):
    architecture = "masked-lm"
    evaluation = MaskedLMSums

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.lm_head = LMHead(self.config, self.body.embeddings.word)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        shard: Shard | None = None,
    ) -> ModelOutput:
        h, states, _ = self.encode(
            input_ids,
            attention_mask,
            global_attention_mask,
            token_type_ids,
            output_hidden_states,
            shard=shard,
        )
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            _check_labels(labels, tuple(input_ids.shape), self.config.vocab_size)
            loss = _token_loss(logits, labels, shard)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=h, hidden_states=states)


class ForCausalLM(_Head):
    """Decoder-only LM: every layer causal; `labels` (usually = input_ids) shifted inside."""

    architecture = "causal-lm"
    evaluation = CausalLMSums

    @staticmethod
    def loss_items(batch: dict[str, Tensor]) -> int:
        """Real next tokens: the shift and padding rule of `forward`'s loss."""
        target = batch["labels"][:, 1:] != IGNORE
        mask = batch.get("attention_mask")
        if mask is not None:
            target = target & mask[:, 1:].bool()
        return int(target.sum())

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.lm_head = LMHead(self.config, self.body.embeddings.word)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        cache: DecodingCache | None = None,
        shard: Shard | None = None,
        logits_at: Tensor | None = None,
    ) -> ModelOutput:
        """Logits (B, N, V). With `cache` (from `new_cache`), input_ids are the tokens that
        follow what the cache holds, and the logits are exactly those of the full forward
        over the whole sequence at those positions (see `longseq.attention.cache`).
        `logits_at` (B, K) column indices: the logits (B, K, V) of those positions only
        (generation's prefill needs one per row: the output layer is a (hidden x vocab)
        matmul per position, 44% of a SmolLM2 forward at 1,024 tokens); no loss then."""
        h, states, mask = self.encode(
            input_ids, attention_mask, None, None, output_hidden_states, cache, shard
        )
        if logits_at is not None:
            if labels is not None:
                raise ValueError("logits_at gives some positions' logits: no loss with labels")
            picked = h.gather(1, logits_at[:, :, None].expand(-1, -1, h.shape[-1]))
            return ModelOutput(
                logits=self.lm_head(picked), last_hidden_state=h, hidden_states=states
            )
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            _check_labels(labels, tuple(input_ids.shape), self.config.vocab_size)
            real = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
            target = labels.masked_fill(~real, IGNORE)
            if shard is None:
                loss = _token_loss(logits[:, :-1], target[:, 1:], None)
            else:  # the last token of a shard predicts the first of the next one
                firsts = shard.gather(target[:, :1].double(), 1).long()  # (B, W)
                nxt = firsts[:, shard.rank + 1 :][:, :1]
                if shard.rank == shard.world - 1:
                    nxt = torch.full_like(target[:, :1], IGNORE)
                loss = _token_loss(logits, torch.cat([target[:, 1:], nxt], 1), shard)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=h, hidden_states=states)

    def new_cache(self, batch: int = 1) -> DecodingCache:
        """An empty incremental-decoding cache for `batch` rows (see `forward`)."""
        return self.body.new_cache(batch)

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs: Any) -> Any:
        """Continue the prompts; see `longseq.models.generation.generate` for the options."""
        return generate(self, input_ids, max_new_tokens, **kwargs)


def _wide(logits: Tensor) -> Tensor:
    """Logits for a loss: half precision widened to fp32 (fp32 and fp64 kept as they are)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _position_loss(logits: Tensor, target: Tensor, shard: Shard | None) -> Tensor:
    """Mean cross-entropy of picking position `target` (B,) among (B, N) logits; with `shard`,
    among every rank's positions: logsumexp over the ranks (shift by the all-rank maximum),
    the gold logit from the rank that holds it."""
    logits = _wide(logits)
    if shard is None:
        return F.cross_entropy(logits, target)
    shift = shard.maximum(logits.amax(-1, keepdim=True))
    lse = shard.total_sum(torch.exp(logits - shift).sum(-1, keepdim=True)).log() + shift
    local = target - shard.start
    held = (local >= 0) & (local < logits.shape[1])
    gold = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])
    gold = shard.total_sum(gold * held[:, None])
    return (lse - gold).mean()


def _token_loss(logits: Tensor, labels: Tensor, shard: Shard | None) -> Tensor:
    """Mean cross-entropy over the labelled tokens (IGNORE: none); with `shard`, over every
    rank's tokens (the same value on every rank)."""
    flat = _wide(logits.flatten(0, 1))
    if shard is None:
        return F.cross_entropy(flat, labels.flatten(), ignore_index=IGNORE)
    total = F.cross_entropy(flat, labels.flatten(), ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum().to(total.dtype)
    return shard.total_sum(total) / shard.total_sum(count).clamp_min(1)


def _check_labels(
    labels: Tensor, shape: tuple[int, ...], classes: int, what: str = "labels"
) -> None:
    if tuple(labels.shape) != shape:
        raise ValueError(f"{what} shape {tuple(labels.shape)} != expected {shape}")
    if labels.dtype != torch.int64:
        raise ValueError(f"{what} must be int64 class indices, got {labels.dtype}")
    real = labels[labels != IGNORE]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= classes):
        raise ValueError(
            f"{what} must lie in [0, {classes}) (or {IGNORE} to ignore), got min "
            f"{int(real.min())} max {int(real.max())}"
        )


MODEL_CLASSES: tuple[type[LongseqModel], ...] = (
    Encoder,
    ForSequenceClassification,
    ForTokenClassification,
    ForQuestionAnswering,
    ForMaskedLM,
    ForCausalLM,
)

__all__ = [
    "ClassificationHead",
    "Encoder",
    "ForCausalLM",
    "ForMaskedLM",
    "ForQuestionAnswering",
    "ForSequenceClassification",
    "ForTokenClassification",
    "LMHead",
]
