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


class Evaluation:
    """Running sums of one evaluation pass of a model (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.arch = model.config.architecture
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, n, x, y
        classes = model.config.num_labels
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)

    def add(self, batch: dict[str, Tensor], cpu_batch: dict[str, Tensor]) -> None:
        """One batch: `batch` holds the model inputs on the device, `cpu_batch` the collated
        batch as it came (byte counts are taken on the CPU)."""
        sums, model = self.sums, self.model
        if self.arch == "question-answering":
            from longseq.data.gcide_qa import best_spans, span_scores

            out = model(**batch)
            gold = torch.stack([batch["start_positions"], batch["end_positions"]], -1)
            first = cpu_batch["global_attention_mask"].sum(-1).to(sums.device)
            pred = best_spans(out.start_logits, out.end_logits, first, QA_MAX_ANSWER)
            exact, f1 = span_scores(pred, gold)
            sums[0] += out.loss.double() * gold.shape[0]
            sums[1] += gold.shape[0]
            sums[2] += f1.sum().double()
            sums[3] += exact.sum().double()
            return
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        if self.arch == "sequence-classification":
            sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            classes = self.confusion.shape[0]
            self.confusion += metrics.confusion_matrix(logits.argmax(-1), labels, classes)
            return
        if self.arch == "causal-lm":
            keep = batch["attention_mask"][:, 1:].bool()
            labels = labels[:, 1:].masked_fill(~keep, IGNORE)
            logits = logits[:, :-1]
            cpu_targets = cpu_batch["labels"][:, 1:].masked_fill(
                ~cpu_batch["attention_mask"][:, 1:].bool(), IGNORE
            )
            sums[2] += metrics.target_bytes(cpu_targets, self.tokenizer)
        sums[0] += F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        ).double()
        real = labels != IGNORE
        sums[1] += real.sum()
        sums[3] += ((logits.argmax(-1) == labels) & real).sum()

    def reduce(self, all_reduce: Callable[[Tensor], Any]) -> None:
        """Sum over processes (`Distributed.all_reduce`)."""
        all_reduce(self.sums)
        all_reduce(self.confusion)

    def result(self) -> dict[str, Any]:
        loss_sum, n, x, y = self.sums.tolist()
        if self.arch == "sequence-classification":
            return metrics.classification_metrics(self.confusion.cpu(), loss_sum)
        if self.arch == "causal-lm":
            return metrics.lm_metrics(loss_sum, n, x)
        if self.arch == "token-classification":
            return metrics.token_metrics(loss_sum, n, y)
        if self.arch == "question-answering":
            return metrics.qa_metrics(loss_sum, n, y, x)
        return metrics.mlm_metrics(loss_sum, n, y)


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
        ev = Evaluation(model, tokenizer, next(model.parameters()).device)
        for cpu_batch in batches:
            with autocast():
                ev.add(to_device(cpu_batch), cpu_batch)
        if all_reduce is not None:
            ev.reduce(all_reduce)
        return ev.result()
    finally:
        model.train(was_training)


__all__ = ["MODEL_INPUTS", "QA_MAX_ANSWER", "Evaluation", "evaluate", "model_inputs"]
