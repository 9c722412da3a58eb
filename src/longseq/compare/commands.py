"""`longseq compare`: train every mechanism alike on one task, then report and plot.

longseq compare --out DIR [--task recall|listops|...] [--mechanisms full,longformer,...]
                [--preset recall|default|cpu|lra] [--lengths 512,1024,...] [--resume]
"""

from __future__ import annotations

import argparse
import sys

from longseq import tasks
from longseq.argtypes import int_list


def register(commands: argparse._SubParsersAction) -> None:
    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.compare.presets import PRESETS, default_mechanisms

    p = commands.add_parser(
        "compare",
        help="train every attention mechanism alike on one task; report and plots",
        description="Train every chosen mechanism with the same model size, data, steps and "
        "seed; then sweep forward+backward time and memory over sequence lengths and draw "
        "the attention patterns. Writes to --out: report.md (one table), curves.png, "
        "sweep.png, patterns/, results.jsonl, sweep.jsonl and each run's folder under runs/. "
        "See docs/experiments.md.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--task",
        choices=list(tasks.compare_tasks()),
        default="recall",
        help="the task (default recall: associative recall by distance, with the patterns' "
        "predictions beside the measurements)",
    )
    p.add_argument(
        "--mechanisms",
        help=f"comma-separated (default {','.join(default_mechanisms())}; for the LM tasks "
        "those with a causal form)",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="model size, data and budget (default: the task's, recall for recall, default "
        "for the others): " + "; ".join(f"{k}: {v.summary}" for k, v in PRESETS.items()),
    )
    p.add_argument(
        "--lengths", type=int_list, help="sweep lengths, comma-separated (default: the preset's)"
    )
    p.add_argument(
        "--contexts",
        type=int_list,
        help="run the comparison once per context length (comma-separated, e.g. "
        "512,2048,8192; the preset's text_length and batch scaled to the same tokens per step) "
        "into OUT/context-N, and chart the test metric against the length (contexts.md, "
        "contexts.png)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a run in --out: finished mechanisms are kept, an interrupted one "
        "continues from its checkpoint (a fresh --out simply starts)",
    )
    p.add_argument("--steps", type=int, help="training steps (overrides the preset)")
    p.add_argument("--seed", type=int, help="seed of the data and every run (default 0)")
    p.add_argument("--seeds", type=int, help="training runs per mechanism, seeds SEED, SEED+1, ...")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a preset field, e.g. --set hidden_size=128 --set reach=64, or one "
        "mechanism's option by its name, --set options.lsh.n_hashes=4 (repeatable; fields in "
        "longseq/compare/presets.py)",
    )
    p.add_argument(
        "--data", help="a folder with the task's splits (`longseq data ...`) instead of building"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the sweep")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.compare import presets
    from longseq.compare.runner import Plan, command_line
    from longseq.compare.runner import run as run_plan

    parser: argparse.ArgumentParser = args.parser
    try:
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"steps={args.steps}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.seeds is not None:
            overrides.append(f"seeds={args.seeds}")
        # imported when the command runs: the CLI imports this module to build its parser
        from longseq.compare.tasks import get as get_task

        name = args.preset or get_task(args.task).preset
        preset = presets.get(name).with_overrides(overrides)
        mechanisms = None
        if args.mechanisms is not None:
            mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
        plan = Plan(
            out=args.out,
            task=args.task,
            preset=preset,
            mechanisms=mechanisms,
            lengths=args.lengths,
            data=args.data,
            resume=args.resume,
            sweep=args.sweep,
            device=args.device,
            progress=args.progress,
            command=command_line(),
        )
    except ValueError as e:
        parser.error(str(e))
    if args.device == "cuda":
        # imported when the command runs: the CLI imports this module to build its parser
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    try:
        if args.contexts is not None:
            # imported when the command runs: the CLI imports this module to build its parser
            from longseq.compare import contexts

            summary = contexts.run(plan, args.contexts)
        else:
            summary = run_plan(plan)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: run the same command with --resume to continue ({args.out})",
            file=sys.stderr,
        )
        return 130
    print()
    print(summary.table)
    print()
    for name in (
        "report.md",
        "curves.png",
        "distance.png",
        "tradeoff.png",
        "sweep.png",
        "results.jsonl",
        "sweep.jsonl",
        "contexts.md",
        "contexts.png",
    ):
        if (summary.out / name).exists():
            print(f"wrote {summary.out / name}")
    if (summary.out / "patterns").is_dir():
        print(f"wrote {summary.out / 'patterns'}/ (attention patterns)")
    print(f"compare took {summary.wall_seconds / 60:.1f} min")
    return 0 if summary.ok else 1
