"""What a head's evaluation sums and reports: one class per kind of head (each head class names
its own as `evaluation`), shared by the trainer, `longseq evaluate` and anyone scoring a model.

The sums over every evaluated example are (loss, items, a third and a fourth quantity), plus
a confusion matrix for classification, reduced over processes before the metrics are
computed, so a result never depends on how the examples were split into batches or processes:

    ClassificationSums  summed CE and a confusion matrix -> accuracy, macro-F1, per class;
                        with two classes also a histogram of the margin -> AUROC
    CausalLMSums        summed CE over real next tokens, their bytes -> loss, perplexity,
                        bits per byte (the shift and ignore rule of `ForCausalLM`)
    MaskedLMSums        summed CE over labelled tokens, correct argmax -> loss, accuracy
    TokenLabelSums      summed CE and a confusion matrix of the labelled tokens -> loss,
                        accuracy, macro-F1 (token classification)
    SpanSums            summed loss, exact match and F1 of the best span of at most
                        QA_MAX_ANSWER tokens after the question (`data.gcide_qa`)

The formulas are in `longseq.models.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.data.gcide_qa import best_spans, span_scores
from longseq.labels import IGNORE
from longseq.models import metrics
from longseq.models.positions import PositionSums, token_losses

QA_MAX_ANSWER = 128  # tokens: the longest span that evaluation predicts


class EvalSums:
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


class ClassificationSums(EvalSums):
    """Summed CE and a confusion matrix -> accuracy, macro-F1, per-class F1; with two classes,
    a histogram of the margin logit_1 - logit_0 per true class -> AUROC."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device) -> None:
        super().__init__(model, tokenizer, device)
        binary = self.confusion.shape[0] == 2
        self.margins = (
            torch.zeros(2, metrics.AUROC_BINS, dtype=torch.int64, device=device) if binary else None
        )

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits.float()
        self.sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        classes = self.confusion.shape[0]
        self.confusion += metrics.confusion_matrix(logits.argmax(-1), labels, classes)
        if self.margins is not None:
            self.margins += metrics.margin_histogram(logits[:, 1] - logits[:, 0], labels)

    def reduce(self, all_reduce: Callable[[Tensor], Any]) -> None:
        super().reduce(all_reduce)
        if self.margins is not None:
            all_reduce(self.margins)

    def result(self) -> dict[str, Any]:
        out = metrics.classification_metrics(self.confusion.cpu(), float(self.sums[0]))
        if self.margins is not None:
            out["auroc"] = metrics.auroc(self.margins)
        return out


class MaskedLMSums(EvalSums):
    """Every labelled (masked) token: summed CE, count, correct argmax -> loss, perplexity,
    accuracy."""

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        self._tokens(self.model(**batch).logits.float(), labels)

    def result(self) -> dict[str, Any]:
        loss_sum, n, _, correct = self.sums.tolist()
        return metrics.mlm_metrics(loss_sum, n, correct)


class TokenLabelSums(EvalSums):
    """Every labelled token: summed CE and a confusion matrix -> loss, accuracy, macro-F1."""

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits.float()
        self.sums[0] += F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        ).double()
        real = labels != IGNORE
        classes = self.confusion.shape[0]
        self.confusion += metrics.confusion_matrix(logits.argmax(-1)[real], labels[real], classes)

    def result(self) -> dict[str, Any]:
        return metrics.classification_metrics(self.confusion.cpu(), float(self.sums[0]))


class CausalLMSums(EvalSums):
    """Every real next token (the shift and padding rule of `ForCausalLM`), and its bytes;
    also the loss by target position (`positions`, this process's only: not reduced), which
    `longseq evaluate` buckets. The LM head runs a chunk of positions at a time
    (`positions.token_losses`), so long inputs never hold all their logits."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device) -> None:
        super().__init__(model, tokenizer, device)
        self.positions = PositionSums()

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        nll, real = token_losses(
            self.model, batch["input_ids"], batch.get("attention_mask"), batch["labels"]
        )
        cpu_targets = cpu_batch["labels"][:, 1:].masked_fill(~real.cpu(), IGNORE)
        self.sums[2] += metrics.target_bytes(cpu_targets, self.tokenizer)
        self.sums[0] += nll.sum()
        self.sums[1] += real.sum()
        self.positions.add(nll, real)

    def result(self) -> dict[str, Any]:
        loss_sum, n, num_bytes, _ = self.sums.tolist()
        return metrics.lm_metrics(loss_sum, n, num_bytes)


class SpanSums(EvalSums):
    """The best span of at most QA_MAX_ANSWER tokens after the question, against the gold."""

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
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


__all__ = [
    "QA_MAX_ANSWER",
    "CausalLMSums",
    "ClassificationSums",
    "EvalSums",
    "MaskedLMSums",
    "SpanSums",
    "TokenLabelSums",
]
