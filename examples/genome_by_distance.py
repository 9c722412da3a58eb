"""Where does a longer context help a per-base genome model? Accuracy by distance to the
nearest annotated boundary, for the runs of a `longseq compare --task genome-cds --contexts`
folder (or genome-bases).

Every run's best checkpoint labels the test split in windows of its own context length. Only
the bases that every run's windows cover are scored (a longer context leaves a longer tail
of each contig unread), so every row is measured on the same bases. Each base's distance is
to the nearest base whose label differs from its own (the end of its CDS, exon or gap); the
bins are 0-63, 64-255, 256-1,023 and 1,024+ bases. Accuracy and macro-F1 come from
scikit-learn; cells are the mean over seeds (the spread of the seeds in brackets where there
are two). Writes `by_distance.md` and `by_distance.png` into --out.

    python examples/genome_by_distance.py results/genome-cds [MORE_FOLDERS] \\
        --data data/genome-cds --out docs/genome-cds-contexts
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from longseq.data.genome import UNLABELLED, GenomeWindows
from longseq.labels import IGNORE
from longseq.models import from_pretrained

BINS = ((0, 64), (64, 256), (256, 1024), (1024, 10**9))


def distance_to_boundary(labels: np.ndarray) -> np.ndarray:
    """For each base, the distance to the nearest base with another label (a record's edges
    are not boundaries: labels of different contigs are simply concatenated)."""
    n = len(labels)
    idx = np.arange(n)
    change = np.flatnonzero(labels[1:] != labels[:-1])  # boundary between i and i + 1
    left = np.full(n, 10**9)
    right = np.full(n, 10**9)
    if len(change):
        # nearest change at or before i (the base after it starts a new run), and after i
        k = np.searchsorted(change, idx, side="left")  # first change >= i
        has_right = k < len(change)
        right[has_right] = change[k[has_right]] - idx[has_right]
        has_left = k > 0
        left[has_left] = idx[has_left] - change[k[has_left] - 1] - 1
    return np.minimum(left, right)


def predict(run: Path, fasta: Path, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels per base of the split (-1 where no window covers it) and the
    covered mask."""
    torch.set_num_threads(threads)
    model = from_pretrained(run / "best").eval()
    length = model.config.max_length
    windows = GenomeWindows(fasta, length)
    out = np.full(len(windows.ids), -1, np.int64)
    per = max(1, 16_384 // length)
    with torch.no_grad():
        for i in range(0, len(windows), per):
            batch = [windows[j] for j in range(i, min(len(windows), i + per))]
            ids = torch.stack([b["input_ids"] for b in batch])
            pred = model(ids).logits.argmax(-1).numpy()
            for row, j in zip(pred, range(i, i + len(batch)), strict=True):
                s = windows.starts[j]
                out[s : s + length] = row
    return out, out >= 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "folders", type=Path, nargs="+", help="`longseq compare --contexts` output folder(s)"
    )
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    labels = np.load(args.data / "test_labels.npy", allow_pickle=False).astype(np.int64)
    labels[labels == UNLABELLED] = IGNORE
    distance = distance_to_boundary(labels)
    preds = {}
    for folder in args.folders:
        runs = sorted(folder.glob("context-*/runs/*/seed*"))
        if not runs:
            raise SystemExit(f"no runs under {folder}/context-*/runs/")
        for run in runs:
            context = int(run.parts[-4].split("-")[1])
            # several folders: each row says which one (e.g. a longer training)
            name = run.parts[-2] if len(args.folders) == 1 else f"{folder.name}: {run.parts[-2]}"
            preds[name, context, run.name] = predict(run, args.data / "test.fa", args.threads)
            print(f"{run}: predicted", flush=True)
    covered = np.logical_and.reduce([c for _, c in preds.values()]) & (labels != IGNORE)
    names = json.loads((args.data / "labels.json").read_text())
    rows: dict[tuple[str, int], list[list[float]]] = {}
    for (mech, context, _seed), (pred, _) in sorted(preds.items()):
        scores = []
        for lo, hi in BINS:
            sel = covered & (distance >= lo) & (distance < hi)
            scores.append(accuracy_score(labels[sel], pred[sel]))
        scores.append(f1_score(labels[covered], pred[covered], average="macro"))
        rows.setdefault((mech, context), []).append(scores)

    heads = [f"{lo:,}-{hi - 1:,}" if hi < 10**9 else f"{lo:,}+" for lo, hi in BINS]
    counts = [int((covered & (distance >= lo) & (distance < hi)).sum()) for lo, hi in BINS]
    lines = [
        "# Accuracy by distance to the nearest label boundary ("
        + ", ".join(str(f) for f in args.folders)
        + ")",
        "",
        f"Test bases scored: {int(covered.sum()):,} (covered by every run's windows); classes "
        f"{', '.join(names)}. Cells: accuracy (%) of the bases whose nearest boundary lies in "
        "the bin, mean over seeds [seed range]; last column macro-F1 (%) on the same bases.",
        "",
        "| mechanism | context | "
        + " | ".join(f"{h} ({c:,})" for h, c in zip(heads, counts, strict=True))
        + " | macro-F1 |",
        "|---|---:|" + "---:|" * (len(BINS) + 1),
    ]
    for (mech, context), seeds in sorted(rows.items()):
        cells = []
        for k in range(len(BINS) + 1):
            values = [100 * s[k] for s in seeds]
            text = f"{statistics.fmean(values):.1f}"
            if len(values) > 1:
                text += f" [{min(values):.1f}-{max(values):.1f}]"
            cells.append(text)
        lines.append(f"| {mech} | {context:,} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "by_distance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mechanisms = sorted({m for m, _ in rows})
    fig, axes = plt.subplots(1, len(mechanisms), figsize=(3.2 * len(mechanisms), 3.4), sharey=True)
    for ax, mech in zip(np.atleast_1d(axes), mechanisms, strict=True):
        for (m, context), seeds in sorted(rows.items()):
            if m != mech:
                continue
            ys = [statistics.fmean(100 * s[k] for s in seeds) for k in range(len(BINS))]
            ax.plot(range(len(BINS)), ys, marker="o", label=f"{context:,} bases")
        ax.set_title(mech)
        ax.set_xticks(range(len(BINS)), heads, rotation=30, fontsize=7)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("test accuracy (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7, title="context")
    fig.supxlabel("distance to the nearest label boundary (bases)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "by_distance.png", dpi=120)


if __name__ == "__main__":
    main()
