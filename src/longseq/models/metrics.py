"""Evaluation metrics, accumulated as sums so that batches and processes add up exactly.

Classification (and ListOps): a confusion matrix C (rows: true class, columns: predicted).

    accuracy = trace(C) / sum(C)
    F1_k     = 2 TP_k / (2 TP_k + FP_k + FN_k),  TP_k = C[k, k], FP_k = col_k - TP_k,
               FN_k = row_k - TP_k
    macro-F1 = mean of F1_k over the classes that occur in the labels or the predictions
               (as scikit-learn's f1_score(average="macro") without a `labels` argument)

Language modelling: L = summed cross-entropy (nats) over the predicted tokens, T their count,
B the UTF-8 bytes those tokens stand for.

    loss = L / T,   perplexity = exp(loss),   bits per byte = L / (B ln 2)

For the byte tokenizer B = T (each target is one byte; special ids such as the end token
between files count 0 bytes); for any other tokenizer B is the length in bytes of each
block's decoded targets. Masked LM: loss and perplexity over the masked positions, and the
accuracy of predicting them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from longseq.labels import IGNORE


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = prediction."""
    index = labels.long().flatten() * num_classes + preds.long().flatten()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def accuracy(confusion: Tensor) -> float:
    total = int(confusion.sum())
    return float(confusion.diag().sum()) / total if total else float("nan")


def per_class_f1(confusion: Tensor) -> Tensor:
    """F1 of every class (0 where the class occurs neither as a label nor as a prediction)."""
    c = confusion.double()
    tp = c.diag()
    denominator = c.sum(0) + c.sum(1)  # 2 TP + FP + FN
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))


def macro_f1(confusion: Tensor) -> float:
    c = confusion.double()
    present = (c.sum(0) + c.sum(1)) > 0
    if not present.any():
        return float("nan")
    return float(per_class_f1(confusion)[present].mean())


def classification_metrics(confusion: Tensor, loss_sum: float) -> dict[str, float]:
    n = int(confusion.sum())
    return {
        "loss": loss_sum / n if n else float("nan"),
        "accuracy": accuracy(confusion),
        "macro_f1": macro_f1(confusion),
    }


def lm_metrics(loss_sum: float, tokens: float, num_bytes: float) -> dict[str, float]:
    loss = loss_sum / tokens if tokens else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        "bpb": loss_sum / (num_bytes * math.log(2)) if num_bytes else float("nan"),
    }


def qa_metrics(loss_sum: float, n: float, exact: float, f1: float) -> dict[str, float]:
    """Extractive QA: mean loss, exact match and token F1 over `n` examples (sums given)."""
    return {
        "loss": loss_sum / n if n else float("nan"),
        "exact_match": exact / n if n else float("nan"),
        "f1": f1 / n if n else float("nan"),
    }


def mlm_metrics(loss_sum: float, tokens: float, correct: float) -> dict[str, float]:
    loss = loss_sum / tokens if tokens else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": correct / tokens if tokens else float("nan"),
    }


def target_bytes(targets: Tensor, tokenizer: object) -> int:
    """UTF-8 bytes of the target ids (-100 ignored): one per byte id for the byte tokenizer,
    the decoded text's length per row for any other tokenizer."""
    from longseq.data.tokenizers import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        lo, hi = ByteTokenizer.offset, ByteTokenizer.vocab_size
        return int(((targets >= lo) & (targets < hi)).sum())
    total = 0
    for row in targets:
        ids: Iterable[int] = row[row != IGNORE].tolist()
        total += len(tokenizer.decode(ids).encode("utf-8"))  # type: ignore[attr-defined]
    return total


__all__ = [
    "accuracy",
    "classification_metrics",
    "confusion_matrix",
    "lm_metrics",
    "macro_f1",
    "mlm_metrics",
    "per_class_f1",
    "qa_metrics",
    "target_bytes",
]
