"""Time and memory against sequence length: forward+backward of the compared models.

The models are the trained ones' configurations (same size, same mechanism settings; Linformer
gets max_seq_len = n, LSH its bucket count for n) with fresh weights, fed `batch` sequences
of n random tokens without padding. Measured as `longseq bench attention` measures a layer,
with its code:

- time: the median and the minimum of `repeats` calls after one warm-up, forward (eval, no
  grad) and forward+backward (train mode, gradients of every parameter), all models of one
  length in this process, round-robin with a rotating order (`bench.attention.
  time_round_robin`). Interference from other processes shows as spread: while a model's
  calls differ by more than `TOLERANCE` (slowest / fastest - 1), more rounds are run, up to
  3 x `repeats`; a point still that spread is marked `under_load`. A time that falls as n
  grows is a measurement error: load only slows a call, so the shorter point is timed again
  (`repeats` more calls) and, if the fastest time still falls, both are marked `under_load`;
- peak memory: one forward, then one forward+backward, in a fresh process per model and
  length (`isolate.call`): the growth of the resident set size on CPU (activations,
  gradients, workspace; the weights and the input exist before), `max_memory_allocated` on
  CUDA.

A model is skipped at a length, with the reason recorded, when its time extrapolated from
the shorter lengths exceeds `max_seconds` for one forward+backward, when its memory would
exceed half of the memory available, or when it failed (or died) at a shorter length.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from longseq.bench import attention as bench
from longseq.compare import isolate
from longseq.compare.isolate import peak_memory
from longseq.models import ModelConfig, build_model
from longseq.train.memory import available_bytes

MODES = ("forward", "fwd+bwd")
MIB = 2**20
TOLERANCE = 0.25  # a point whose calls spread more than this is re-timed, then flagged


@dataclass(frozen=True)
class Row:
    """What `bench.attention.time_round_robin` needs to know of a row: its name."""

    name: str


def make_inputs(config: dict[str, Any], n: int, batch: int, device: str) -> tuple[Any, Any]:
    """Random token ids (batch, n), and labels for the model's head."""
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(4, config["vocab_size"], (batch, n), generator=gen)
    if config["architecture"] == "causal-lm":
        labels = ids.clone()
    elif config["architecture"] == "token-classification":
        labels = torch.randint(0, config["num_labels"], (batch, n), generator=gen)
    else:
        labels = torch.randint(0, config["num_labels"], (batch,), generator=gen)
    return ids.to(device), labels.to(device)


