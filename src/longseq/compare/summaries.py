"""Does reading the whole document beat truncation? Summarisation with one pre-trained decoder.

Every causal mechanism is applied to the same pre-trained instruct decoder (the converted
SmolLM2-135M-Instruct) with no training (`longseq.convert.longify`: the weights are shared,
only the attention pattern changes; `FORMS` lists each form's options), and compared with the
dense model reading only the first 512 or 2,048 tokens of the document, and the dense model
up to its trained length:

    python -m longseq.compare.summaries --model runs/smollm2 --data data/manpages \\
        --out results/summ-manpages [--per-bucket 8] [--rouge 4] [--forms a,b] [--report]
    python -m longseq.compare.summaries --rouge-of zero-shot.jsonl fine-tuned.jsonl

Per document of a fixed sample (`--per-bucket` documents of each length bucket of the test
split, drawn with `--seed`), and per form, one forward gives the reference summary's loss per
token given the document (`longseq.tasks.summarise.summary_loss`); on the first `--rouge`
documents of each bucket the form also writes a greedy summary, scored with ROUGE. Every
result is appended to `results.jsonl` as it comes, so a run that is stopped resumes where it
was (rows already there are skipped). `--report` writes `report.md`: per bucket and form the
mean loss per token and ROUGE with their standard errors over documents, and the paired
difference of each form's loss from the 2,048-token truncation on the same documents.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from longseq.tasks import summarise

SPARSE_LENGTH = 16_384  # the sparse forms read at most this many tokens
# name -> (attention, its options, document tokens read at most; None: all the model takes).
# The sparse forms' options give each query about 1,024 keys: the causal window w/2 = 1,024
# previous tokens (with the first 4 tokens global: attention sinks, StreamingLLM's, at their
# positions or at cache positions; and without); BigBird 128-token blocks (3 sliding, the 2
# first blocks global, which are sinks under a causal mask, 3 random); local 512-token
# chunks and the chunk before; LSH 256-token chunks, 2 hashes (longify shares the query
# projection as LSH's and expands SmolLM2's 3 key/value heads to 9 for it).
FORMS: dict[str, tuple[str, dict[str, Any], int | None]] = {
    "first-2048": ("full", {}, 2048),
    "window+sinks": ("longformer", {"window": 2048, "global_tokens": 4}, None),
    "window+sinks@cache": ("longformer", {"window": 2048, "global_tokens": 4,
                                          "sink_positions": "cache"}, None),
    "bigbird": ("bigbird", {"block_size": 128, "num_sliding_blocks": 3,
                            "num_global_blocks": 2, "num_random_blocks": 3}, None),
    "dense-8K": ("full", {}, None),
    "first-512": ("full", {}, 512),
    "window": ("longformer", {"window": 2048}, None),
    "local": ("local", {"chunk_length": 512, "num_chunks_before": 1}, None),
    "lsh": ("lsh", {"chunk_length": 256, "n_hashes": 2}, None),
}  # fmt: skip
BASELINE = "first-2048"


def reads_as_given(name: str) -> bool:
    """Whether form `name` is the converted model unchanged (its mechanism is the registry's
    baseline, so nothing is longified) rather than longified to a sparse pattern."""
    from longseq.attention import get

    return get(FORMS[name][0]).baseline


def form_model(base: Any, name: str, sparse_length: int = SPARSE_LENGTH) -> tuple[Any, int]:
    """The model of form `name` and the longest input it reads: dense forms are `base`; a
    sparse form is `base` longified to `sparse_length` with the form's options, its parameters
    the very tensors of `base` (no copy) where they have the same shape."""
    from longseq.convert.longify import longify

    if reads_as_given(name):
        return base, base.config.max_length
    mech, opts, _ = FORMS[name]
    model = longify(base, sparse_length, mech, **opts)
    own = model.state_dict()  # LSH: grouped-query values expanded, kept as longify made them
    shared = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False, assign=True)
    return model.eval(), sparse_length


def sample(
    records: list[dict[str, Any]],
    tokenizer: Any,
    per_bucket: int,
    seed: int,
    buckets: tuple[str, ...] | None = None,
) -> list:
    """(record, doc_tokens) of `per_bucket` documents per length bucket (of `buckets`, default
    all), in a fixed order."""
    groups: dict[str, list] = {}
    for rec in records:
        n = len(tokenizer.encode(rec["text"]))
        groups.setdefault(summarise.bucket(n), []).append((rec, n))
    rng = random.Random(seed)
    out = []
    for name, _, _ in summarise.BUCKETS:
        docs = groups.get(name, [])
        rng.shuffle(docs)
        if buckets is None or name in buckets:
            out.append(docs[:per_bucket])
    # interleave the buckets, so a run stopped early has some of each
    return [d for row in _zip_longest(out) for d in row]


def _zip_longest(lists: list[list]) -> list[list]:
    width = max((len(x) for x in lists), default=0)
    return [[x[i] for x in lists if i < len(x)] for i in range(width)]


def run(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    from longseq.data.tokenizers import load_tokenizer
    from longseq.models import from_pretrained

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["form"], r["id"], r["kind"]) for r in read_rows(results)}
    tokenizer = load_tokenizer(args.model)
    base = from_pretrained(args.model).eval()
    records = summarise.read_records(Path(args.data) / f"{args.split}.jsonl")
    buckets = tuple(args.buckets.split(",")) if args.buckets else None
    docs = sample(records, tokenizer, args.per_bucket, args.seed, buckets)
    log(f"{len(docs)} documents: " + ", ".join(
        f"{b} {sum(summarise.bucket(n) == b for _, n in docs)}" for b, _, _ in summarise.BUCKETS
    ))  # fmt: skip
    forms = args.forms.split(",") if args.forms else list(FORMS)
    rouge_ids: set[str] = set()
    for b, _, _ in summarise.BUCKETS:
        rouge_ids |= set([r["id"] for r, n in docs if summarise.bucket(n) == b][: args.rouge])
    models: dict[str, tuple[Any, int]] = {}
    prompts = summarise.Prompts(tokenizer)
    with results.open("a", encoding="utf-8") as f:
        for rec, n in docs:
            for form in forms:
                if form not in models:
                    models[form] = form_model(base, form, args.sparse_length)
                model, limit = models[form]
                doc_limit = FORMS[form][2]
                row = {"form": form, "id": rec["id"], "doc_tokens": n}
                if (form, rec["id"], "loss") not in done:
                    item = summarise.encode_example(prompts, rec, limit, doc_limit)
                    start = time.perf_counter()
                    nll, k = summarise.summary_loss(model, item["input_ids"], item["labels"])
                    row_l = {**row, "kind": "loss", "read_tokens": item["read_tokens"],
                             "loss": nll / k, "tokens": k,
                             "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
                    f.write(json.dumps(row_l) + "\n")
                    f.flush()
                    log(f"{form:>11} {rec['id']}: {n} tokens, read {item['read_tokens']}, "
                        f"loss {nll / k:.3f} ({row_l['seconds']} s)")  # fmt: skip
                if rec["id"] in rouge_ids and (form, rec["id"], "rouge") not in done:
                    pred = summarise.SummaryPredictor(
                        model, tokenizer, max_length=limit, doc_limit=doc_limit,
                        max_new_tokens=args.max_new_tokens,
                    )  # fmt: skip
                    start = time.perf_counter()
                    (got,) = pred.predict([rec])
                    row_r = {**row, "kind": "rouge", "summary": got["summary"],
                             **{k: got[k] for k in summarise.ROUGE},
                             "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
                    f.write(json.dumps(row_r) + "\n")
                    f.flush()
                    log(f"{form:>11} {rec['id']}: rougeL {got['rougeL']:.1f}: {got['summary']!r}")


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a stop: recomputed
        key = (row.get("form"), row.get("id"), row.get("kind"))
        if row.get("form") is None or key not in seen:  # runs sharing a file: the first
            seen.add(key)
            rows.append(row)
    return rows


def report(out: Path, title: str) -> str:
    """report.md: per bucket and form, loss and ROUGE (mean ± standard error), and the
    paired loss difference from BASELINE on the same documents."""
    rows = read_rows(out / "results.jsonl")
    loss = [r for r in rows if r["kind"] == "loss"]
    rouge = [r for r in rows if r["kind"] == "rouge"]
    # the model as given, shortest read first, then the sparse forms in FORMS' order
    dense = sorted(filter(reads_as_given, FORMS), key=lambda f: FORMS[f][2] or math.inf)
    order = [*dense, *(f for f in FORMS if not reads_as_given(f))]
    forms = [f for f in order if any(r["form"] == f for r in rows)]
    base = {r["id"]: r["loss"] for r in loss if r["form"] == BASELINE}
    lines = [f"# {title}", "",
             "Reference summary loss (nats per token, lower is better) and ROUGE F1 (x100) "
             "per document length bucket, mean ± standard error over documents; Δ: the paired "
             f"difference from {BASELINE} on the same documents (negative: the form is better).",
             ""]  # fmt: skip
    for b in [*(name for name, _, _ in summarise.BUCKETS), "all"]:
        lb, rb = _in_bucket(loss, b), _in_bucket(rouge, b)
        if not lb:
            continue
        lines += [f"## {b} tokens", "",
                  "| form | docs | loss | Δ loss vs first-2048 | ROUGE docs | R-1 | R-2 | R-L |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for form in forms:
            ls = [r for r in lb if r["form"] == form]
            if not ls:
                continue
            m, se = summarise.mean_se([r["loss"] for r in ls])
            diffs = [r["loss"] - base[r["id"]] for r in ls if r["id"] in base]
            d = "-"
            if diffs and form != BASELINE:
                dm, dse = summarise.mean_se(diffs)
                d = f"{dm:+.3f} ± {dse:.3f}"
            rs = [r for r in rb if r["form"] == form]
            rcol = ["-", "-", "-"]
            if rs:
                rcol = [_fmt(summarise.mean_se([r[k] for r in rs]), 1) for k in summarise.ROUGE]
            lines.append(f"| {form} | {len(ls)} | {_fmt((m, se), 3)} | {d} | {len(rs)} | "
                         + " | ".join(rcol) + " |")  # fmt: skip
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


def rouge_table(files: list[str]) -> str:
    """ROUGE of `longseq predict --task summarisation` outputs (one file per model), per
    length bucket: mean ± standard error over documents."""
    lines = ["| predictions | bucket | docs | R-1 | R-2 | R-L |", "|---|---|---:|---:|---:|---:|"]
    for name in files:
        rows = [r for r in read_rows(Path(name)) if "rougeL" in r]
        for b, stats in summarise.by_bucket(rows, summarise.ROUGE).items():
            cols = " | ".join(_fmt(stats[k], 1) for k in summarise.ROUGE)
            lines.append(f"| {Path(name).stem} | {b} | {stats['n']} | {cols} |")
    return "\n".join(lines) + "\n"


def _in_bucket(rows: list[dict[str, Any]], b: str) -> list[dict[str, Any]]:
    return [r for r in rows if b == "all" or summarise.bucket(r["doc_tokens"]) == b]


def _fmt(ms: tuple[float, float], digits: int) -> str:
    m, se = ms
    return f"{m:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{m:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="the converted instruct decoder")
    p.add_argument("--data", help="a folder from longseq data manpages/aclsum")
    p.add_argument("--out")
    p.add_argument(
        "--rouge-of",
        nargs="+",
        metavar="FILE",
        help="only print the ROUGE table of these `longseq predict --task summarisation` outputs",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--per-bucket", type=int, default=8, help="documents per length bucket")
    p.add_argument("--rouge", type=int, default=2, help="of those, how many get a summary")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--forms", help=f"comma-separated, of {', '.join(FORMS)} (default all)")
    p.add_argument("--buckets", help="comma-separated length buckets to sample (default all)")
    p.add_argument(
        "--sparse-length",
        type=int,
        default=SPARSE_LENGTH,
        help=f"tokens the sparse forms read at most (default {SPARSE_LENGTH:,})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true", help="only write report.md")
    p.add_argument("--title", default="Summarisation against truncation")
    args = p.parse_args(argv)
    if args.rouge_of:
        print(rouge_table(args.rouge_of))
        return 0
    if args.out is None or (not args.report and (args.model is None or args.data is None)):
        p.error("--out, and to run: --model and --data, are required")
    if not args.report:
        run(args, lambda s: print(s, file=sys.stderr, flush=True))
    print(report(Path(args.out), args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
