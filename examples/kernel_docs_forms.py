"""Score a MiniLM kernel-docs classifier (examples/kernel-docs-minilm-truncated.yaml) in three
forms on the same test documents, by document length in the model's tokens:

- truncated: as fine-tuned, reading the first 512 tokens;
- longformer: the fine-tuned weights longified to 2,048 tokens (window 512, [CLS] global);
- bigbird: the same, BigBird ITC (blocks of 64).

The long forms get no training of their own: the question is what reading the rest of a
document does to the classifier as it was trained. Each form's predictions
(`longseq predict`) are kept in --out, so a rerun resumes; accuracy and macro-F1
(scikit-learn) by length bucket go to --out/table.md and results.json.

    python examples/kernel_docs_forms.py --run runs/kernel-docs-minilm-truncated \
        --test data/kernel-docs/test.jsonl --out results/kernel-docs-minilm --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score

from longseq.data.tokenizers import load_tokenizer

FORMS = {  # name: (longify options or None, max_length)
    "truncated": (None, 512),
    "longformer": (["--attention", "longformer", "--window", "512"], 2048),
    "bigbird": (["--attention", "bigbird", "--block-size", "64"], 2048),
}
BUCKETS = ((0, 512), (512, 2048), (2048, math.inf))


def run(cmd: list[str], out: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    if out is None:
        subprocess.run(cmd, check=True)
        return
    tmp = out.with_suffix(".part")
    with tmp.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f)
    tmp.rename(out)


def scores(idx: list[int], y: list[str], got: list[str], bucket: str) -> dict:
    """Accuracy (with its binomial standard error) and macro-F1 of the documents `idx`."""
    if not idx:
        return {
            "bucket": bucket,
            "documents": 0,
            "accuracy": math.nan,
            "accuracy_se": math.nan,
            "macro_f1": math.nan,
        }
    yy, pp = [y[i] for i in idx], [got[i] for i in idx]
    acc = accuracy_score(yy, pp)
    return {
        "bucket": bucket,
        "documents": len(idx),
        "accuracy": acc,
        "accuracy_se": math.sqrt(acc * (1 - acc) / len(idx)),
        "macro_f1": f1_score(yy, pp, average="macro", zero_division=0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="the truncated run's folder")
    ap.add_argument("--ckpt", default="best")
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(args.run) / args.ckpt
    docs = [json.loads(line) for line in Path(args.test).read_text().splitlines()]
    # the model's own tokenizer as longseq loads it (without the file's 128-token truncation)
    tok = load_tokenizer(src)
    lengths = [len(tok.encode(d["text"])) for d in docs]

    results: dict[str, list[dict]] = {}
    preds_of: dict[str, list[str]] = {}
    for name, (longify, max_length) in FORMS.items():
        model = src if longify is None else Path(f"{args.run}-{name}-2048")
        if longify is not None and not model.exists():
            run(
                [
                    "longseq",
                    "longify",
                    str(src),
                    str(model),
                    "--max-length",
                    "2048",
                    *longify,
                    "--no-check",
                ]
            )
        preds = out / f"{name}.jsonl"
        if not preds.exists():
            run(
                [
                    "longseq",
                    "predict",
                    "--model",
                    str(model),
                    "--max-length",
                    str(max_length),
                    "--threads",
                    str(args.threads),
                    "--no-progress",
                    args.test,
                ],
                preds,
            )
        got = [json.loads(line)["label"] for line in preds.read_text().splitlines()]
        if len(got) != len(docs):
            raise SystemExit(f"{preds}: {len(got)} predictions for {len(docs)} documents")
        y = [d["label"] for d in docs]
        rows = [
            scores([i for i, n in enumerate(lengths) if lo <= n < hi], y, got, f"{lo}-{hi}")
            for lo, hi in BUCKETS
        ]
        rows.append(scores(list(range(len(docs))), y, got, "all"))
        results[name] = rows
        preds_of[name] = got

    # paired against truncation on the same documents: documents only the long form gets
    # right, only truncation gets right, and the exact McNemar p-value of that split
    y = [d["label"] for d in docs]
    paired = {}
    for name in FORMS:
        if name == "truncated":
            continue
        for lo, hi in ((0, math.inf), (512, math.inf)):
            idx = [i for i, n in enumerate(lengths) if lo <= n < hi]
            win = sum(preds_of[name][i] == y[i] != preds_of["truncated"][i] for i in idx)
            loss = sum(preds_of["truncated"][i] == y[i] != preds_of[name][i] for i in idx)
            p = binomtest(win, win + loss).pvalue if win + loss else 1.0
            paired[f"{name} >= {lo}"] = {
                "documents": len(idx),
                "only_long": win,
                "only_truncated": loss,
                "mcnemar_p": p,
            }
    results["paired_vs_truncated"] = paired  # type: ignore[assignment]
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    heads = [r["bucket"] for r in next(iter(results.values()))]
    names = {"0-512": "< 512 tokens", "512-2048": "512-2,047", "2048-inf": ">= 2,048", "all": "all"}
    lines = [
        "| form | "
        + " | ".join(
            f"{names[h]} ({r['documents']})"
            for h, r in zip(heads, results["truncated"], strict=True)
        )
        + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for name in FORMS:
        rows = results[name]
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_se']:.1f}"
                f" / {100 * r['macro_f1']:.1f}"
                for r in rows
            )
            + " |"
        )
    table = (
        "accuracy ± standard error / macro-F1 (%), by document length in tokens "
        "(documents in brackets)\n\n" + "\n".join(lines) + "\n"
    )
    table += (
        "\nPaired with truncation (documents only the long form / only truncation gets "
        "right; exact McNemar p):\n\n"
        + "\n".join(
            f"- {k} tokens: {v['only_long']} / {v['only_truncated']} of {v['documents']}, "
            f"p = {v['mcnemar_p']:.2f}"
            for k, v in paired.items()
        )
        + "\n"
    )
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
