"""Does a longer context pay for promoter detection? Train the promoter classifier
(`examples/genome-promoters.yaml`: DNA BPE, mean pooling) with each mechanism at several
context lengths and seeds, then tabulate and chart the test AUROC against the length.

The promoter windows are the 2 kb upstream of a TSS (or GC-matched background); the DNA BPE
gives about 5 bp per token, so 512 tokens read the whole window and 128 / 256 read its first
~640 bp / ~1.3 kb (the end farthest from the TSS). Every run has the same steps and batch,
so a longer context is also more tokens; the k-mer baseline that reads the whole window
(`examples/genome_kmer_baseline.py --task promoters`: 4-mers, AUROC 0.744) is the bar.

    python examples/genome_promoters_contexts.py --out results/genome-promoters-contexts \
        --lengths 128,256,512 --mechanisms full,longformer,bigbird --seeds 0,1 --parallel 2

Runs already finished in OUT are kept (re-run the command to resume); each writes
OUT/MECH-N-sSEED (a `longseq train` output folder). Writes OUT/table.md and OUT/contexts.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIG = Path(__file__).with_name("genome-promoters.yaml")
# sparse patterns at these lengths: a window of 64 tokens (~320 bp), blocks of 16 tokens, ...
OPTIONS = {
    "full": "{}",
    "longformer": "{window: 64}",
    "bigbird": "{block_size: 16, num_random_blocks: 2}",
    # 64 projected keys (the whole window at 128 tokens: no compression there)
    "linformer": "{k: 64}",
    # chunks of 32 tokens, 2 hashing rounds: each query sees ~64 keys of its buckets per round
    "lsh": "{chunk_length: 32, n_hashes: 2}",
}


def run(out: Path, mech: str, length: int, seed: int, threads: int) -> dict | None:
    folder = out / f"{mech}-{length}-s{seed}"
    log = folder / "log.jsonl"
    if not _test(log):
        cmd = [
            sys.executable, "-m", "longseq.cli", "train", "--config", str(CONFIG),
            "--out", str(folder), "--resume", "--no-progress",
            "--set", f"model.attention={mech}",
            "--set", f"model.attention_options={OPTIONS[mech]}",
            "--set", f"data.max_length={length}",
            "--set", f"run.seed={seed}",
            "--set", f"run.threads={threads}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{folder.name}: failed: {done.stderr.strip()[-500:]}", flush=True)
            return None
    test = _test(log)
    print(f"{folder.name}: test AUROC {test['auroc']:.3f}", flush=True)
    return {"mechanism": mech, "length": length, "seed": seed, **test}


def _test(log: Path) -> dict | None:
    if not log.is_file():
        return None
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return next((r for r in rows if r.get("kind") == "eval" and r.get("split") == "test"), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--lengths", default="128,256,512")
    p.add_argument("--mechanisms", default="full,longformer,bigbird")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    mechs = args.mechanisms.split(",")
    unknown = sorted(set(mechs) - set(OPTIONS))
    if unknown:
        p.error(f"unknown mechanism(s) {unknown}; this script has options for {sorted(OPTIONS)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, n, s) for s in seeds for n in lengths for m in mechs]
    with ThreadPoolExecutor(args.parallel) as pool:
        found = list(pool.map(lambda j: run(args.out, *j, args.threads), jobs))
    rows = [r for r in found if r is not None]
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = [
        "| mechanism | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    curves = {}
    for m in mechs:
        cells, curve = [], []
        for n in lengths:
            xs = [r["auroc"] for r in rows if r["mechanism"] == m and r["length"] == n]
            if not xs:
                cells.append("-")
                continue
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):.3f} ± {sd:.3f} ({len(xs)})")
            curve.append((n, statistics.mean(xs), sd))
        table.append(f"| {m} | " + " | ".join(cells) + " |")
        curves[m] = curve
    f1_table = [
        "| mechanism | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for m in mechs:
        cells = []
        for n in lengths:
            xs = [r["f1_1"] for r in rows if r["mechanism"] == m and r["length"] == n]
            cells.append(f"{statistics.mean(xs):.3f}" if xs else "-")
        f1_table.append(f"| {m} | " + " | ".join(cells) + " |")
    text = (
        "Test AUROC, mean ± standard deviation over seeds (runs), by context length:\n\n"
        + "\n".join(table)
        + "\n\nPromoter-class F1 (mean over seeds; the decision threshold is not tuned):\n\n"
        + "\n".join(f1_table)
        + "\n"
    )
    (args.out / "table.md").write_text(text)
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, curve in curves.items():
        if curve:
            xs, ys, sds = zip(*curve, strict=True)
            ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=m)
    ax.axhline(0.744, color="grey", linestyle="--", label="4-mer baseline (whole window)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (BPE tokens, ~5 bp each)")
    ax.set_ylabel("test AUROC")
    ax.set_title("Promoters vs GC-matched background, fruit fly chr2R")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "contexts.png", dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
