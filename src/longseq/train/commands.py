"""`longseq train`, `longseq evaluate` and `longseq predict`.

    longseq train --config FILE.yaml [--resume] [--set section.key=value ...]
    longseq evaluate --model DIR --data FILE|FOLDER [--task T] [--max-length N] [--out FILE.json]

`train` runs data parallel under torchrun too:

    torchrun --nproc_per_node 2 -m longseq.cli train --config FILE.yaml

`evaluate` scores a saved model (a run's `best/` or `last/`, or any save_pretrained folder)
on a data file with the trainer's own evaluation (`longseq.train.evaluation`), so its metrics
are those the run logged. The task and its data settings come from the run's config.yaml
beside the model folder when there is one, else from the model's architecture. A causal LM's
record also holds its loss and perplexity by position bucket (`longseq.models.positions`), and
a chart of them is drawn (--plot, or beside --out); a --max-length past the model's own
extends its positions first (`longify`, same mechanism), so it reads past its trained context.
A QA model's record holds, with --buckets, exact match and F1 by where the answer ends, every
example counted (those out of reach as misses): truncated and long models on one footing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from longseq import tasks
from longseq.argtypes import positive


def register(commands: argparse._SubParsersAction) -> None:
    _register_train(commands)
    _register_evaluate(commands)
    _register_predict(commands)


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
    p.add_argument(
        "--nproc-per-node",
        type=positive(int),
        default=1,
        metavar="N",
        help="run N processes on this machine, data (or sequence) parallel: torchrun's "
        "--standalone --nproc_per_node N, with an error said once and no launcher traceback",
    )
    p.set_defaults(func=run)


def _launch(args: argparse.Namespace) -> int:
    """`--nproc-per-node N`: this command again in N processes (`distributed.launch`)."""
    from longseq.train import distributed

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        distributed.report_error("--nproc-per-node under torchrun: use one launcher or the other")
        return 2
    argv = ["train", "--config", args.config, *(["--resume"] if args.resume else [])]
    argv += [x for o in args.overrides for x in ("--set", o)]
    argv += [*(["--out", args.out] if args.out else []), *(["--no-progress"] * args.no_progress)]
    return distributed.launch(args.nproc_per_node, argv)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.train import distributed, load_config, train

    if args.nproc_per_node > 1:
        return _launch(args)
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out={json.dumps(args.out)}")
    if args.no_progress:
        overrides.append("run.progress=false")
    try:
        config = load_config(args.config, overrides)
        result = train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        distributed.report_error(str(e))  # once, not once per torchrun process
        return 2

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
    p.add_argument(
        "--bucket-size",
        type=positive(int),
        help="causal LM: positions per bucket of the loss by position (default: an eighth "
        "of the model's max_length)",
    )
    p.add_argument(
        "--buckets",
        help="causal LM: bucket edges instead, comma-separated target positions "
        "(e.g. 1,1024,4096,8192,16384); QA: exact match and F1 by where the answer ends "
        "(e.g. 0,512,2048), every example of the file counted, answers beyond --max-length "
        "as misses",
    )
    p.add_argument(
        "--plot",
        help="causal LM: the loss-by-position chart (PNG; default: beside --out, same name)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_evaluate, evaluate_parser=p)


def _data_files(paths: list[str]) -> list[str]:
    """The data paths with each folder replaced by the .txt files in it (sorted)."""
    out: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(f) for f in Path(path).glob("*.txt"))
            if not found:
                raise FileNotFoundError(f"no .txt files in the folder {path}")
            out += found
        else:
            out.append(path)
    return out


def _extend(model: Any, max_length: int | None) -> Any:
    """`model`, longified (same mechanism and options) when --max-length exceeds its
    max_length: a longer position range, past the trained context."""
    if max_length is None or max_length <= model.config.max_length:
        return model
    from longseq.convert.longify import longify

    old = model.config.max_length
    model = longify(model, max_length, model.config.attention)
    print(f"note: positions extended from {old} to {max_length} (longify)", file=sys.stderr)
    return model


def _run_data(model_dir: str) -> Any:
    """The data section of the run that saved `model_dir` (its config.yaml beside or above the
    model folder), or None for a model saved outside a run."""
    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.train.config import load_config

    for candidate in (Path(model_dir) / "config.yaml", Path(model_dir).parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate).data
    return None


def _data_config(args: argparse.Namespace, model: object) -> object:
    """The data settings: the run's config.yaml (beside or above the model folder) with the
    command line's task and length on top, else defaults for the model's architecture."""
    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.train.config import DataConfig

    arch = model.config.architecture  # type: ignore[attr-defined]
    base: dict = {}
    run_data = _run_data(args.model)
    if run_data is not None:
        keys = ("task", "max_length", "text_field", "label_field", "mlm_probability")
        base = {k: getattr(run_data, k) for k in keys}
    if args.task:
        base["task"] = args.task
    if "task" not in base:
        default = tasks.for_architecture(arch)
        if default is None:
            raise ValueError(f"no task trains a {arch!r} model; pass --task")
        base["task"] = default.name
    if args.max_length:
        base["max_length"] = args.max_length
    base.setdefault("max_length", model.config.max_length)  # type: ignore[attr-defined]
    cfg = DataConfig(**base, random_offset=False)
    cfg.validate()
    return cfg


def run_evaluate(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.evaluate_parser
    # imported when the command runs: the CLI imports this module to build its parser
    import torch

    from longseq.data.collate import make_collate
    from longseq.data.tokenizers import load_tokenizer
    from longseq.models import from_pretrained
    from longseq.models.positions import bucket_edges, parse_edges
    from longseq.train.data import eval_loader
    from longseq.train.evaluation import evaluation_pass, model_inputs

    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        args.data = _data_files(args.data)
        edges = parse_edges(args.buckets) if args.buckets else None
        model = from_pretrained(args.model, device=args.device)
        trained = model.config.max_length  # marked on the chart when read past
        model = _extend(model, args.max_length)
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
        source = tasks.SplitSource(cfg, tokenizer, path, label_names=names)
        dataset = task.dataset(source)
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
        # tqdm only on a terminal
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    sums = evaluation_pass(
        model,
        batches,
        tokenizer=tokenizer,
        to_device=lambda b: model_inputs(model, b, torch.device(args.device)),
    )
    record = {"model": str(args.model), "data": args.data, "task": cfg.task,
              "examples": len(dataset), "max_length": cfg.max_length,
              **sums.result()}  # fmt: skip
    positions = getattr(sums, "positions", None)
    if edges is not None and positions is None:  # QA: by where the answer ends
        by_answer = task.scores_by_position(model, source, edges, args.batch_size)
        if by_answer is None:
            parser.error(f"--buckets: task {cfg.task!r} has no scores by position")
        record["by_position"] = by_answer
    plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if positions is not None:  # a causal LM: loss and perplexity by position bucket
        edges = edges or bucket_edges(
            cfg.max_length, args.bucket_size or max(1, cfg.max_length // 8)
        )
        record["by_position"] = positions.buckets(edges)
        if plot:
            from longseq.viz.positions import plot_loss_by_position

            title = f"{args.model}: {record['examples']} block(s) of {cfg.max_length} tokens"
            plot_loss_by_position(
                {"loss": record["by_position"]},
                plot,
                trained=trained if trained < cfg.max_length else None,
                title=title,
            )
    text = json.dumps(record, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    if positions is not None and plot:
        print(f"wrote {plot}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------- predict


def _register_predict(commands: Any) -> None:
    p = commands.add_parser(
        "predict",
        help="label documents, fill masks, tag tokens or answer questions with a saved model",
        description="Run a saved model on documents and print one JSON line per document "
        "(longseq.models.predict): the label of a classifier, the tokens of a masked LM's "
        "masks, the label of every token, or the answer span of a QA model. Each INPUT file "
        "is one document, or one per line if it is JSON lines (.jsonl); '-' or no INPUT "
        "reads standard input (JSON lines if it starts with '{', else one document).",
    )
    p.add_argument("--model", required=True, help="model folder (e.g. runs/NAME/best)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="document files, or '-'")
    p.add_argument("--question", help="QA: the question to ask of every document")
    p.add_argument("--text-field", default="text", help="JSON lines: the text field")
    p.add_argument("--top-k", type=positive(int), default=5, help="labels/tokens to list")
    p.add_argument("--mask-token", help="masked LM: the mask's text (default: the tokenizer's)")
    p.add_argument(
        "--max-length", type=positive(int), help="cut documents (default and at most: the model's)"
    )
    p.add_argument("--batch-size", type=positive(int), default=8, help="(default 8)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=positive(int), default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict, predict_parser=p)


def _documents(args: argparse.Namespace) -> Any:
    """Documents as dicts, lazily, in order: files, JSON lines, or standard input."""
    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.data.datasets import json_objects
    from longseq.models.commands import read_text

    def from_text(text: str, source: str, jsonl: bool) -> Any:
        if not jsonl:
            yield {"text": text, "source": source}
            return
        for number, record in json_objects(text.splitlines(), source):
            if args.text_field != "text" and args.text_field in record:
                record["text"] = record[args.text_field]
            yield {"source": f"{source}:{number}", **record}

    for name in args.inputs or ["-"]:
        if name == "-":
            text = sys.stdin.read()
            yield from from_text(text, "<stdin>", text.lstrip().startswith("{"))
        else:
            yield from from_text(read_text(name), name, name.endswith(".jsonl"))


def run_predict(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.predict_parser

    # imported when the command runs: the CLI imports this module to build its parser
    from longseq.models.commands import load_model
    from longseq.models.predict import Predictor

    try:
        model, tokenizer = load_model(args)
        run_data = _run_data(args.model)
        arch = model.config.architecture
        # the run's task, else (a model saved outside a run) the first task of its head
        task = tasks.get(run_data.task) if run_data else tasks.for_architecture(arch)
        predictor = Predictor(
            model,
            tokenizer,
            batch_size=args.batch_size,
            max_length=args.max_length,
            top_k=args.top_k,
            mask_token=args.mask_token,
            read=task.predict_input if task is not None else None,
        )
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    docs = _documents(args)
    if args.question is not None:
        docs = ({"question": args.question, **d} for d in docs)
    if not args.no_progress and sys.stderr.isatty():
        # tqdm only on a terminal
        from tqdm.auto import tqdm

        docs = tqdm(docs, desc="predict", unit="doc", leave=False)
    try:
        for record in predictor.predict(docs):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    except ValueError as e:
        parser.error(str(e))
    return 0
