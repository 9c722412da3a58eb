"""`longseq compare --contexts 512,2048,8192`: does a longer context pay, and for which mechanism?

The same comparison (every mechanism trained alike) is run once per context length n, in
OUT/context-n, an ordinary compare folder (its own report.md, results.jsonl, --resume). At
context n the preset's `text_length` is n and its batch is scaled so that every run sees the
same tokens per step, the preset's batch_size x text_length:

    batch(n) = max(1, round(batch_size * text_length / n))

so a longer context is not a larger training budget. The time/memory sweep runs once, with the
longest context. OUT/contexts.md and OUT/contexts.png then put the task's test metric against
n, one line per mechanism (mean over the seeds, bars +- one standard deviation when there are
two or more), and say for each mechanism whether its longest context beats its shortest by
more than the noise (twice the larger standard deviation of the two; with one seed there is no
noise estimate, and the report says so).

Only tasks whose sequence length is the preset's `text_length` (genome-bases, the text
classification and LM tasks) have a context axis; the others are refused before training.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longseq.compare import runner
from longseq.compare import tasks as T
from longseq.compare.report import PERCENT
from longseq.compare.runner import Plan, Summary

CONTEXTS_MD = "contexts.md"
CONTEXTS_PNG = "contexts.png"
CONTEXTS_JSONL = "contexts.jsonl"


def batch_at(preset: Any, n: int) -> int:
    """The batch at context `n` that keeps the preset's tokens per step."""
    return max(1, round(preset.batch_size * preset.text_length / n))


def plans(base: Plan, contexts: list[int]) -> list[Plan]:
    """One ordinary plan per context length, in OUT/context-n (the sweep with the longest)."""
    if not contexts or any(n <= 0 for n in contexts):
        raise ValueError(f"--contexts: lengths must be positive integers, got {contexts}")
    if len(set(contexts)) != len(contexts):
        raise ValueError(f"--contexts: a length is listed twice in {contexts}")
    preset = base.preset_spec
    out = []
    for n in sorted(contexts):
        at_n = dataclasses.replace(preset, text_length=n, batch_size=batch_at(preset, n))
        out.append(
            dataclasses.replace(
                base,
                out=Path(base.out) / f"context-{n}",
                preset=at_n,
                sweep=base.sweep and n == max(contexts),
                notes=list(base.notes),
            )
        )
    return out


def check_task(plan: Plan, log: Callable[[str], None]) -> None:
    """Refuse a task whose sequence length does not follow `text_length`."""
    n = plan.preset_spec.text_length
    folder = Path(plan.out) / "data"
    given = Path(plan.data) if plan.data is not None else None
    splits = T.prepare(plan.task_spec, plan.preset_spec, plan.preset_spec.seed, folder, given, log)
    if splits.max_length != n:
        raise ValueError(
            f"--contexts: task {plan.task!r} has sequences of {splits.max_length} tokens "
            f"whatever the preset's text_length ({n}), so it has no context axis; use it with "
            "a task whose length follows text_length (e.g. genome-bases)"
        )


def run(base: Plan, contexts: list[int], log: Callable[[str], None] | None = None) -> Summary:
    """Run (or resume) the comparison at every context; write the context report."""

    def say(text: str) -> None:
        (log or (lambda t: print(t, file=sys.stderr, flush=True)))(text)

    parts = plans(base, contexts)
    check_task(parts[0], say)
    summaries = []
    for part in parts:
        say(
            f"context {part.preset_spec.text_length}: batch {part.preset_spec.batch_size} "
            f"({part.preset_spec.batch_size * part.preset_spec.text_length} tokens per step)"
        )
        summaries.append(runner.run(part, log))
    rows = collect(parts, [s.results for s in summaries])
    out = Path(base.out)
    with (out / CONTEXTS_JSONL).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    table = write_report(out, base, rows)
    chart(out / CONTEXTS_PNG, base.task_spec, rows)
    wall = sum(s.wall_seconds for s in summaries)
    return Summary(out, [r for s in summaries for r in s.results], [], table, wall)


