"""The recall task's part of report.md: prediction beside measurement, separation, two charts.

- For every mechanism and distance range: the accuracy band the pattern predicts
  (`compare.predict`: chance + (1 - chance) x reach, reach from one hop to an L-hop path) and
  the measured test accuracy (mean over seeds, each seed in brackets), then a verdict; every
  disagreement is stated in words.
- Separation: the mechanisms ranked by test accuracy; a difference is claimed only when it is
  larger than the noise (the larger of the two seed ranges, and twice the binomial standard
  error of the difference).
- distance.png: accuracy against query distance, one panel per mechanism, the predicted band
  shaded; tradeoff.png: test accuracy against forward+backward time from the sweep.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.compare import predict
from longseq.compare.report import by_mechanism, colours, mean
from longseq.data.recall import read_split

Record = dict[str, Any]


def _ranges(spec: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in spec["distances"]]


def bins(spec: dict[str, Any]) -> list[tuple[int, int]]:
    """Finer distance bins for the chart: each range halved, the last one in doublings."""
    ranges = _ranges(spec)
    out: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(ranges):
        if i == len(ranges) - 1 and b >= 4 * a:
            lo = a
            while lo <= b:
                hi = min(b, 2 * lo - 1)
                out.append((lo, hi))
                lo = hi + 1
        elif b > a:
            mid = (a + b) // 2
            out += [(a, mid), (mid + 1, b)]
        else:
            out.append((a, b))
    return out


def counts_in(rows: list[list[int]], low: int, high: int) -> tuple[int, int]:
    """(correct, total) of the [distance, correct, total] rows with low <= distance <= high."""
    c = sum(r[1] for r in rows if low <= r[0] <= high)
    t = sum(r[2] for r in rows if low <= r[0] <= high)
    return c, t


def test_queries(path: str | Path) -> list[tuple[int, int]]:
    """(query position, pair position) of every query in the test split."""
    return [(q, p) for ex in read_split(path) for _k, _v, p, q in ex["pairs"]]


@dataclass
class Prediction:
    basis: str  # how the reach was computed, one line
    bands: dict[tuple[int, int], tuple[float, float]]  # distance range -> accuracy (low, high)


def predictions(
    results: list[Record], queries: list[tuple[int, int]], spec: dict[str, Any], chance: float
) -> dict[str, Prediction]:
    """mechanism -> the predicted accuracy band (fractions) of every distance range and bin."""
    out: dict[str, Prediction] = {}
    ranges = sorted(set(_ranges(spec)) | set(bins(spec)))
    for m, runs in by_mechanism(results).items():
        cfg = runs[0].get("model_config") or runs[0].get("config", {}).get("model", {})
        try:
            r = predict.reach(
                m,
                runs[0].get("attention_options") or {},
                spec["length"],
                cfg.get("num_layers", 1),
                cfg.get("num_heads", 1),
            )
        except (ValueError, KeyError):
            continue  # a mechanism with no reach model: measured only
        bands = {
            (a, b): predict.band(r, [(q, p) for q, p in queries if a <= q - p <= b], chance)
            for a, b in ranges
        }
        out[m] = Prediction(r.basis, bands)
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def _measured(runs: list[Record], a: int, b: int) -> tuple[float | None, list[float], int]:
    """Mean accuracy over seeds in [a, b], each seed's, and the queries per seed."""
    per_seed, total = [], 0
    for r in runs:
        c, t = counts_in(r.get("test_by_distance") or [], a, b)
        if t:
            per_seed.append(c / t)
            total = t
    return mean(per_seed), per_seed, total


def _noise(acc: float, seeds: list[float], n: int) -> float:
    """The larger of the seed range and twice the binomial standard error (fractions)."""
    spread = max(seeds) - min(seeds) if len(seeds) > 1 else 0.0
    se = math.sqrt(max(acc * (1 - acc), 1e-4) / max(n, 1))
    return max(spread, 2 * se)


