"""Evaluation metrics, accumulated as sums so that batches and processes add up exactly.

Classification (and ListOps): a confusion matrix C (rows: true class, columns: predicted).

    accuracy = trace(C) / sum(C)
    F1_k     = 2 TP_k / (2 TP_k + FP_k + FN_k),  TP_k = C[k, k], FP_k = col_k - TP_k,
               FN_k = row_k - TP_k
    macro-F1 = mean of F1_k over the classes that occur in the labels or the predictions
               (as scikit-learn's f1_score(average="macro") without a `labels` argument)

F1_k is reported per class as `f1_k`. Two classes: also the area under the ROC curve of the
margin m = logit_1 - logit_0, computed by scikit-learn's `roc_auc_score` from a histogram of m
per true class (AUROC_BINS bins over [-AUROC_RANGE, AUROC_RANGE], margins beyond clamped):
a histogram adds up over batches and processes like the other sums, and it differs from the
exact AUROC only through pairs whose margins share a bin (they count as ties, half a pair).

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

from longseq.data.tokenizers import ByteTokenizer
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
    out = {
        "loss": loss_sum / n if n else float("nan"),
        "accuracy": accuracy(confusion),
        "macro_f1": macro_f1(confusion),
    }
    out.update({f"f1_{k}": float(f) for k, f in enumerate(per_class_f1(confusion))})
    return out


AUROC_BINS = 8192
AUROC_RANGE = 16.0  # logits: a bin is 2 * 16 / 8192 = 0.004 wide


def margin_histogram(margin: Tensor, labels: Tensor) -> Tensor:
    """(2, AUROC_BINS) counts of the binary margin logit_1 - logit_0 per true class."""
    scaled = (margin.double().clamp(-AUROC_RANGE, AUROC_RANGE) + AUROC_RANGE) / (2 * AUROC_RANGE)
    bins = (scaled * AUROC_BINS).long().clamp(0, AUROC_BINS - 1)
    index = labels.long().flatten() * AUROC_BINS + bins.flatten()
    return torch.bincount(index, minlength=2 * AUROC_BINS).view(2, AUROC_BINS)


def auroc(histogram: Tensor) -> float:
    """AUROC of class 1 against class 0 from `margin_histogram` counts (nan without both)."""
    # imported here: scikit-learn is only needed when a binary classifier is scored
    from sklearn.metrics import roc_auc_score

    counts = histogram.cpu()
    if not (counts[0].sum() > 0 and counts[1].sum() > 0):
        return float("nan")
    centres = torch.arange(AUROC_BINS, dtype=torch.float64)
    truth, score, weight = [], [], []
    for label in (0, 1):
        kept = counts[label] > 0
        truth.append(torch.full((int(kept.sum()),), label))
        score.append(centres[kept])
        weight.append(counts[label][kept].double())
    return float(roc_auc_score(torch.cat(truth), torch.cat(score), sample_weight=torch.cat(weight)))


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
