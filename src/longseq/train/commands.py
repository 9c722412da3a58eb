"""`longseq train --config FILE.yaml [--resume] [--set section.key=value ...]`.

The same command runs data parallel under torchrun:

    torchrun --nproc_per_node 2 -m longseq.cli train --config FILE.yaml
"""

from __future__ import annotations

import argparse
import json
import sys


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a model from a YAML/JSON config (also under torchrun)",
        description="Train a longseq model as a YAML/JSON config says (see docs/training.md). "
        "Writes OUT/log.jsonl, OUT/tensorboard, OUT/best and OUT/last (the checkpoint that "
        "--resume continues).",
    )
    p.add_argument("--config", required=True, help="training config (.yaml, .yml or .json)")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/last (starts afresh if absent)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 --set "
        "model.attention_options.window=64 (repeatable; values are read as YAML)",
    )
    p.add_argument("--out", help="output folder (overrides run.out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from longseq.train import load_config, train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out={json.dumps(args.out)}")
    if args.no_progress:
        overrides.append("run.progress=false")
    try:
        config = load_config(args.config, overrides)
        result = train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import os

    if os.environ.get("RANK", "0") != "0":
        return 0
    print(
        f"trained {result.step} steps in {result.train_seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tokens/s); output in {result.out_dir}"
    )
    if result.best is not None:
        shown = {k: round(v, 4) for k, v in result.best.items() if isinstance(v, float)}
        print(f"best val {result.metric} at step {result.best['step']}: {shown}")
    if result.test is not None:
        shown = {k: round(v, 4) for k, v in result.test.items() if isinstance(v, float)}
        print(f"test: {shown}")
    return 0
