"""Markdown table and log-log plot of benchmark records (the rows of results.jsonl)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longseq import attention

Record = dict[str, Any]


def load(path: str | Path) -> list[Record]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _grid(
    records: Iterable[Record], mode: str, key: str
) -> tuple[list[str], list[int], dict[tuple[str, int], float]]:
    rows: list[str] = []
    lengths: set[int] = set()
    cells: dict[tuple[str, int], float] = {}
    for r in records:
        if r["mechanism"] not in rows:
            rows.append(r["mechanism"])
        lengths.add(r["n"])
        if r["mode"] == mode and r["status"] == "ok" and r.get(key) is not None:
            cells[r["mechanism"], r["n"]] = r[key]
    return rows, sorted(lengths), cells


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _table(
    title: str,
    rows: list[str],
    lengths: list[int],
    value: dict[tuple[str, int], float],
    fmt: Any = _fmt,
) -> str:
    head = f"| {title} | " + " | ".join(f"n={n}" for n in lengths) + " |"
    sep = "|---|" + "---:|" * len(lengths)
    body = [
        f"| {m} | " + " | ".join(fmt(value.get((m, n))) for n in lengths) + " |"
        for m in rows
        if any((m, n) in value for n in lengths)
    ]
    return "\n".join([head, sep, *body]) if body else f"{title}: no data"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}x"


def _growth(
    rows: list[str],
    lengths: list[int],
    fb: dict[tuple[str, int], float],
    mem: dict[tuple[str, int], float],
) -> list[str]:
    """Time and memory growth from 4096 to 16384 (or the shortest to the longest length)."""
    lo, hi = (4096, 16384) if {4096, 16384} <= set(lengths) else (lengths[0], lengths[-1])
    if lo == hi:
        return []
    out = [
        f"### growth n={lo} -> n={hi} ({hi / lo:g}x length: linear = {hi / lo:g}x, "
        f"quadratic = {(hi / lo) ** 2:g}x)",
        "",
        "| mechanism | time | memory |",
        "|---|---:|---:|",
    ]
    for m in rows:
        t = _ratio(fb.get((m, hi)), fb.get((m, lo)))
        mm = _ratio(mem.get((m, hi)), mem.get((m, lo)))
        if t is not None or mm is not None:
            out.append(f"| {m} | {_x(t)} | {_x(mm)} |")
    return [*out, ""]


def table(records: list[Record], settings: str = "") -> str:
    """The report: times, memory, ratios and skipped rows, as markdown."""
    rows, lengths, fb = _grid(records, "fwd+bwd", "median_ms")
    _, _, fw = _grid(records, "forward", "median_ms")
    _, _, mem = _grid(records, "fwd+bwd", "peak_mb")
    _, _, mem_fw = _grid(records, "forward", "peak_mb")
    peer_of = {r["mechanism"]: r["compare_to"] for r in records if r.get("compare_to")}
    parts = ["# Attention benchmark", ""]
    if settings:
        parts += ["## Settings", "", settings, ""]
    parts += [
        "## Forward+backward time (median ms)",
        "",
        _table("mechanism", rows, lengths, fb),
        "",
        "## Forward time (median ms, eval, no grad)",
        "",
        _table("mechanism", rows, lengths, fw),
        "",
        "## Peak memory, forward+backward (MiB above parameters and input)",
        "",
        _table("mechanism", rows, lengths, mem),
        "",
        "## Peak memory, forward (MiB)",
        "",
        _table("mechanism", rows, lengths, mem_fw),
        "",
    ]

    parts += ["## Ratios (forward+backward)", "", "### ours / peer (time; memory)", ""]
    pairs = {(o, p): None for p, o in peer_of.items()}
    cmp = {
        (f"{o} / {p}", n): (
            _ratio(fb.get((o, n)), fb.get((p, n))),
            _ratio(mem.get((o, n)), mem.get((p, n))),
        )
        for (o, p) in pairs
        for n in lengths
    }
    cmp = {k: v for k, v in cmp.items() if v[0] is not None}
    parts += [
        _table(
            "ours / peer",
            [f"{o} / {p}" for o, p in pairs],
            lengths,
            cmp,
            lambda v: "–" if v is None else f"{_x(v[0])}; {_x(v[1])}",
        ),
        "",
    ]
    parts += ["### time / projections time (the floor: q, k, v, out and no attention)", ""]
    proj = {
        (m, n): _ratio(fb.get((m, n)), fb.get(("projections", n)))
        for m in rows
        if m != "projections"
        for n in lengths
    }
    proj = {k: v for k, v in proj.items() if v is not None}
    parts += [_table("mechanism", [m for m in rows if m != "projections"], lengths, proj, _x), ""]

    parts += _growth(rows, lengths, fb, mem)
    skipped = {}
    for r in records:
        if r["status"] == "skipped":
            skipped.setdefault((r["mechanism"], r["reason"]), []).append(r["n"])
    if skipped:
        parts += ["## Skipped", ""]
        for (m, reason), ns in skipped.items():
            parts.append(f"- {m} at n={', '.join(map(str, sorted(set(ns))))}: {reason}")
        parts.append("")
    return "\n".join(parts)


def plot(records: list[Record], path: str | Path, title: str | None = None) -> None:
    """Two log-log panels: forward+backward time and peak memory against n (`title`: the
    figure's, by default the attention benchmark's settings)."""
    import matplotlib  # here, not at the top: over a second to import, needed only to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows, lengths, fb = _grid(records, "fwd+bwd", "median_ms")
    _, _, mem = _grid(records, "fwd+bwd", "peak_mb")
    kind = {r["mechanism"]: r["kind"] for r in records}
    peer_of = {r["mechanism"]: r.get("compare_to") for r in records}
    palette = iter(plt.get_cmap("tab10").colors)
    colour: dict[str, Any] = {"projections": "0.5", attention.baseline(): "black"}
    for m in rows:
        if kind[m] == "ours" and m not in colour:
            colour[m] = next(palette)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8))
    for ax, data, label in (
        (axes[0], fb, "forward+backward time (ms)"),
        (axes[1], mem, "peak memory, fwd+bwd (MiB)"),
    ):
        for m in rows:
            pts = [(n, data[m, n]) for n in lengths if (m, n) in data and data[m, n] > 0]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            c = colour.get(m) or colour.get(peer_of.get(m) or "", "tab:gray")
            style = "--" if kind[m] == "peer" else (":" if m == "projections" else "-")
            ax.plot(xs, ys, style, color=c, marker="o" if kind[m] != "peer" else "s", ms=4, label=m)
        if len(lengths) > 1:  # slope guides from the first length
            n0 = lengths[0]
            ys0 = [data[m, n0] for m in rows if (m, n0) in data and data[m, n0] > 0]
            if ys0:
                y0 = min(ys0)
                for p, txt in ((1, "∝ n"), (2, "∝ n²")):
                    ax.plot(
                        [n0, lengths[-1]],
                        [y0, y0 * (lengths[-1] / n0) ** p],
                        color="0.8",
                        lw=0.8,
                        zorder=0,
                    )
                    ax.annotate(
                        txt, (lengths[-1], y0 * (lengths[-1] / n0) ** p), color="0.6", fontsize=8
                    )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(7, len(handles)),
            fontsize=8,
            frameon=False,
        )
    r0 = records[0] if records else {}
    fig.suptitle(
        title
        or f"Attention layer, hidden {r0.get('hidden')}, {r0.get('heads')} heads, "
        f"batch {r0.get('batch')}, {r0.get('dtype')}, {r0.get('device')}, "
        f"{r0.get('threads')} threads  (solid: longseq, dashed: peers)",
        fontsize=9 if title else None,
    )
    rows_of_legend = -(-len(handles) // 7)
    fig.tight_layout(rect=(0, 0.035 * rows_of_legend + 0.01, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
