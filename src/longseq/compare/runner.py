"""The experiment: train every mechanism alike, sweep time and memory, write the report.

    plan = Plan(task="listops", preset="default", out="results/compare")
    summary = run(plan)          # also what `longseq compare` does

Steps, each resumable:

1. data: built once into OUT/data (ListOps generated from the seed; real data from the
   installed packages), or read from --data;
2. training: for each mechanism (and each of the preset's `seeds` training seeds),
   `longseq.train.train` with the same model size, data, steps, batch, schedule and seed,
   only `model.attention` and its options differing, into OUT/runs/<mechanism> (with several
   seeds OUT/runs/<mechanism>/seed<S>), in a fresh process (`isolate`: peak memory is that
   run's own). A finished run is a line of OUT/results.jsonl and is skipped on --resume; an
   interrupted one continues from its checkpoint (its folder's `last`). Recall runs also
   score their best checkpoint on the test split per query distance;
3. the time/memory sweep over sequence lengths (`sweep`), OUT/sweep.jsonl;
4. the attention-pattern pictures (`longseq.viz.patterns.draw_all`), OUT/patterns;
5. OUT/report.md with the table, plus curves.png and sweep.png (`report`).

OUT/plan.json records the settings; --resume refuses a folder made with other settings.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longseq import attention, tasks
from longseq.bench.attention import machine_info
from longseq.compare import isolate, report, sweep, zero_shot
from longseq.compare import presets as P
from longseq.compare import tasks as T
from longseq.compare.isolate import peak_memory
from longseq.compare.report import PERCENT, fmt_metric
from longseq.models import ModelConfig, from_pretrained
from longseq.train import TrainConfig, train
from longseq.train.checkpoint import STATE_JSON
from longseq.train.config import DataConfig
from longseq.viz import patterns

RESULTS = "results.jsonl"
SWEEP = "sweep.jsonl"
PLAN = "plan.json"


@dataclass
class Plan:
    """What to compare. `preset` is a name or a `Preset` (e.g. with overrides applied)."""

    out: str | Path
    task: str = "recall"
    preset: str | P.Preset | None = None  # None: the task's preset
    mechanisms: list[str] | None = None  # None: the five (those with a causal form for LMs)
    lengths: list[int] | None = None  # sweep lengths (None: the preset's)
    data: str | Path | None = None  # a folder with the task's splits (None: build them)
    resume: bool = False
    sweep: bool = True
    device: str = "auto"
    progress: bool = True
    command: str = ""  # the command line, for the report
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.task_spec: tasks.CompareTask = T.get(self.task)
        self.task_entry: tasks.Task = tasks.get(self.task_spec.task)
        self.preset_spec: P.Preset = (
            self.preset
            if isinstance(self.preset, P.Preset)
            else P.get(self.preset or self.task_spec.preset)
        )
        causal = self.task_entry.causal
        if self.mechanisms is None:
            compared = P.default_mechanisms()
            self.mechanisms = [
                m for m in compared if not causal or attention.get(m).supports_causal
            ]
            dropped = [m for m in compared if m not in self.mechanisms]
            if dropped:
                self.notes.append(
                    f"left out {', '.join(dropped)}: no causal form, so no causal language model"
                )
        if not self.mechanisms:
            raise ValueError("no mechanisms to compare; give at least one in --mechanisms")
        unknown = [m for m in self.mechanisms if m not in attention.mechanisms()]
        if unknown:
            raise ValueError(
                f"unknown mechanism(s) {', '.join(unknown)}; valid: "
                + ", ".join(attention.mechanisms())
            )
        if len(set(self.mechanisms)) != len(self.mechanisms):
            raise ValueError(f"a mechanism is listed twice in {self.mechanisms}")
        if causal:
            bad = [m for m in self.mechanisms if not attention.get(m).supports_causal]
            if bad:
                raise ValueError(
                    f"{', '.join(bad)} attention has no causal form, so it cannot train the "
                    f"causal language model of task {self.task!r}; leave it out of --mechanisms"
                )
        if self.lengths is not None and (
            not self.lengths or any(int(n) <= 0 for n in self.lengths)
        ):
            raise ValueError(f"sweep lengths must be positive integers, got {self.lengths}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def seeds(self) -> list[int]:
        """The training seeds of every mechanism (the data's seed is the preset's `seed`)."""
        p = self.preset_spec
        return [p.seed + i for i in range(p.seeds)]

    def run_dir(self, mechanism: str, seed: int) -> Path:
        base = Path(self.out) / "runs" / mechanism
        return base if self.preset_spec.seeds == 1 else base / f"seed{seed}"

    @property
    def sweep_lengths(self) -> list[int]:
        return sorted(set(self.lengths or self.preset_spec.sweep_lengths))

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to reuse finished runs."""
        return {
            "task": self.task,
            "preset": _settings_only(self.preset_spec.to_dict()),
            "data": str(self.data) if self.data is not None else None,
        }


