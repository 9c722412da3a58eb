"""Baselines for the genome tasks that read no sequence order beyond a few bases (docs/data.md).

Promoters (`--task promoters`): k-mer frequencies (k = 1..6) of each 2 kb window, standardised,
and an L2-regularised logistic regression fitted on the train split (L-BFGS), scored on the
test split. k = 1 is the composition the background is matched on, so it should score near
chance; longer k-mers show how much short motifs alone give.

Per-base labels (`--task bases`): each base gets the label most often seen, over the training
region, at the centre of the same k-mer (k odd, centred on the base); k = 1 is the base's own
nucleotide. Macro-F1 over the test region's bases, as `genome-bases` scores a model. This is
what a model gets from local composition alone; a sequence model must beat it to show it
reads longer context (issue 23's goal: by 20 macro-F1 points).

Metrics come from scikit-learn (`roc_auc_score`, `f1_score`).

    longseq data genome --source /tmp/genome --out data/genome
    python examples/genome_kmer_baseline.py data/genome --task bases
    python examples/genome_kmer_baseline.py data/genome-cds --task bases   # the bacterium
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, roc_auc_score

from longseq.data.genome import UNLABELLED, read_fasta

CODE = np.full(256, 4, np.int64)  # A C G T -> 0..3, anything else (N) -> 4
for _i, _b in enumerate(b"ACGT"):
    CODE[_b] = _i


def load(folder: Path, split: str) -> list[dict]:
    with (folder / f"promoters_{split}.jsonl").open() as f:
        return [json.loads(line) for line in f]


def kmer_frequencies(rows: list[dict], k: int) -> np.ndarray:
    index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    x = np.zeros((len(rows), len(index)), np.float32)
    for r, row in enumerate(rows):
        text = row["text"]
        for i in range(len(text) - k + 1):
            j = index.get(text[i : i + k])
            if j is not None:  # k-mers with an N are skipped
                x[r, j] += 1
    return x / (x.sum(1, keepdims=True) + 1e-9)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised logistic regression (L-BFGS)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + bias, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), bias.detach()


def promoters(folder: Path, l2: float) -> None:
    train, test = load(folder, "train"), load(folder, "test")
    y_train = torch.tensor([r["label"] == "promoter" for r in train], dtype=torch.float32)
    y_test = np.array([r["label"] == "promoter" for r in test])
    print(f"train {len(train)}, test {len(test)} windows (half promoters)")
    for k in (1, 2, 3, 4, 6):
        x_train, x_test = kmer_frequencies(train, k), kmer_frequencies(test, k)
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        a, b = torch.tensor((x_train - mu) / sd), torch.tensor((x_test - mu) / sd)
        w, bias = fit_logistic(a, y_train, l2)
        scores = (b @ w + bias).numpy()
        accuracy = float(((scores > 0) == y_test).mean())
        f1 = f1_score(y_test, scores > 0)
        print(
            f"k={k}: test accuracy {accuracy:.3f}, AUROC {roc_auc_score(y_test, scores):.3f}, "
            f"F1 (promoter) {f1:.3f}"
        )


def region(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's bases as codes 0..4 and its per-base labels."""
    seq = "".join(s for _id, _d, s in read_fasta(folder / f"{split}.fa"))
    labels = np.load(folder / f"{split}_labels.npy", allow_pickle=False).astype(np.int64)
    return CODE[np.frombuffer(seq.encode("ascii"), np.uint8)], labels


def centred_kmers(codes: np.ndarray, k: int) -> np.ndarray:
    """Index (base 4) of the k-mer centred on each base; -1 where it runs off the region or
    holds an N."""
    h = k // 2
    index = np.full(len(codes), -1, np.int64)
    n = len(codes) - k + 1
    value = np.zeros(n, np.int64)
    bad = np.zeros(n, bool)
    for j in range(k):
        window = codes[j : j + n]
        value = value * 4 + np.minimum(window, 3)
        bad |= window == 4
    index[h : h + n] = np.where(bad, -1, value)
    return index


def bases(folder: Path, ks: list[int]) -> None:
    train_codes, train_labels = region(folder, "train")
    test_codes, test_labels = region(folder, "test")
    # genome-cds marks bases coding on both strands UNLABELLED: neither fitted nor scored
    scored = test_labels != UNLABELLED
    labelled = train_labels != UNLABELLED
    classes = int(max(train_labels[labelled].max(), test_labels[scored].max())) + 1
    majority = np.bincount(train_labels, minlength=classes).argmax()
    print(f"train {len(train_codes):,} bases, test {len(test_codes):,} bases")
    for k in ks:
        if k % 2 == 0:
            raise SystemExit(f"--k: k must be odd (centred on the base), got {k}")
        tr, te = centred_kmers(train_codes, k), centred_kmers(test_codes, k)
        ok = (tr >= 0) & labelled
        counts = np.bincount(tr[ok] * classes + train_labels[ok], minlength=4**k * classes)
        counts = counts.reshape(4**k, classes)
        # an unseen k-mer (or one with an N) gets the training region's majority label
        table = np.where(counts.sum(1) > 0, counts.argmax(1), majority)
        predicted = np.where(te >= 0, table[np.maximum(te, 0)], majority)[scored]
        truth = test_labels[scored]
        per_class = f1_score(truth, predicted, average=None, labels=range(classes))
        macro = f1_score(truth, predicted, average="macro")
        shown = ", ".join(f"{f:.3f}" for f in per_class)
        print(
            f"k={k}: test macro-F1 {macro:.3f} (per class {shown}), "
            f"accuracy {float((predicted == truth).mean()):.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", type=Path, help="a folder written by `longseq data genome` (or genome-cds)"
    )
    parser.add_argument("--task", choices=["promoters", "bases"], default="promoters")
    parser.add_argument("--l2", type=float, default=1e-2, help="promoters: L2 weight")
    parser.add_argument(
        "--k", default="1,3,5,7,9,11", help="bases: odd k-mer sizes, comma-separated"
    )
    args = parser.parse_args()
    if args.task == "promoters":
        promoters(args.data, args.l2)
    else:
        bases(args.data, [int(k) for k in args.k.split(",")])


if __name__ == "__main__":
    main()
