"""The `longseq` command.

longseq patterns --out DIR [--n 64]          draw every mechanism's attention pattern
longseq bench attention --out DIR [...]      time and memory of the attention layers

Other command groups live beside their code: each module in `COMMAND_MODULES` has
`register(commands)`, which adds its sub-parser with `set_defaults(func=run)` where
`run(args) -> int`. Modules are imported only to build the parser, and should import their
heavy dependencies inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import longseq
from longseq.argtypes import int_list, positive

# Modules that add their own sub-commands (see the module docstring).
COMMAND_MODULES: tuple[str, ...] = (
    "longseq.compare.commands",
    "longseq.convert.commands",
    "longseq.convert.longify_cli",
    "longseq.data.commands",
    "longseq.models.commands",
    "longseq.train.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longseq", description="Transformers for long sequences: tools."
    )
    parser.add_argument("--version", action="version", version=f"longseq {longseq.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    pat = commands.add_parser(
        "patterns",
        help="draw each mechanism's attention pattern as PNG files",
        description="Draw which (query, key) pairs each mechanism scores: one PNG per "
        "mechanism and a combined sheet.",
    )
    pat.add_argument("--out", required=True, help="output directory")
    pat.add_argument(
        "--n", type=positive(int), default=64, help="sequence length drawn (default 64)"
    )

    bench = commands.add_parser(
        "bench", help="benchmarks", description="Benchmarks of the longseq layers."
    )
    which = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    from longseq.bench import attention as ba

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
    att.set_defaults(parser=att)  # to report option errors against the right usage line
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def _patterns(args: argparse.Namespace) -> int:
    from longseq.viz import patterns

    written = patterns.draw_all(
        args.out, n=args.n, warn=lambda msg: print(f"warning: {msg}", file=sys.stderr)
    )
    for path in written:
        print(f"wrote {path}")
    return 0 if written else 1


def _bench_attention(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from longseq.bench import attention as ba

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
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
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
    from pathlib import Path

    out = Path(args.out)
    print((out / "table.md").read_text())
    for name in ("results.jsonl", "table.md", "plot.png"):
        print(f"wrote {out / name}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "func"):
        return int(args.func(args))
    if args.command == "patterns":
        return _patterns(args)
    return _bench_attention(args, args.parser)


def _exit(code: int) -> None:
    """Exit; under torchrun without C++ static destructors. A gloo rank sometimes aborted at
    interpreter exit ("terminate called without an active exception", about 1 run in 10 on
    2 busy cores) after its process group was destroyed and its work done, and torchrun
    then failed the whole job; os._exit skips the teardown that aborts."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