def _settings_only(preset: dict[str, Any]) -> dict[str, Any]:
    """A preset without its description (rewording a summary changes no result) nor the stem
    fields at their no-op values (they came later: folders made before them still resume)."""
    stem = P.STEM_DEFAULTS
    return {k: v for k, v in preset.items() if k != "summary" and not (k in stem and v == stem[k])}


# ----------------------------------------------------------------------------- training
def train_config(
    plan: Plan, data: tasks.Splits, mechanism: str, seed: int | None = None
) -> dict[str, Any]:
    """The trainer's config for one mechanism: everything but the attention (and the
    training seed, default the preset's) is shared."""
    p, task = plan.preset_spec, plan.task_spec
    seed = p.seed if seed is None else seed
    return {
        "model": {
            "hidden_size": p.hidden_size,
            "num_layers": p.num_layers,
            "num_heads": p.num_heads,
            "intermediate_size": p.intermediate_size,
            "dropout": p.dropout,
            "pooling": p.pooling,
            "attention": mechanism,
            "attention_options": P.mechanism_options(p, mechanism, data.max_length),
            **P.stem_fields(p),
        },
        "data": {
            "task": task.task,
            "train": data.train,
            "val": data.val,
            "test": data.test,
            "max_length": data.max_length,
            "batch_size": p.batch_size,
        },
        "optim": {
            "lr": p.lr,
            "weight_decay": p.weight_decay,
            "warmup_steps": min(p.warmup_steps, p.steps),
            "schedule": "linear",
            "max_steps": p.steps,
            "grad_clip": 1.0,
        },
        "run": {
            "seed": seed,
            "out": str(plan.run_dir(mechanism, seed)),
            "eval_every": p.eval_every,
            "eval_batches": p.eval_batches,
            "log_every": max(1, min(10, p.eval_every)),
            "metric": task.metric,
            "precision": p.precision,
            "device": plan.device,
            "threads": p.threads,
            # without a terminal the runner prints its own line per evaluation (`echo`)
            "progress": plan.progress and sys.stderr.isatty(),
            "tensorboard": False,
        },
    }


def train_mechanism(config: dict[str, Any], mechanism: str, echo: bool) -> dict[str, Any]:
    """(In a fresh process) train one mechanism, resuming its checkpoint; return its record."""
    cfg = TrainConfig.from_dict(config)
    metric = cfg.run.metric
    cuda = cfg.run.device != "cpu" and torch.cuda.is_available()

    def show(record: dict[str, Any]) -> None:  # a line per evaluation when there is no bar
        if echo and record.get("kind") == "eval" and record.get("split") == "val":
            print(
                f"  {mechanism} step {record['step']}: val {metric} {record[metric]:.4f}",
                file=sys.stderr,
                flush=True,
            )

    resume = (Path(cfg.run.out) / "last" / STATE_JSON).is_file()
    measure = peak_memory("cuda" if cuda else "cpu")
    start = time.perf_counter()
    result = train(cfg, resume=resume, callbacks=[show])
    peak = result.peak_memory_bytes if cuda else measure()
    keep = ("step", "loss", metric)
    by_distance = None
    if result.best is not None:  # the task's scores by distance, with the best weights
        task = tasks.get(cfg.data.task)
        best = from_pretrained(Path(cfg.run.out) / "best")
        by_distance = task.by_distance(best, cfg.data, task.tokenizer(cfg.data))
    return {
        "mechanism": mechanism,
        "seed": cfg.run.seed,
        "status": "ok",
        "attention_options": cfg.model.get("attention_options", {}),
        "metric": metric,
        "val": result.best[metric] if result.best else None,
        "test": result.test[metric] if result.test else None,
        "test_metrics": result.test,  # every metric of the test split (per-class F1, ...)
        "best_step": result.best["step"] if result.best else None,
        "steps": result.step,
        "train_seconds": result.train_seconds,
        "tokens_per_s": result.tokens_per_second,
        "peak_memory_mb": peak / 2**20 if peak is not None else None,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "resumed": resume,
        "wall_seconds": time.perf_counter() - start,
        "evals": [{k: e[k] for k in keep if k in e} for e in result.evals],
        "model_config": result.model_config.to_dict(),
        "device": "cuda" if cuda else "cpu",
        "threads": cfg.run.threads,
        # the task's by_distance rows (recall: [distance, correct, total]; qa: [distance,
        # exact, f1] per example), or None
        "test_by_distance": by_distance,
    }