def section(
    out: Path, plan: Any, info: dict[str, Any], results: list[Record], sweep: list[Record]
) -> list[str]:

    spec = info["recall_spec"]
    chance = info["chance"] / 100
    ok = [r for r in results if r["status"] == "ok" and r.get("test_by_distance")]
    if not ok:
        return ["(No finished recall run: no per-distance results.)", ""]
    groups = by_mechanism(ok)
    ranges = _ranges(spec)
    queries = test_queries(ok[0]["config"]["data"]["test"])
    preds = predictions(ok, queries, spec, chance)
    layers = plan.preset_spec.num_layers

    head = ["mechanism"]
    for a, b in ranges:
        head += [f"d {a}-{b}: predicted", "measured"]
    lines = [
        "## Recall by distance: what each pattern allows, and what was measured",
        "",
        "Test accuracy (%) of the queries whose pair lies d tokens back. *Predicted*: the band "
        "chance + (1 - chance) x reach, where reach runs from the pairs some head of some "
        f"layer scores directly (one hop, low) to those a path of at most {layers} hops "
        "connects (high), computed from the masks of `longseq/attention/patterns.py` for "
        "these very models (`longseq/compare/predict.py`). *Measured*: the mean over seeds, "
        "each seed in brackets.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    notes: list[str] = []
    for m, runs in groups.items():
        cells = [m]
        for a, b in ranges:
            band = preds[m].bands[a, b] if m in preds else None
            acc, seeds, n = _measured(runs, a, b)
            pred = (
                "–"
                if band is None
                else (
                    _pct(band[0])
                    if abs(band[1] - band[0]) < 5e-4
                    else f"{_pct(band[0])}-{_pct(band[1])}"
                )
            )
            meas = _pct(acc) + (f" ({', '.join(_pct(s) for s in seeds)})" if len(seeds) > 1 else "")
            if band is not None and acc is not None:
                v = predict.verdict(acc, band[0], band[1], _noise(acc, seeds, n) + 0.03)
                if not v.startswith("agrees"):
                    meas += " **!**"
                    notes.append(
                        f"- **{m}, d {a}-{b}**: measured {_pct(acc)}%, predicted "
                        f"{_pct(band[0])}-{_pct(band[1])}%: {v}."
                    )
            cells += [pred, meas]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "How each prediction is computed:", ""]
    lines += [f"- {m}: {p.basis}" for m, p in preds.items()]
    lines += [""]
    if notes:
        lines += [
            "Where measurement and prediction disagree (**!** above; a margin of the "
            "seed range or two standard errors, plus 3 points):",
            "",
            *notes,
            "",
        ]
    else:
        lines += ["Every measurement lies inside its predicted band (within the noise).", ""]
    lines += separation(groups)
    plot_distance(groups, preds, spec, chance, out / "distance.png")
    lines += ["![accuracy against distance](distance.png)", ""]
    if sweep and plot_tradeoff(groups, sweep, out / "tradeoff.png"):
        lines += [
            "Accuracy against cost: test accuracy (seed range as bars) against one "
            "forward+backward of the same model, from the sweep below.",
            "",
            "![accuracy against time](tradeoff.png)",
            "",
        ]
    return lines


def separation(groups: dict[str, list[Record]]) -> list[str]:
    """The ranking, and for each neighbour pair whether the difference beats the noise."""
    rows = []
    for m, runs in groups.items():
        accs = [r["test"] for r in runs if r.get("test") is not None]
        n = sum(r[2] for r in runs[0].get("test_by_distance") or [])
        if accs:
            rows.append((m, mean(accs), accs, n))
    rows.sort(key=lambda x: -x[1])
    if len(rows) < 2:
        return []
    top, bottom = rows[0], rows[-1]
    lines = [
        "### Separation",
        "",
        f"Test accuracy spreads over {100 * (top[1] - bottom[1]):.1f} points, from {top[0]} "
        f"({_pct(top[1])}%) to {bottom[0]} ({_pct(bottom[1])}%). Neighbours in the ranking, "
        "with the noise each difference must beat (the larger seed range, or two standard "
        "errors of the difference):",
        "",
    ]
    for (m1, a1, s1, n1), (m2, a2, s2, n2) in itertools.pairwise(rows):
        spread = max(
            max(s1) - min(s1) if len(s1) > 1 else 0.0, max(s2) - min(s2) if len(s2) > 1 else 0.0
        )
        se = math.sqrt(a1 * (1 - a1) / max(n1, 1) + a2 * (1 - a2) / max(n2, 1))
        noise = max(spread, 2 * se)
        diff = a1 - a2
        claim = f"{m1} > {m2}" if diff > noise else f"{m1} and {m2}: not distinguished"
        lines.append(
            f"- {claim}: difference {100 * diff:.1f} points, noise {100 * noise:.1f} "
            f"(seed range {100 * spread:.1f}, 2 SE {200 * se:.1f})"
        )
    return [*lines, ""]


