"""The long-context task's report: loss by position of every variant, the prediction beside
each measurement (as the recall report does), and a chart of loss against position.

Spans (target positions, T the trained context, L the length read, w the window):
    R = [T/4, T/2)      inside the trained context, past any window (2K-4K for T = 8K)
    F = [L - T/2, L)    the far end (12K-16K at L = 16K, 28K-32K at L = 32K)

What each variant predicts follows from its pattern at causal (`SelfAttention.pattern`, with
the sinks as global tokens), never from its name:

- sees every earlier token (the baseline): as trained up to T, and it degrades past T, where
  its rotary positions were never trained: ppl(F) > 1.10 ppl(R);
- a bounded pattern in which token 0 stays visible to every query, scored at cache positions
  (window + sinks with `sink_positions="cache"`: StreamingLLM's rule, every query meets the
  sinks just before its window): flat, ppl(F) <= 1.10 ppl(R) (issue 21's goal);
- the same with the sinks scored at their distance from the query (`sink_positions=
  "absolute"`, BigBird's global blocks): flat while that distance is within T, so past T it
  degrades as the baseline does: ppl(F) > 1.10 ppl(R) when F lies past T. (This prediction
  was revised after the first 16K measurement, docs/experiments.md, which had predicted flat
  for both);
- a bounded pattern that token 0 leaves at position t0 (a window without sinks): equal to the
  baseline over [1, t0) (within 0.05 nats), then worse: loss(R) > the baseline's + 0.1 nats;
- no fixed token pattern (LSH: shared-QK buckets, keys = normalised queries, which the
  model's separate Q and K never computed): an approximation, predicted to cost over 0.1 nats
  against the baseline over R; the cost is stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longseq import attention
from longseq.models.positions import PositionSums, bucket_edges, span_loss
from longseq.viz.positions import plot_loss_by_position

Record = dict[str, Any]
FLAT = 1.10  # the ppl ratio F / R that counts as flat (issue 21's goal)
WORSE = 0.1  # nats per token: a clear difference from the baseline
SAME = 0.05  # nats per token: the same as the baseline


@dataclass(frozen=True)
class Shape:
    """What a variant's pattern says: 'full', 'sinks' (token 0 always seen; `far`: at its
    distance from the query, not at a cache position), 'window' (token 0 leaves at `leaves`)
    or 'approximate' (no token mask)."""

    kind: str
    leaves: int | None = None
    far: bool = False


def shape_of(mechanism: str, options: dict[str, Any], sinks: int, n: int) -> Shape:
    """The pattern of one causal layer of `mechanism` at n tokens (first `sinks` global)."""
    cls = attention.get(mechanism)
    if cls.baseline:
        return Shape("full")
    takes = sinks and "global_tokens" in attention.options(mechanism)
    layer = attention.build(
        mechanism, 2, 1, causal=True, **options, **({"global_tokens": sinks} if takes else {})
    )
    is_global = torch.zeros(n, dtype=torch.bool)
    is_global[:sinks] = True
    try:
        mask = layer.pattern(n, is_global if sinks else None)[0]
    except NotImplementedError:
        return Shape("approximate")
    first = mask[:, 0]
    if bool(first.all()):
        if bool(mask.sum() == n * (n + 1) // 2):
            return Shape("full")
        return Shape("sinks", far=options.get("sink_positions", "absolute") != "cache")
    return Shape("window", int((~first).nonzero()[0]))


def curves(results: list[Record], edges: list[int]) -> dict[str, list[dict[str, Any]]]:
    """variant -> bucket rows, summed over its documents (token-weighted)."""
    sums: dict[str, PositionSums] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        s = sums.setdefault(r["variant"], PositionSums())
        loss = torch.tensor(r["loss_by_position"], dtype=torch.float64)
        count = torch.ones_like(loss)
        count[0] = 0  # position 0 is never a target
        s.add(loss[None, 1:], count[None, 1:].bool())
    return {v: s.buckets(edges) for v, s in sums.items()}


def spans(trained: int, length: int) -> list[tuple[int, int]]:
    """The table's columns: 1-1K, 1-2K, doublings to T, then steps of T/2 to L."""
    out, a = [], 1
    for b in (1024, 2048, trained // 4, trained // 2, trained):
        if a < b <= min(trained, length):
            out.append((a, b))
            a = b
    while a < length:
        b = min(length, a + trained // 2)
        out.append((a, b))
        a = b
    return out


def _k(x: int) -> str:
    return f"{x // 1024}K" if x % 1024 == 0 and x else str(x)


def predictions(
    shapes: dict[str, Shape], rows: dict[str, list[dict[str, Any]]], trained: int, length: int
) -> list[tuple[str, str, str, bool | None]]:
    """(variant, prediction, measurement, agrees) for every variant measured."""
    r0, r1 = trained // 4, trained // 2
    f0, f1 = length - trained // 2, length
    base = next((v for v, s in shapes.items() if s.kind == "full" and v in rows), None)
    base_r = span_loss(rows[base], r0, r1) if base else None
    out = []
    for v, shape in shapes.items():
        if v not in rows:
            continue
        lr, lf = span_loss(rows[v], r0, r1), span_loss(rows[v], f0, f1)
        ratio = (
            math.exp(lf - lr) if lr is not None and lf is not None and length > trained else None
        )
        span_r, span_f = f"{_k(r0)}-{_k(r1)}", f"{_k(f0)}-{_k(f1)}"
        ratio_text = f"ppl {span_f} / ppl {span_r} = {ratio:.3f}" if ratio else "n/a"
        if shape.kind == "full":
            pred = f"degrades past the trained {_k(trained)}: ppl ratio > {FLAT:.2f}"
            ok = ratio > FLAT if ratio else None
            meas = ratio_text
        elif shape.kind == "sinks" and shape.far and f0 >= trained:
            pred = (
                "token 0 always seen, at its distance from the query: flat within the trained "
                f"{_k(trained)}, degrades past it: ppl ratio > {FLAT:.2f}"
            )
            ok = ratio > FLAT if ratio else None
            meas = ratio_text
        elif shape.kind == "sinks":
            where = "at cache positions" if not shape.far else "within the trained context"
            pred = f"token 0 always seen (sinks {where}): flat, ppl ratio <= {FLAT:.2f}"
            ok = ratio <= FLAT if ratio else None
            meas = ratio_text
        elif shape.kind == "window":
            t0 = shape.leaves or 0
            early = span_loss(rows[v], 1, t0)
            early_base = span_loss(rows[base], 1, t0) if base else None
            pred = (
                f"token 0 leaves at t = {t0:,}: the baseline's loss before, then > {WORSE} "
                f"nats worse over {span_r}"
            )
            if base_r is None or lr is None or early is None or early_base is None:
                ok, meas = None, "no baseline measured"
            else:
                d_early, d_r = early - early_base, lr - base_r
                ok = abs(d_early) < SAME and d_r > WORSE
                meas = f"{d_early:+.3f} nats before t0, {d_r:+.3f} over {span_r}; {ratio_text}"
        else:
            pred = f"an approximation (no fixed pattern): costs > {WORSE} nats over {span_r}"
            if base_r is None or lr is None:
                ok, meas = None, "no baseline measured"
            else:
                ok, meas = lr - base_r > WORSE, f"costs {lr - base_r:+.3f} nats over {span_r}"
        out.append((v, pred, meas, ok))
    return out


def section(
    out: Path, plan: Any, info: dict[str, Any], results: list[Record], sweep: list[Record]
) -> list[str]:
    p = plan.preset_spec
    ok = [r for r in results if r.get("status") == "ok"]
    failed = [r for r in results if r.get("status") != "ok"]
    length = p.text_length
    trained = ok[0]["trained_length"] if ok else length
    edges = bucket_edges(length, p.bucket)
    fine = curves(ok, edges)
    table_spans = spans(trained, length)
    by_variant: dict[str, list[Record]] = {}
    for r in ok:
        by_variant.setdefault(r["variant"], []).append(r)
    shapes = {
        v: shape_of(rs[0]["mechanism"], rs[0]["options"], rs[0]["global_tokens"], 2 * p.reach)
        for v, rs in by_variant.items()
    }
    # bucket edges at the table's spans and where token 0 leaves each window (its verdict
    # compares the loss before that point with the baseline's)
    leaves = {s.leaves for s in shapes.values() if s.kind == "window" and s.leaves}
    coarse = curves(ok, sorted({a for a, _ in table_spans} | {length} | leaves))
    docs = sorted({r["document"] for r in ok})
    lines = [
        "## Loss by position (nats per token)",
        "",
        f"{len(docs)} held-out play(s) ({', '.join(docs) or 'none'}), each read from its "
        f"first token to {length:,} tokens, one forward per play and variant; the model was "
        f"trained to {trained:,} positions. Mean over the plays (token-weighted). Time: one "
        "forward (the scoring alone); peak MB: the growth of the scoring process's resident "
        "memory; load: the machine's 5-minute load average when it finished (a time measured "
        "at a load above the core count is slowed by the other processes).",
        "",
        "| variant | "
        + " | ".join(f"{_k(a - 1 if a == 1 else a)}-{_k(b)}" for a, b in table_spans)
        + " | s per play | peak MB | load |",
        "|---|" + "---:|" * (len(table_spans) + 3),
    ]
    for v, rs in by_variant.items():
        cells = []
        for a, b in table_spans:
            x = span_loss(coarse[v], a, b)
            cells.append(f"{x:.3f}" if x is not None else "-")
        secs = sum(r["seconds"] for r in rs) / len(rs)
        mem = max(r["peak_memory_mb"] for r in rs)
        loads = [r["load_average"] for r in rs if r.get("load_average") is not None]
        load = f"{max(loads):.0f}" if loads else "-"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {secs:,.0f} | {mem:,.0f} | {load} |")
    lines += ["", "Options: " + "; ".join(
        f"{v}: " + (", ".join(f"{k} {x}" for k, x in rs[0]["options"].items()) or "-")
        + (f", global_tokens {rs[0]['global_tokens']}" if rs[0]["global_tokens"] else "")
        for v, rs in by_variant.items()
    ), ""]  # fmt: skip
    if failed:
        lines += ["Failed (rerun with --resume to retry):", ""]
        lines += [f"- {r['variant']} on {r['document']}: {r.get('error')}" for r in failed]
        lines.append("")
    lines += [
        "## Predictions beside measurements",
        "",
        "| variant | prediction (from its pattern) | measured | agrees |",
        "|---|---|---|---|",
    ]
    disagreements, judged = [], 0
    for v, pred, meas, agrees in predictions(shapes, coarse, trained, length):
        mark = "n/a" if agrees is None else ("yes" if agrees else "**NO**")
        lines.append(f"| {v} | {pred} | {meas} | {mark} |")
        judged += agrees is not None
        if agrees is False:
            disagreements.append(f"- {v}: predicted {pred}; measured {meas}.")
    lines.append("")
    if disagreements:
        lines += ["Disagreements:", "", *disagreements, ""]
    elif judged:
        lines += [f"The {judged} variant(s) judged agree with their predictions.", ""]
    else:
        lines += ["No variant could be judged (the baseline or the far span is missing).", ""]
    plot_loss_by_position(
        fine,
        out / "positions.png",
        trained=trained,
        title=f"{Path(p.pretrained).name if p.pretrained else 'SmolLM2-135M-Instruct'}: "
        "loss by position, "
        f"{len(docs)} held-out play(s), buckets of {p.bucket}",
    )
    lines += ["![loss against position](positions.png)", ""]
    return lines


__all__ = ["Shape", "curves", "predictions", "section", "shape_of", "spans"]
