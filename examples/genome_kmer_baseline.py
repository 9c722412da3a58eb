"""The promoter task's baseline that reads no sequence order: k-mer frequencies (k = 1..6) of
each 2 kb window, standardised, and an L2-regularised logistic regression fitted on the train
split (L-BFGS), scored on the test split. k = 1 is the composition the background is matched
on, so it should score near chance; longer k-mers show how much short motifs alone give.

    longseq data genome --source /tmp/genome --out data/genome
    python examples/genome_kmer_baseline.py data/genome
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random positive outscores a random negative (Mann-Whitney)."""
    ranks = np.empty(len(scores))
    ranks[scores.argsort()] = np.arange(1, len(scores) + 1)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a folder written by `longseq data genome`")
    parser.add_argument("--l2", type=float, default=1e-2)
    args = parser.parse_args()
    train, test = load(args.data, "train"), load(args.data, "test")
    y_train = torch.tensor([r["label"] == "promoter" for r in train], dtype=torch.float32)
    y_test = np.array([r["label"] == "promoter" for r in test])
    print(f"train {len(train)}, test {len(test)} windows (half promoters)")
    for k in (1, 2, 3, 4, 6):
        x_train, x_test = kmer_frequencies(train, k), kmer_frequencies(test, k)
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        a, b = torch.tensor((x_train - mu) / sd), torch.tensor((x_test - mu) / sd)
        w, bias = fit_logistic(a, y_train, args.l2)
        scores = (b @ w + bias).numpy()
        accuracy = float(((scores > 0) == y_test).mean())
        print(f"k={k}: test accuracy {accuracy:.3f}, AUROC {auroc(scores, y_test):.3f}")


if __name__ == "__main__":
    main()
