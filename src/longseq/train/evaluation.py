"""One evaluation pass, shared by the trainer and `longseq evaluate`: sums, then metrics.

Per architecture, the sums over every evaluated example are (loss, items, a third and a
fourth quantity), reduced over processes before the metrics are computed, so a result never
depends on how the examples were split into batches or processes:

    sequence-classification  summed CE and a confusion matrix -> accuracy, macro-F1, per class
    causal-lm                summed CE over real next tokens, their bytes -> loss, perplexity,
                             bits per byte (the shift and ignore rule of `ForCausalLM`)
    masked-lm, token-class.  summed CE over labelled tokens, correct argmax -> loss, accuracy
    question-answering       summed loss, exact match and F1 of the best span of at most
                             QA_MAX_ANSWER tokens after the question (`data.gcide_qa`)

One small class per architecture (`SUMS`), so nothing here branches on the architecture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.labels import IGNORE
from longseq.train import metrics

QA_MAX_ANSWER = 128  # tokens: the longest span that evaluation predicts
MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "global_attention_mask",
    "token_type_ids",
    "labels",
    "start_positions",
    "end_positions",
)


def model_inputs(
    model: nn.Module, batch: dict[str, Tensor], device: torch.device, non_blocking: bool = False
) -> dict[str, Tensor]:
    """The collated batch's model inputs, on `device`. QA data marks the question global;
    models without global tokens do without."""
    drop = () if getattr(model, "supports_global", False) else ("global_attention_mask",)
    return {
        k: v.to(device, non_blocking=non_blocking)
        for k, v in batch.items()
        if k in MODEL_INPUTS and k not in drop
    }


class _Sums:
    """Running sums of one evaluation pass: (loss, items, x, y) and, for classification, a
    confusion matrix; `add` takes a batch, `result` the metrics (after `reduce`)."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, n, x, y
        classes = model.config.num_labels
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    def reduce(self, all_reduce: Callable[[Tensor], Any]) -> None:
        """Sum over processes (`Distributed.all_reduce`)."""
        all_reduce(self.sums)
        all_reduce(self.confusion)

    def _tokens(self, logits: Tensor, labels: Tensor) -> None:
        """Summed CE over labelled tokens, their count, correct argmax."""
        self.sums[0] += F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        ).double()
        real = labels != IGNORE
        self.sums[1] += real.sum()
        self.sums[3] += ((logits.argmax(-1) == labels) & real).sum()


class _Classification(_Sums):
    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits.float()
        self.sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        classes = self.confusion.shape[0]
        self.confusion += metrics.confusion_matrix(logits.argmax(-1), labels, classes)

    def result(self) -> dict[str, Any]:
        return metrics.classification_metrics(self.confusion.cpu(), float(self.sums[0]))


class _Tokens(_Sums):
    """Masked LM and token classification: every labelled token."""

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        self._tokens(self.model(**batch).logits.float(), labels)

    def result(self) -> dict[str, Any]:
        loss_sum, n, _, correct = self.sums.tolist()
        if self.model.config.architecture == "token-classification":
            return metrics.token_metrics(loss_sum, n, correct)
        return metrics.mlm_metrics(loss_sum, n, correct)


class _CausalLM(_Sums):
    """Every real next token (the shift and padding rule of `ForCausalLM`), and its bytes."""

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits.float()
        keep = batch["attention_mask"][:, 1:].bool()
        cpu_targets = cpu_batch["labels"][:, 1:].masked_fill(
            ~cpu_batch["attention_mask"][:, 1:].bool(), IGNORE
        )
        self.sums[2] += metrics.target_bytes(cpu_targets, self.tokenizer)
        self._tokens(logits[:, :-1], labels[:, 1:].masked_fill(~keep, IGNORE))

    def result(self) -> dict[str, Any]:
        loss_sum, n, num_bytes, _ = self.sums.tolist()
        return metrics.lm_metrics(loss_sum, n, num_bytes)


class _QuestionAnswering(_Sums):
    """The best span of at most QA_MAX_ANSWER tokens after the question, against the gold."""

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        from longseq.data.gcide_qa import best_spans, span_scores

        out = self.model(**batch)
        gold = torch.stack([batch["start_positions"], batch["end_positions"]], -1)
        first = cpu_batch["global_attention_mask"].sum(-1).to(self.sums.device)
        pred = best_spans(out.start_logits, out.end_logits, first, QA_MAX_ANSWER)
        exact, f1 = span_scores(pred, gold)
        self.sums[0] += out.loss.double() * gold.shape[0]
        self.sums[1] += gold.shape[0]
        self.sums[2] += f1.sum().double()
        self.sums[3] += exact.sum().double()

    def result(self) -> dict[str, Any]:
        loss_sum, n, f1, exact = self.sums.tolist()
        return metrics.qa_metrics(loss_sum, n, exact, f1)


# A model's architecture -> its evaluation sums.
SUMS: dict[str, type[_Sums]] = {
    "sequence-classification": _Classification,
    "token-classification": _Tokens,
    "masked-lm": _Tokens,
    "causal-lm": _CausalLM,
    "question-answering": _QuestionAnswering,
}


def sums_for(model: nn.Module, tokenizer: Any, device: torch.device) -> _Sums:
    """The running sums of one evaluation pass of `model` (see the module docstring)."""
    return SUMS[model.config.architecture](model, tokenizer, device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    *,
    tokenizer: Any,
    to_device: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    all_reduce: Callable[[Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Metrics of `model` over `batches` (collated CPU batches), in eval mode (the model's
    mode is restored). `to_device` picks the model inputs and moves them."""
    was_training = model.training
    model.eval()
    try:
        ev = sums_for(model, tokenizer, next(model.parameters()).device)
        for cpu_batch in batches:
            with autocast():
                ev.add(to_device(cpu_batch), cpu_batch)
        if all_reduce is not None:
            ev.reduce(all_reduce)
        return ev.result()
    finally:
        model.train(was_training)


__all__ = ["MODEL_INPUTS", "QA_MAX_ANSWER", "SUMS", "evaluate", "model_inputs", "sums_for"]