def build(config: dict[str, Any], n: int, batch: int, device: str) -> tuple[Any, Callable]:
    """The model of `config` (seeded) and `fn(x) -> loss` on fixed inputs (x is ignored)."""
    model = build_model(ModelConfig.from_dict(config), seed=0).to(device)
    ids, labels = make_inputs(config, n, batch, device)
    if config["architecture"] == "question-answering":  # a span in the middle
        pos = torch.full((batch,), n // 2, device=device)
        return model, lambda _x: model(ids, start_positions=pos, end_positions=pos).loss
    return model, lambda _x: model(ids, labels=labels).loss


def probe(config: dict[str, Any], n: int, batch: int, device: str, threads: int | None) -> dict:
    """(In a fresh process) peak memory and cold time of one forward, then one fwd+bwd."""
    if threads:
        torch.set_num_threads(threads)
    bench.warm_up(device)
    model, fn = build(config, n, batch, device)
    dummy = torch.zeros(1, device=device)
    gc.collect()
    out = {}
    for mode in MODES:
        measure = peak_memory(device)
        seconds = bench.call_once(model, fn, dummy, mode, device)
        out[mode] = {"peak_bytes": measure(), "seconds": seconds}
    return out


def _probe(
    config: dict[str, Any], n: int, batch: int, device: str, threads: int | None, max_s: float
) -> tuple[dict[str, Any], str | None]:
    """A model's memory probe at n in a fresh process: (result, None), or (_, why it is the
    last length this model is measured at)."""

    try:
        res = isolate.call(probe, config, n, batch, device, threads, timeout=3 * max_s + 60)
    except isolate.ChildError as err:
        return {}, f"{err} at n={n}"
    seconds = res["fwd+bwd"]["seconds"]
    if seconds > max_s:
        return res, f"one fwd+bwd took {seconds:.1f} s > {max_s:g} s at n={n}"
    return res, None


def _expected_limit(
    history: dict[str, list[tuple[int, float]]],
    n: int,
    max_seconds: float,
    extrapolate: Callable[[list[tuple[int, float]], int], float | None],
) -> str | None:
    """Why not to measure n at all: the time or memory the shorter lengths predict."""
    sec = extrapolate(history["sec"], n)
    mem = extrapolate(history["mem"], n)
    if sec is not None and sec > max_seconds:
        return f"expected fwd+bwd {sec:.0f} s > {max_seconds:g} s"
    if mem is None:
        return None
    if mem > available_bytes(torch.device("cpu")) / 2:
        return f"expected peak memory {mem / 2**30:.1f} GiB > half the memory available"
    return None


@dataclass
class _Sweep:
    """What every step of a sweep shares: the models, settings, progress bar and records."""

    configs: dict[str, Callable[[int], dict[str, Any]]]
    batch: int
    device: str
    threads: int | None
    max_seconds: float
    bench_cfg: Any
    bar: Any
    records: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    gave_up: dict[str, str] = field(default_factory=dict)  # models dropped at a shorter n

    @property
    def rounds(self) -> int:
        return self.bench_cfg.warmup + self.bench_cfg.repeats

    def record(self, m: str, n: int, mode: str, **fields: Any) -> None:
        times, peak = fields.get("times"), fields.get("peak")
        self.records.append(
            {
                "mechanism": m,
                "n": n,
                "mode": mode,
                "status": "skipped" if fields.get("reason") else "ok",
                "reason": fields.get("reason"),
                "median_ms": statistics.median(times) if times else None,
                "min_ms": min(times) if times else None,
                "spread": bench.spread(times) if times else None,
                "under_load": bool(times) and bench.spread(times) > TOLERANCE,
                "load_average": os.getloadavg()[0],
                "times_ms": times or [],
                "peak_mb": None if peak is None else peak / MIB,
                "batch": self.batch,
                "device": self.device,
                "threads": self.threads,
                "attention_options": self.configs[m](n)["attention_options"],
            }
        )

    def probe_length(self, n: int) -> dict[str, dict[str, Any]]:
        """Peak memory and a cold time of every model at n, each in a fresh process, unless
        its shorter lengths predict it passes the limits; returns the probes that passed."""

        probes: dict[str, dict[str, Any]] = {}
        for m, config in self.configs.items():
            self.bar.set_description(f"sweep n={n} memory {m}")
            history = self.history.setdefault(m, {"mem": [], "sec": []})
            reason = self.gave_up.get(m) or _expected_limit(
                history, n, self.max_seconds, bench.extrapolate
            )
            if reason is None:
                res, reason = _probe(
                    config(n), n, self.batch, self.device, self.threads, self.max_seconds
                )
                if reason is not None:
                    self.gave_up[m] = reason
                else:
                    history["mem"].append((n, res["fwd+bwd"]["peak_bytes"]))
                    history["sec"].append((n, res["fwd+bwd"]["seconds"]))
                    probes[m] = res
            if reason is not None:
                for mode in MODES:
                    self.record(m, n, mode, reason=reason)
                self.bar.update(1 + self.rounds)
            else:
                self.bar.update(1)
        return probes

    def time_length(self, n: int, probes: dict[str, dict[str, Any]]) -> None:
        """Time the probed models at n in this process, round-robin; record them."""
        layers = [(Row(m), *build(self.configs[m](n), n, self.batch, self.device)) for m in probes]
        # the models ignore x (their inputs are fixed); its shape names n in the progress bar
        x = _dummy(n, self.device)
        times, failed = bench.time_round_robin(layers, x, self.bench_cfg, self.bar)
        for row, _, _ in layers:
            for mode in MODES:
                if row.name in failed:
                    self.record(row.name, n, mode, reason=failed[row.name])
                else:
                    peak = probes[row.name][mode]["peak_bytes"]
                    self.record(row.name, n, mode, times=times[row.name][mode], peak=peak)


def run(
    configs: dict[str, Callable[[int], dict[str, Any]]],
    lengths: list[int],
    *,
    batch: int,
    repeats: int,
    device: str,
    threads: int | None,
    max_seconds: float,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Measure every model (name -> config at length n) at every length; return the records."""
    if threads:
        torch.set_num_threads(threads)
    lengths = sorted(set(lengths))
    bench_cfg = bench.Config(
        repeats=repeats, warmup=1, device=device, max_repeats=3 * repeats, tolerance=TOLERANCE
    )
    bar = tqdm(
        total=len(lengths) * len(configs) * (1 + bench_cfg.warmup + repeats),
        desc="sweep",
        unit="call",
        file=sys.stderr,
        disable=not progress or None,
    )
    sweep = _Sweep(configs, batch, device, threads, max_seconds, bench_cfg, bar)
    for n in lengths:
        sweep.time_length(n, sweep.probe_length(n))
        gc.collect()
    bar.close()
    _never_falling(sweep.records, configs, batch, device, bench_cfg)
    return sweep.records


def _never_falling(
    records: list[dict[str, Any]],
    configs: dict[str, Callable[[int], dict[str, Any]]],
    batch: int,
    device: str,
    bench_cfg: Any,
) -> None:
    """Where a model's fastest time falls as n grows, re-time the shorter point (load only
    slows a call, so it is the one disturbed); flag both if the time still falls."""

    for m in configs:
        for mode in MODES:
            pts = sorted(
                (r for r in records if r["mechanism"] == m and r["mode"] == mode and r["min_ms"]),
                key=lambda r: r["n"],
            )
            for a, b in itertools.pairwise(pts):
                if b["min_ms"] >= a["min_ms"]:
                    continue
                model, fn = build(configs[m](a["n"]), a["n"], batch, device)
                more, failed = bench.time_round_robin(
                    [(Row(m), model, fn)], _dummy(a["n"], device), bench_cfg
                )
                if m not in failed:
                    times = a["times_ms"] = a["times_ms"] + more[m][mode]
                    a["median_ms"], a["min_ms"] = statistics.median(times), min(times)
                    a["spread"] = bench.spread(times)
                del model, fn
                gc.collect()
                if b["min_ms"] < a["min_ms"]:
                    for r in (a, b):
                        r["under_load"] = True
                        r["note"] = f"time fell from n={a['n']} to n={b['n']} after re-timing"


def _dummy(n: int, device: str) -> Any:
    return torch.zeros(1, n, device=device)


__all__ = ["MODES", "build", "make_inputs", "probe", "run"]
