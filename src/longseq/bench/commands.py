"""`longseq bench attention --out DIR [...]`: time and memory of the attention layers;
`longseq bench generate --model DIR --out DIR [...]`: decoding time and memory of a causal LM
against transformers' generate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from longseq.argtypes import int_list, positive
from longseq.bench import attention as ba
from longseq.bench import generate as bg


def register(commands: Any) -> None:
    bench = commands.add_parser(
        "bench", help="benchmarks", description="Benchmarks of the longseq layers."
    )
    which = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    att = which.add_parser(
        "attention",
        help="time and peak memory of the attention layers vs peers",
        description="Forward and forward+backward median time and peak memory of every "
        "chosen mechanism, its peer and the baselines (projections only, full "
        "attention), over sequence lengths. Writes results.jsonl, table.md and "
        "plot.png to --out.",
    )
    d = ba.Config()
    att.add_argument(
        "--mechanisms",
        default=",".join(d.mechanisms),
        help=f"comma-separated, from: {', '.join(ba.choices())} "
        f"(default {','.join(d.mechanisms)}; baselines always run)",
    )
    att.add_argument(
        "--lengths",
        type=int_list,
        default=d.lengths,
        help=f"comma-separated sequence lengths (default {','.join(map(str, d.lengths))})",
    )
    att.add_argument("--hidden", type=positive(int), default=d.hidden)
    att.add_argument("--heads", type=positive(int), default=d.heads)
    att.add_argument("--batch", type=positive(int), default=d.batch)
    att.add_argument(
        "--threads", type=positive(int), default=d.threads, help="torch intra-op threads"
    )
    att.add_argument("--repeats", type=positive(int), default=d.repeats)
    att.add_argument("--warmup", type=int, default=d.warmup)
    att.add_argument("--dtype", choices=list(ba.DTYPES), default=d.dtype)
    att.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    att.add_argument(
        "--no-peers", dest="peers", action="store_false", help="skip the other libraries' layers"
    )
    att.add_argument(
        "--max-memory-gb",
        type=positive(float),
        default=d.max_memory_gb,
        help="skip a row whose expected peak memory exceeds this",
    )
    att.add_argument(
        "--max-seconds",
        type=positive(float),
        default=d.max_seconds,
        help="skip a row whose one forward+backward call exceeds this",
    )
    att.add_argument("--no-progress", dest="progress", action="store_false")
    att.add_argument("--out", required=True, help="output directory")
    att.set_defaults(func=run, parser=att)  # errors against the right usage line
    _register_generate(which)


def _register_generate(which: Any) -> None:
    d = bg.Config(model="", out="")
    p = which.add_parser(
        "generate",
        help="per-token decoding time and peak memory of a causal LM vs transformers' generate",
        description="Greedy decoding after prompts of several context lengths: time to the "
        "first token, per-token time after it and peak memory, each row in a fresh process, "
        "for longseq's window + attention sinks, window and full attention (made with "
        "longify) and transformers' generate on the same weights (Llama architecture). "
        "Writes results.jsonl (one line per row as it ends) and table.md to --out.",
    )
    p.add_argument("--model", required=True, help="a causal LM folder (e.g. longseq convert's)")
    p.add_argument(
        "--contexts",
        type=int_list,
        default=d.contexts,
        help=f"prompt lengths in tokens (default {','.join(map(str, d.contexts))})",
    )
    p.add_argument(
        "--contenders",
        default=",".join(d.contenders),
        help=f"comma-separated, from: {', '.join(bg.CONTENDERS)} "
        f"(default {','.join(d.contenders)})",
    )
    p.add_argument("--new-tokens", type=positive(int), default=d.new_tokens)
    p.add_argument(
        "--window",
        type=positive(int),
        default=d.window,
        help=f"Longformer window: a query sees the window/2 tokens before it (default {d.window})",
    )
    p.add_argument(
        "--sinks", type=int, default=d.sinks, help=f"global first tokens (default {d.sinks})"
    )
    p.add_argument("--threads", type=positive(int), default=d.threads)
    p.add_argument("--dtype", choices=list(bg.DTYPES), default=d.dtype)
    p.add_argument("--repeats", type=positive(int), default=d.repeats)
    p.add_argument(
        "--max-dense-context",
        type=positive(int),
        default=d.max_dense_context,
        help="skip the dense contenders above this context (their prefill is O(n^2); "
        f"default {d.max_dense_context})",
    )
    p.add_argument("--timeout", type=positive(float), default=d.timeout, help="seconds per row")
    p.add_argument("--resume", action="store_true", help="keep the rows of results.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run_generate, parser=p)


def run_generate(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in contenders if c not in bg.CONTENDERS]
    if unknown or not contenders:
        parser.error(
            f"unknown contender(s) {', '.join(unknown) or '(none given)'}; valid: "
            f"{', '.join(bg.CONTENDERS)}"
        )
    if args.sinks < 0:
        parser.error(f"--sinks must be >= 0, got {args.sinks}")
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json (a folder saved by longseq)")
    cfg = bg.Config(
        model=args.model,
        out=args.out,
        contexts=args.contexts,
        contenders=contenders,
        new_tokens=args.new_tokens,
        window=args.window,
        sinks=args.sinks,
        threads=args.threads,
        dtype=args.dtype,
        repeats=args.repeats,
        max_dense_context=args.max_dense_context,
        timeout=args.timeout,
        resume=args.resume,
    )
    records = bg.run(cfg)
    print(bg.table(records))
    print(f"wrote {Path(args.out) / 'results.jsonl'} and {Path(args.out) / 'table.md'}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    unknown = [m for m in mechanisms if m not in ba.choices()]
    if unknown or not mechanisms:
        parser.error(
            f"unknown mechanism(s) {', '.join(unknown) or '(none given)'} in "
            f"--mechanisms; valid: {', '.join(ba.choices())}"
        )
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    cfg = ba.Config(
        mechanisms=mechanisms,
        lengths=args.lengths,
        hidden=args.hidden,
        heads=args.heads,
        batch=args.batch,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        dtype=args.dtype,
        device=args.device,
        peers=args.peers,
        max_memory_gb=args.max_memory_gb,
        max_seconds=args.max_seconds,
        out=args.out,
        progress=args.progress,
    )
    records = ba.run(cfg)
    out = Path(args.out)
    print((out / "table.md").read_text())
    for name in ("results.jsonl", "table.md", "plot.png"):
        print(f"wrote {out / name}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


__all__ = ["register", "run", "run_generate"]