def collect(parts: list[Plan], results: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (mechanism, context): the test metric of each seed, mean and spread, and
    the mean of every other test metric the runs recorded (per-class F1, say)."""
    rows = []
    for part, records in zip(parts, results, strict=True):
        n = part.preset_spec.text_length
        for m in part.mechanisms or []:
            ok = [r for r in records if r["mechanism"] == m and r.get("status") == "ok"]
            values = [r["test"] for r in ok if r.get("test") is not None]
            others: dict[str, list[float]] = {}
            for r in ok:
                for k, v in (r.get("test_metrics") or {}).items():
                    if isinstance(v, int | float):
                        others.setdefault(k, []).append(float(v))
            rows.append(
                {
                    "mechanism": m,
                    "context": n,
                    "batch_size": part.preset_spec.batch_size,
                    "values": values,
                    "mean": statistics.fmean(values) if values else None,
                    "sd": statistics.stdev(values) if len(values) > 1 else None,
                    "failed": sum(r.get("status") != "ok" for r in records if r["mechanism"] == m),
                    "test_metrics": {k: statistics.fmean(v) for k, v in others.items()},
                    "label_names": next(
                        (r["model_config"].get("label_names") for r in ok if "model_config" in r),
                        None,
                    ),
                }
            )
    return rows


def verdict(short: dict[str, Any], long: dict[str, Any], task: Any) -> str:
    """Whether the longest context beats the shortest by more than the noise."""
    if short["mean"] is None or long["mean"] is None:
        return "not measured (a run failed)"
    gain = long["mean"] - short["mean"]
    if task.lower_is_better:
        gain = -gain
    sds = [r["sd"] for r in (short, long) if r["sd"] is not None]
    if not sds:
        return f"{_amount(gain, task, sign=True)} (one seed: no noise estimate)"
    noise = 2 * max(sds)
    said = f"{_amount(gain, task, sign=True)}, noise {_amount(noise, task)}"
    if gain > noise:
        return f"helps: {said}"
    if gain < -noise:
        return f"hurts: {said}"
    return f"within the noise: {said}"


def _amount(value: float, task: Any, sign: bool = False) -> str:
    """A metric value or difference as the reports show it (points of % or the raw value)."""
    if task.metric in PERCENT:
        return f"{100 * value:{'+' if sign else ''}.1f}" + (" points" if sign else "")
    return f"{value:{'+' if sign else ''}.3f}"


def _cell(row: dict[str, Any], task: Any) -> str:
    if row["mean"] is None:
        return "failed" if row["failed"] else "–"
    text = _amount(row["mean"], task)
    return text if row["sd"] is None else f"{text} ± {_amount(row['sd'], task)}"


def write_report(out: Path, base: Plan, rows: list[dict[str, Any]]) -> str:
    task = base.task_spec
    contexts = sorted({r["context"] for r in rows})
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    at = {(r["mechanism"], r["context"]): r for r in rows}
    head = f"| mechanism | {' | '.join(f'{n:,}' for n in contexts)} | longest vs shortest |"
    lines = [head, "|---|" + "---:|" * len(contexts) + "---|"]
    for m in mechanisms:
        cells = [_cell(at[m, n], task) for n in contexts]
        call = verdict(at[m, contexts[0]], at[m, contexts[-1]], task)
        lines.append(f"| {m} | {' | '.join(cells)} | {call} |")
    table = "\n".join(lines)
    seeds = base.preset_spec.seeds
    preset = base.preset_spec
    per_class = _per_class(rows, mechanisms, contexts)
    text = [
        f"# Context length: task {task.name}",
        "",
        f"{task.description}. Test {task.metric} "
        + ("(%, mean" if task.metric in PERCENT else "(mean")
        + (f" ± standard deviation over {seeds} seeds" if seeds > 1 else ", one seed")
        + ") by context length (tokens per sequence), every mechanism trained alike "
        f"({preset.steps} steps of {preset.batch_size * preset.text_length:,} tokens at every "
        "context: the batch shrinks as the context grows).",
        "",
        table,
        "",
        *per_class,
        f"Each context's own report: `context-N/report.md`. Chart: {CONTEXTS_PNG}. "
        f"Command: `{base.command}`",
        "",
    ]
    (out / CONTEXTS_MD).write_text("\n".join(text))
    return table


def _per_class(rows: list[dict[str, Any]], mechanisms: list[str], contexts: list[int]) -> list[str]:
    """A per-class F1 table where the runs recorded one (f1_0, f1_1, ...), headed by the
    class names the models were trained with (f1_k where a run recorded none)."""
    keys = sorted(
        {k for r in rows for k in r["test_metrics"] if k.startswith("f1_")},
        key=lambda k: int(k[3:]),
    )
    if not keys:
        return []
    at = {(r["mechanism"], r["context"]): r for r in rows}
    names = next((r["label_names"] for r in rows if r.get("label_names")), None) or []
    heads = [names[int(k[3:])] if int(k[3:]) < len(names) else k for k in keys]
    lines = [
        "Per-class test F1 (%, mean over the seeds):",
        "",
        "| mechanism | context | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for m in mechanisms:
        for n in contexts:
            tm = at[m, n]["test_metrics"]
            cells = [f"{100 * tm[k]:.1f}" if k in tm else "–" for k in keys]
            lines.append(f"| {m} | {n:,} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def chart(path: Path, task: Any, rows: list[dict[str, Any]]) -> None:
    """The test metric against the context length, one line per mechanism."""
    # imported here: matplotlib is only needed when a chart is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in dict.fromkeys(r["mechanism"] for r in rows):
        mine = sorted(
            (r for r in rows if r["mechanism"] == m and r["mean"] is not None),
            key=lambda r: r["context"],
        )
        if not mine:
            continue
        xs = [r["context"] for r in mine]
        ys = [r["mean"] for r in mine]
        errs = [r["sd"] if r["sd"] is not None else 0.0 for r in mine]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"test {task.metric}")
    ax.set_title(f"{task.name}: does a longer context pay?")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["batch_at", "check_task", "collect", "plans", "run", "verdict", "write_report"]