# ----------------------------------------------------------------------------- state
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
    return out


def latest(records: list[dict[str, Any]]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The last record of each (mechanism, seed)."""
    return {(r["mechanism"], r.get("seed")): r for r in records}


def _check_folder(plan: Plan) -> None:
    out = Path(plan.out)
    plan_file = out / PLAN
    if not plan_file.is_file():
        if out.is_dir() and (out / RESULTS).exists():
            raise ValueError(f"{out} holds results but no {PLAN}; choose another --out")
        return
    old = json.loads(plan_file.read_text())
    if not plan.resume:
        raise ValueError(
            f"{out} already holds a compare run; pass --resume to continue it (finished "
            "mechanisms are kept), or choose another --out"
        )
    new, then = plan.identity(), dict(old.get("identity", {}))
    if isinstance(then.get("preset"), dict):  # folders written before the summary was dropped
        then["preset"] = _settings_only(then["preset"])
    if then != new:
        diff = _differences(then, new)
        raise ValueError(
            f"--resume: {out} was made with other settings ({'; '.join(diff[:4])}); "
            "use the same task, preset and options, or choose another --out"
        )


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [f"{where}: {old!r} then, {new!r} now"]


def machine() -> dict[str, Any]:
    info = machine_info("cuda" if torch.cuda.is_available() else "cpu")
    info["memory_gb"] = None
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


# ----------------------------------------------------------------------------- the run
@dataclass
class Summary:
    out: Path
    results: list[dict[str, Any]]  # one per mechanism and seed, in plan order
    sweep: list[dict[str, Any]]
    table: str
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.results)


def run(plan: Plan, log: Callable[[str], None] | None = None) -> Summary:
    """Run (or resume) the comparison; write everything to plan.out; return the summary."""

    def say(text: str) -> None:
        (log or (lambda t: print(t, file=sys.stderr, flush=True)))(text)

    start = time.perf_counter()
    out = Path(plan.out)
    _check_folder(plan)
    out.mkdir(parents=True, exist_ok=True)
    preset, task = plan.preset_spec, plan.task_spec
    mechanisms = list(plan.mechanisms or [])
    say(
        f"compare: task {task.name}, preset {preset.name}, mechanisms {', '.join(mechanisms)}; "
        f"output in {out}"
    )
    for note in plan.notes:
        say(f"note: {note}")
    data = T.prepare(
        task,
        preset,
        preset.seed,
        out / "data",
        Path(plan.data) if plan.data is not None else None,
        log=say,
    )
    previous = json.loads((out / PLAN).read_text()) if (out / PLAN).is_file() else {}
    state = {
        "identity": plan.identity(),
        "mechanisms": mechanisms,
        "command": plan.command,
        "data": {"max_length": data.max_length, **data.info},
        "machine": machine(),
        "started": previous.get("started", time.strftime("%Y-%m-%d %H:%M:%S")),
    }
    (out / PLAN).write_text(json.dumps(state, indent=1) + "\n")

    if plan.task_entry.zero_shot:  # a pre-trained model scored as it is: no training
        results = zero_shot.run(plan, list(data.info["documents"]), say)
        wall = time.perf_counter() - start
        table = zero_shot.write_report(out, plan, state, results, wall)
        return Summary(out, results, [], table, wall)

    # 2. training, one fresh process per mechanism and seed
    done = {k: r for k, r in latest(read_jsonl(out / RESULTS)).items() if r["status"] == "ok"}
    echo = not (plan.progress and sys.stderr.isatty())  # the trainer's bar shows otherwise
    jobs = [(m, s) for m in mechanisms for s in plan.seeds]
    for i, (m, seed) in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {m}" + (f" seed {seed}" if len(plan.seeds) > 1 else "")
        if (m, seed) in done:
            say(f"{head}: finished earlier, kept ({_brief(done[m, seed], task)})")
            continue
        config = train_config(plan, data, m, seed)
        say(
            f"{head}: training {preset.steps} steps, batch {preset.batch_size}, "
            f"{P.describe_options(preset, m, data.max_length)}"
        )
        t0 = time.perf_counter()
        try:
            record = isolate.call(train_mechanism, config, m, echo)
        except isolate.ChildError as err:
            record = {
                "mechanism": m,
                "seed": seed,
                "status": "failed",
                "error": str(err),
                "wall_seconds": time.perf_counter() - t0,
            }
            say(f"{head}: FAILED: {err}")
            trace = getattr(err, "trace", "")
            if trace:
                plan.run_dir(m, seed).mkdir(parents=True, exist_ok=True)
                (plan.run_dir(m, seed) / "error.txt").write_text(trace)
        else:
            say(f"{head}: {_brief(record, task)}")
        record["config"] = config
        with (out / RESULTS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    results = [latest(read_jsonl(out / RESULTS))[job] for job in jobs]

    # 3. time and memory against length
    sweep_records: list[dict[str, Any]] = []
    if plan.sweep:
        sweep_records = _sweep(plan, data, results, say)

    # 4. the attention patterns

    drawn = list(mechanisms)  # each class's `picture` (by default its token mask)
    pictures = [out / "patterns" / f"{m}.png" for m in drawn] + [out / "patterns" / "sheet.png"]
    same = previous.get("mechanisms") == mechanisms and all(p.is_file() for p in pictures)
    if not same:  # the pictures depend only on the mechanisms: kept on resume
        warn = lambda t: say(f"warning: {t}")  # noqa: E731
        patterns.draw_all(out / "patterns", n=64, mechanisms=drawn, warn=warn)

    # 5. report
    wall = time.perf_counter() - start
    table = report.write(out, plan, state, results, sweep_records, wall)
    return Summary(out, results, sweep_records, table, wall)


def _brief(record: dict[str, Any], task: tasks.CompareTask) -> str:
    if record.get("status") != "ok":
        return f"failed: {record.get('error')}"

    return (
        f"val {fmt_metric(record['val'], task)}, test {fmt_metric(record['test'], task)} "
        f"{'%' if task.metric in PERCENT else 'bits/byte'}, "
        f"{record['tokens_per_s']:,.0f} tokens/s, {record['train_seconds']:.0f} s"
    )


def _sweep(
    plan: Plan, data: tasks.Splits, results: list[dict[str, Any]], say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The sweep's records: reused from OUT/sweep.jsonl when they cover this plan."""
    out, preset = Path(plan.out), plan.preset_spec
    lengths = plan.sweep_lengths
    trained = {r["mechanism"]: r for r in results if r["status"] == "ok"}
    base = _base_model_config(plan, data, trained)
    configs = {m: _config_at(base, plan, m) for m in plan.mechanisms or []}
    setting = {
        "batch": preset.sweep_batch,
        "repeats": preset.sweep_repeats,
        "lengths": lengths,
        "configs": {m: c(lengths[-1]) for m, c in configs.items()},
    }
    old = read_jsonl(out / SWEEP)
    if old and old[0].get("setting") == setting:
        say("sweep: finished earlier, kept")
        return old[1:]
    say(
        f"sweep: forward+backward time and memory at n = {', '.join(map(str, lengths))} "
        f"(batch {preset.sweep_batch}, median of {preset.sweep_repeats})"
    )
    device = "cuda" if plan.device != "cpu" and _cuda() else "cpu"
    records = sweep.run(
        configs,
        lengths,
        batch=preset.sweep_batch,
        repeats=preset.sweep_repeats,
        device=device,
        threads=preset.threads,
        max_seconds=preset.sweep_max_seconds,
        progress=plan.progress,
    )
    with (out / SWEEP).open("w", encoding="utf-8") as f:
        f.write(json.dumps({"setting": setting}) + "\n")
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def _cuda() -> bool:
    return torch.cuda.is_available()


def _base_model_config(
    plan: Plan, data: tasks.Splits, trained: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The trained models' config (vocabulary, labels and sizes), attention aside."""
    for r in trained.values():
        return dict(r["model_config"])
    # no run finished: the fields the trainer would fill in, from the task's own tokenizer

    task = plan.task_entry
    tok = task.tokenizer(DataConfig(task=task.name, train=data.train))
    extra: dict[str, Any] = {"pad_token_id": tok.pad_id, "cls_token_id": tok.cls_id}
    if getattr(tok, "type_vocab_size", 0):
        extra["type_vocab_size"] = tok.type_vocab_size
    # the model section every run trains with (one source for the preset's sizes)
    model = train_config(plan, data, attention.baseline())["model"]
    return ModelConfig(
        **model,
        **extra,
        architecture=task.architecture,
        vocab_size=tok.vocab_size,
        num_labels=data.info.get("num_classes", 2),
        max_length=data.max_length,
    ).to_dict()


def _config_at(base: dict[str, Any], plan: Plan, mechanism: str) -> Callable[[int], dict]:
    def at(n: int) -> dict[str, Any]:
        return {
            **base,
            "attention": mechanism,
            "attention_options": P.mechanism_options(plan.preset_spec, mechanism, n),
            "layer_attention": None,
            "max_length": n,
        }

    return at


def command_line(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "longseq " + " ".join(shlex.quote(a) for a in args)


__all__ = ["PLAN", "RESULTS", "SWEEP", "Plan", "Summary", "run", "train_config"]