def plot_distance(
    groups: dict[str, list[Record]],
    preds: dict[str, Prediction],
    spec: dict[str, Any],
    chance: float,
    path: Path,
) -> None:
    """Accuracy against distance, one panel per mechanism, the predicted band shaded."""
    # matplotlib (heavy, for the pictures only) on first use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = bins(spec)
    centres = [math.sqrt(a * b) for a, b in edges]
    names = list(groups)
    colour = colours(names)
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.1 * len(names), 3.4), sharey=True, squeeze=False
    )
    ranges = _ranges(spec)
    for ax, m in zip(axes[0], names, strict=True):
        runs = groups[m]
        if m in preds:
            lo = [100 * preds[m].bands[e][0] for e in edges]
            hi = [100 * preds[m].bands[e][1] for e in edges]
            ax.fill_between(
                centres, lo, hi, color=colour[m], alpha=0.15, step="mid", label="predicted"
            )
            ax.step(centres, hi, where="mid", color=colour[m], lw=0.8, ls="--")
        for r in runs:
            ys = []
            for a, b in edges:
                c, t = counts_in(r.get("test_by_distance") or [], a, b)
                ys.append(100 * c / t if t else float("nan"))
            ax.plot(centres, ys, "-o", ms=3, color=colour[m], alpha=0.8)
        ax.axhline(100 * chance, color="0.5", lw=0.8, ls=":")
        for a, _b in ranges[1:]:
            ax.axvline(a - 0.5, color="0.7", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(m)
        ax.set_xlabel("query-to-pair distance")
        ax.set_ylim(0, 102)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Recall accuracy against distance (a line per seed; shaded: the band the pattern "
        "allows; dotted: chance; grey: range edges)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(groups: dict[str, list[Record]], sweep: list[Record], path: Path) -> bool:
    """Test accuracy against fwd+bwd time at the shortest and longest swept lengths."""
    # matplotlib (heavy, for the pictures only) on first use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in sweep if r["mode"] == "fwd+bwd" and r["status"] == "ok"]
    names = [m for m in groups if any(r["mechanism"] == m for r in ok)]
    if not names:
        return False
    lengths = sorted(
        {
            r["n"]
            for r in ok
            if all(any(x["mechanism"] == m and x["n"] == r["n"] for x in ok) for m in names)
        }
    )
    if not lengths:
        return False
    shown = sorted({lengths[0], lengths[-1]})
    colour = colours(names)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    for ax, n in zip(axes[0], shown, strict=True):
        right = 0.0
        for m in names:
            accs = [r["test"] for r in groups[m] if r.get("test") is not None]
            t = next(x for x in ok if x["mechanism"] == m and x["n"] == n)
            ms = t.get("min_ms") or t["median_ms"]
            y = 100 * mean(accs)
            err = [[y - 100 * min(accs)], [100 * max(accs) - y]]
            ax.errorbar([ms], [y], yerr=err, fmt="o", color=colour[m], capsize=3, label=m)
            right = max(right, ms)
            ax.annotate(m, (ms, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlim(0, 1.15 * right)
        ax.set_xlabel(f"forward+backward time at n = {n} (ms, fastest of the repeats)")
        ax.set_ylabel("recall test accuracy (%)")
        ax.set_ylim(0, 102)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Accuracy against cost", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


__all__ = ["bins", "counts_in", "predictions", "section", "separation", "test_queries"]
