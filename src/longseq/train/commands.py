"""`longseq train` and `longseq evaluate`.

    longseq train --config FILE.yaml [--resume] [--set section.key=value ...]
    longseq evaluate --model DIR --data FILE [--task T] [--max-length N] [--out FILE.json]

`train` runs data parallel under torchrun too:

    torchrun --nproc_per_node 2 -m longseq.cli train --config FILE.yaml

`evaluate` scores a saved model (a run's `best/` or `last/`, or any save_pretrained folder)
on a data file with the trainer's own evaluation (`longseq.train.evaluation`), so its metrics
are those the run logged. The task and its data settings come from the run's config.yaml
beside the model folder when there is one, else from the model's architecture.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(commands: argparse._SubParsersAction) -> None:
    _register_train(commands)
    _register_evaluate(commands)


def _register_train(commands: argparse._SubParsersAction) -> None:
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


# ---------------------------------------------------------------------------------- evaluate


def _register_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="score a saved model on a data file (the trainer's metrics, as JSON)",
        description="Evaluate a model saved by training or save_pretrained on one data file, "
        "with exactly the metrics the trainer logs. Writes JSON (stdout, or --out).",
    )
    p.add_argument("--model", required=True, help="model folder (e.g. runs/NAME/best)")
    p.add_argument("--data", required=True, nargs="+", help="data file (LM: one or more)")
    p.add_argument("--task", help="data task (default: the run's config, else from the model)")
    p.add_argument("--max-length", type=int, help="tokens per example (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, help="(default 8)")
    p.add_argument("--out", help="write the JSON here instead of stdout")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_evaluate, evaluate_parser=p)


def _data_config(args: argparse.Namespace, model: object) -> object:
    """The data settings: the run's config.yaml (beside or above the model folder) with the
    command line's task and length on top, else defaults for the model's architecture."""
    from pathlib import Path

    from longseq import tasks
    from longseq.train.config import DataConfig, load_config

    arch = model.config.architecture  # type: ignore[attr-defined]
    base: dict = {}
    for candidate in (Path(args.model) / "config.yaml", Path(args.model).parent / "config.yaml"):
        if candidate.is_file():
            run_data = load_config(candidate).data
            keys = ("task", "max_length", "text_field", "label_field", "mlm_probability")
            base = {k: getattr(run_data, k) for k in keys}
            break
    if args.task:
        base["task"] = args.task
    if "task" not in base:
        base["task"] = tasks.for_architecture(arch).name
    if args.max_length:
        base["max_length"] = args.max_length
    base.setdefault("max_length", model.config.max_length)  # type: ignore[attr-defined]
    cfg = DataConfig(**base, random_offset=False)
    cfg.validate()
    return cfg


def run_evaluate(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.evaluate_parser
    import torch

    from longseq import tasks
    from longseq.data.collate import make_collate
    from longseq.data.tokenizers import load_tokenizer
    from longseq.models import from_pretrained
    from longseq.train.data import eval_loader
    from longseq.train.evaluation import evaluate, model_inputs

    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        model = from_pretrained(args.model, device=args.device)
        tokenizer = load_tokenizer(args.model)
        cfg = _data_config(args, model)
        arch, task = model.config.architecture, tasks.get(cfg.task)
        if task.architecture != arch:
            raise ValueError(
                f"task {cfg.task!r} needs a {task.architecture} model, but {args.model} "
                f"is a {arch}; pass the right --task"
            )
        names = model.config.label_names or task.label_names(cfg, tokenizer)
        path = args.data if task.several_files else args.data[0]
        dataset = task.dataset(cfg, tokenizer, path, split="test", label_names=names)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    multiple = model.pad_multiple(cfg.max_length)
    loader = eval_loader(
        dataset,
        make_collate(tokenizer, multiple),
        batch_size=args.batch_size,
        rank=0,
        world_size=1,
        max_batches=None,
        num_workers=0,
        pin_memory=False,
    )
    batches = loader
    if not args.no_progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    result = evaluate(
        model,
        batches,
        tokenizer=tokenizer,
        to_device=lambda b: model_inputs(model, b, torch.device(args.device)),
    )
    record = {"model": str(args.model), "data": args.data, "task": cfg.task,
              "examples": len(dataset), **result}  # fmt: skip
    text = json.dumps(record, indent=2)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0
