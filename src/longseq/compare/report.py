"""The comparison's report: one markdown table, the validation curves and the sweep plots.

report.md holds, per mechanism: the task metric on validation (best evaluation) and test (the
best checkpoint's weights), training throughput (real tokens per second of training, evaluation
excluded), peak memory of the training process above its start, parameters and training
time; for ListOps the Long Range Arena paper's test accuracy beside ours. Then curves.png
(validation metric against step, every mechanism on one chart), sweep.png (forward+backward
time and peak memory against sequence length) with their tables, and the attention patterns.
"""

from __future__ import annotations

import importlib
import itertools
import time
from pathlib import Path
from typing import Any

from longseq import attention
from longseq.compare import presets as P
from longseq.tasks import CompareTask, Task

Record = dict[str, Any]
PERCENT = ("accuracy", "f1", "exact_match", "macro_f1", "auroc")  # metrics shown in %


def fmt_metric(value: float | None, task: CompareTask) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{100 * value:.1f}" if task.metric in PERCENT else f"{value:.3f}"


def _num(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def by_mechanism(results: list[Record]) -> dict[str, list[Record]]:
    """The records of each mechanism (one per seed), in plan order."""
    out: dict[str, list[Record]] = {}
    for r in results:
        out.setdefault(r["mechanism"], []).append(r)
    return out


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def fmt_seeds(values: list[float | None], task: CompareTask) -> str:
    """The mean over seeds, and each seed's value in brackets when there are several."""
    ok = [v for v in values if v is not None]
    if not ok:
        return "–"
    m = fmt_metric(mean(ok), task)
    return m if len(ok) == 1 else f"{m} ({', '.join(fmt_metric(v, task) for v in ok)})"


def table(results: list[Record], task: CompareTask, preset: P.Preset, max_length: int) -> str:
    """The one table: a row per mechanism (means over seeds; each seed's value in brackets)."""
    units = {"accuracy": "acc. %", "f1": "F1 %", "macro_f1": "macro-F1 %"}
    unit = units.get(task.metric, "bits/byte")
    reference = dict(task.reference)  # published results (ListOps: the LRA paper's)
    head = [
        "mechanism",
        "settings",
        f"val {unit}",
        f"test {unit}",
        *([task.reference_label] if reference else []),
        "train tokens/s",
        "peak memory MiB",
        "parameters",
        "train time",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for m, runs in by_mechanism(results).items():
        opts = P.describe_options(preset, m, max_length)
        bad = [r for r in runs if r["status"] != "ok"]
        if bad:
            cells = [m, opts, f"failed: {bad[0].get('error', '?')}"] + ["–"] * (len(head) - 3)
        else:
            cells = [
                m,
                opts,
                fmt_seeds([r["val"] for r in runs], task),
                fmt_seeds([r["test"] for r in runs], task),
                *([_num(reference.get(m), 2) if m in reference else "–"] if reference else []),
                _num(mean([r["tokens_per_s"] for r in runs])),
                _num(mean([r["peak_memory_mb"] for r in runs])),
                _num(runs[0]["parameters"]),
                _duration(mean([r["train_seconds"] for r in runs])),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_tables(records: list[Record]) -> str:
    """Forward+backward median ms and peak MiB, a row per mechanism, a column per length."""
    lengths = sorted({r["n"] for r in records})
    names = list(dict.fromkeys(r["mechanism"] for r in records))
    cell = {(r["mechanism"], r["n"]): r for r in records if r["mode"] == "fwd+bwd"}

    def grid(key: str, title: str) -> list[str]:
        out = [
            f"| {title} | " + " | ".join(f"n={n}" for n in lengths) + " |",
            "|---|" + "---:|" * len(lengths),
        ]
        for m in names:
            vals = []
            for n in lengths:
                r = cell.get((m, n))
                v = r.get(key) if r and r["status"] == "ok" else None
                text = "skipped" if r and r["status"] != "ok" else _num(v, 1 if v and v < 10 else 0)
                if key == "median_ms" and r and r.get("min_ms") is not None:
                    low = r["min_ms"]
                    text += f" ({_num(low, 1 if low < 10 else 0)})"
                    if r.get("under_load"):
                        text += " *"
                vals.append(text)
            out.append(f"| {m} | " + " | ".join(vals) + " |")
        return out

    parts = [*grid("median_ms", "fwd+bwd ms: median (fastest)"), "", *grid("peak_mb", "peak MiB")]
    loaded = [r for r in records if r.get("under_load") and r["mode"] == "fwd+bwd"]
    if loaded:
        parts += [
            "",
            "\\* measured under load: the calls still spread by more than "
            f"{100 * 0.25:.0f}% after the extra rounds, or the time fell as n grew "
            f"({len(loaded)} point(s)); the fastest call is the better estimate there.",
        ]
    skipped = {}
    for r in records:
        if r["status"] != "ok" and r["mode"] == "fwd+bwd":
            skipped.setdefault((r["mechanism"], r["reason"]), []).append(r["n"])
    if skipped:
        parts += ["", "Skipped:"]
        parts += [
            f"- {m} at n={', '.join(map(str, ns))}: {why}" for (m, why), ns in skipped.items()
        ]
    return "\n".join(parts)


def colours(names: list[str]) -> dict[str, Any]:
    # matplotlib (heavy, for the pictures only) on first use
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10").colors
    compared = P.default_mechanisms()
    order = [*compared, *sorted(set(names) - set(compared))]
    baseline = attention.baseline()
    return {m: ("black" if m == baseline else palette[i % 10]) for i, m in enumerate(order)}


def plot_curves(
    results: list[Record], task: CompareTask, path: Path, lines: dict[str, float | None]
) -> None:
    """Validation metric against training step, every mechanism on one chart."""
    # matplotlib (heavy, for the pictures only) on first use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = colours([r["mechanism"] for r in results])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    scale = 100.0 if task.metric in PERCENT else 1.0
    labelled: set[str] = set()
    for r in results:
        evals = [e for e in r.get("evals", []) if task.metric in e]
        if r["status"] != "ok" or not evals:
            continue
        xs = [e["step"] for e in evals]
        ys = [scale * e[task.metric] for e in evals]
        m = r["mechanism"]
        label = None if m in labelled else m  # one legend entry per mechanism, a line per seed
        labelled.add(m)
        ax.plot(xs, ys, "-o", ms=3, color=colour[m], label=label, alpha=0.85)
    for (label, value), style in zip(lines.items(), ("--", ":"), strict=False):
        if value is not None:
            ax.axhline(value, color="0.5", lw=0.9, ls=style, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(
        f"validation {task.metric} (%)" if task.metric in PERCENT else "validation bits/byte"
    )
    ax.set_title(f"{task.description}: validation {task.metric} during training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(records: list[Record], path: Path, title: str) -> None:
    """Two log-log panels: forward+backward time and peak memory against sequence length."""
    # matplotlib (heavy, for the pictures only) on first use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ok = [r for r in records if r["mode"] == "fwd+bwd" and r["status"] == "ok"]
    names = list(dict.fromkeys(r["mechanism"] for r in records))
    lengths = sorted({r["n"] for r in records})
    colour = colours(names)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in (
        (axes[0], "median_ms", "forward+backward time (ms)"),
        (axes[1], "peak_mb", "peak memory, forward+backward (MiB)"),
    ):
        for m in names:
            pts = sorted((r["n"], r[key]) for r in ok if r["mechanism"] == m and r[key])
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "-o", ms=4, color=colour[m], label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths])
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(
    out: Path,
    plan: Any,
    state: dict[str, Any],
    results: list[Record],
    sweep: list[Record],
    wall_seconds: float,
) -> str:
    """Write report.md, curves.png and sweep.png to `out`; return the table."""
    task, entry, preset = plan.task_spec, plan.task_entry, plan.preset_spec
    info = state["data"]
    the_table = table(results, task, preset, info["max_length"])
    plot_curves(results, task, out / "curves.png", entry.chart_lines(info))
    m = state["machine"]
    lines = [
        f"# longseq compare: {task.description}, preset `{preset.name}`",
        "",
        f"`{state.get('command') or 'longseq compare'}`",
        "",
        f"Machine: {m.get('processor')}, {m.get('cpu_count')} cores"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", {preset.threads or 'default'} torch threads; torch {m.get('torch')}, "
        f"longseq {m.get('longseq')}. Started {state.get('started')}, report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; this invocation took {_duration(wall_seconds)}.",
        "",
        "## Results",
        "",
        the_table,
        "",
        _settings(task, entry, preset, info),
        "",
    ]
    if entry.report_section:  # the task's own section ("module:function")
        module, name = entry.report_section.split(":")
        section = getattr(importlib.import_module(module), name)
        lines += section(out, plan, info, results, sweep)
    lines += ["![validation curves](curves.png)", ""]
    if sweep:
        b = sweep[0]
        title = (
            f"{entry.architecture}, hidden {preset.hidden_size}, {preset.num_layers} layers, "
            f"{preset.num_heads} heads, batch {b['batch']}, {b['device']}, "
            f"{b['threads'] or 'default'} threads"
        )
        plot_sweep(sweep, out / "sweep.png", title)
        lines += [
            "## Time and memory against sequence length",
            "",
            f"Forward+backward of each model above (fresh weights, {b['batch']} sequence(s) of "
            f"n random tokens, no padding): median and fastest of {preset.sweep_repeats} or "
            "more calls after one warm-up (more while the calls spread by over 25%), all "
            "models alternating in one process; peak memory above the weights and input, in "
            "a fresh process per model and length. Full output in sweep.jsonl.",
            "",
            sweep_tables(sweep),
            "",
            "![time and memory against length](sweep.png)",
            "",
        ]
    lines += [
        "## Attention patterns",
        "",
        "Which (query, key) pairs each mechanism scores, at n = 64 (`longseq patterns`).",
        "",
        "![attention patterns](patterns/sheet.png)",
        "",
        "## Files",
        "",
        "- `results.jsonl`: one line per trained mechanism (metrics, throughput, memory, every "
        "evaluation, the model and training configs); the last line of a mechanism counts",
        "- `sweep.jsonl`: one line per mechanism, length and mode (forward, fwd+bwd)",
        "- `runs/<mechanism>/`: the trainer's `log.jsonl`, `config.yaml`, `best/`, `last/`",
        "- `plan.json`: the settings, the data summary and the machine",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return the_table


def qa_by_distance(
    out: Path, plan: Any, info: dict[str, Any], results: list[Record], sweep: list[Record]
) -> list[str]:
    """The QA task's section: exact match and F1 (%) by the answer's distance from the
    question (thirds of the document, in tokens), each mechanism's mean over seeds."""
    max_length = info["max_length"]
    edges = [0, max_length // 3, 2 * max_length // 3, max_length]
    names = [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    lines = [
        "## Answers by distance from the question",
        "",
        "Exact match / F1 (%) on test, by how many context tokens lie between the question "
        "and the answer's first token (mean over seeds).",
        "",
        "| mechanism | " + " | ".join(f"{n} tokens" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for m, runs in by_mechanism(results).items():
        cells = []
        for a, b in itertools.pairwise(edges):
            em, f1 = [], []
            for r in runs:
                rows = [x for x in r.get("test_by_distance") or [] if a <= x[0] < b]
                if rows:
                    em.append(sum(x[1] for x in rows) / len(rows))
                    f1.append(sum(x[2] for x in rows) / len(rows))
            cells.append(
                "–" if not em else f"{100 * (mean(em) or 0):.1f} / {100 * (mean(f1) or 0):.1f}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _settings(task: CompareTask, entry: Task, p: P.Preset, info: dict[str, Any]) -> str:
    data = task.description + entry.describe_data(info)
    evals = "the whole validation split" if p.eval_batches is None else f"{p.eval_batches} batches"
    seeds = (
        f"training seeds {p.seed}..{p.seed + p.seeds - 1} (data seed {p.seed})"
        if p.seeds > 1
        else f"seed ({p.seed})"
    )
    pooling = f", {p.pooling} pooling" if entry.architecture == "sequence-classification" else ""
    if p.seeds > 1:
        pooling += f"; {p.seeds} training runs per mechanism: the mean, each run in brackets"
    return (
        f"Every mechanism: the same model (hidden {p.hidden_size}, {p.num_layers} layers, "
        f"{p.num_heads} heads, feed-forward {p.intermediate_size}, dropout {p.dropout}, "
        f"learned positions, pre-LN{pooling}), data, {seeds} and training "
        f"({p.steps} steps of batch {p.batch_size}, AdamW lr {p.lr:g}, weight decay "
        f"{p.weight_decay:g}, "
        f"{min(p.warmup_steps, p.steps)} warm-up steps then linear decay, gradient clipping 1.0). "
        f"Data: {data}. Validation every {p.eval_every} steps on {evals}; test with the "
        "weights of the best validation step. Throughput counts real (non-padding) tokens "
        "per second of training; peak memory is the training process's growth in resident "
        "memory (CUDA: peak allocated)."
    )


__all__ = [
    "fmt_metric",
    "plot_curves",
    "plot_sweep",
    "qa_by_distance",
    "sweep_tables",
    "table",
    "write",
]
