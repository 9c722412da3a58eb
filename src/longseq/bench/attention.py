"""Attention benchmark: time and peak memory of each mechanism, its peer and two baselines.

For every sequence length n, each row (a layer with fixed settings, see `SPECS`) is measured:

- time: median of `repeats` calls after `warmup`, forward (eval, no grad) and forward+backward
  (train mode, dropout 0, loss = out.sum(), gradients w.r.t. the input and the parameters).
  All rows run in ONE process, round-robin per repeat (the order rotates each repeat), so
  drift of the machine (other load, frequency) hits every row alike;
- peak memory: one forward then one forward+backward in a fresh process (forked, per row and
  length, by a small server process that has imported the modules but never run an op), as
  the growth of the resident set size (VmHWM after, reset via /proc/self/clear_refs, minus
  VmRSS before); on CUDA as `max_memory_allocated` minus the memory allocated before. The
  layer's parameters and the input exist before the measurement starts, so peak =
  activations + gradients + workspace.

A row is skipped, with the reason recorded, when its layer cannot run the setting (a peer's
length rule, a failure), when its memory or time extrapolated from the smaller lengths
exceeds `max_memory_gb` / `max_seconds`, or when its probe process dies or times out.

Baselines: `projections` (the q, k, v, out nn.Linear layers and no attention: the floor any
attention layer pays) and `full` (dense softmax attention through SDPA).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

import longseq
from longseq import attention
from longseq.bench import peers, report
from longseq.forkserver import ChildError, Server

DTYPES = {
    "fp32": torch.float32,
    "fp64": torch.float64,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
MODES = ("forward", "fwd+bwd")
MIB = 2**20


# --------------------------------------------------------------------------------------------
# What is measured


@dataclass(frozen=True)
class Spec:
    """One row of the benchmark: a layer and its fixed settings."""

    name: str
    family: str  # the --mechanisms name that selects it ("baseline" rows are always run)
    kind: str  # "baseline" | "ours" | "peer"
    builder: str  # "projections" | "longseq" | a key of peers.BUILDERS
    settings: dict[str, Any] = field(default_factory=dict)
    global_tokens: int = 0  # tokens 0..g-1 are global (Longformer)
    compare_to: str | None = None  # a peer's longseq row

    def options(self, n: int) -> dict[str, Any]:
        """The settings at length n, as the mechanism derives them (`options_at`: Linformer's
        length and k); peers take the same."""
        if self.family == "baseline":
            return dict(self.settings)
        return attention.get(self.family).options_at(attention.At(n), self.settings)


LONGFORMER = {"window": 512}
BIGBIRD = {
    "block_size": 64,
    "num_random_blocks": 3,
    "num_global_blocks": 2,
    "num_sliding_blocks": 3,
}
# E, F shared by the heads, as lucidrains'; k: the default 256, at most n (`options_at`)
LINFORMER = {"sharing": "headwise"}
LSH = {"chunk_length": 64, "seed": 0}

SPECS: tuple[Spec, ...] = (
    Spec("projections", "baseline", "baseline", "projections"),
    Spec(attention.baseline(), "baseline", "baseline", "longseq"),
    Spec("longformer", "longformer", "ours", "longseq", LONGFORMER),
    Spec("longformer+global", "longformer", "ours", "longseq", LONGFORMER, global_tokens=1),
    Spec("bigbird", "bigbird", "ours", "longseq", BIGBIRD),
    Spec("linformer", "linformer", "ours", "longseq", LINFORMER),
    Spec("lsh-4h", "lsh", "ours", "longseq", {**LSH, "n_hashes": 4}),
    Spec("lsh-1h", "lsh", "ours", "longseq", {**LSH, "n_hashes": 1}),
    Spec(
        "hf-longformer", "longformer", "peer", "hf_longformer", LONGFORMER, compare_to="longformer"
    ),
    Spec(
        "hf-longformer+global",
        "longformer",
        "peer",
        "hf_longformer",
        LONGFORMER,
        global_tokens=1,
        compare_to="longformer+global",
    ),
    Spec(
        "hf-bigbird",
        "bigbird",
        "peer",
        "hf_bigbird",
        {"block_size": 64, "num_random_blocks": 3},
        compare_to="bigbird",
    ),
    Spec(
        "lucidrains-linformer",
        "linformer",
        "peer",
        "lucidrains_linformer",
        {},  # k: as ours (`options_at`: 256, at most n)
        compare_to="linformer",
    ),
    Spec(
        "hf-reformer-4h", "lsh", "peer", "hf_reformer", {**LSH, "n_hashes": 4}, compare_to="lsh-4h"
    ),
    Spec(
        "hf-reformer-1h", "lsh", "peer", "hf_reformer", {**LSH, "n_hashes": 1}, compare_to="lsh-1h"
    ),
)


def rows() -> list[Spec]:
    """Every row: the table above, then one with default options for each registered
    mechanism the table has no row for (the registry is the list of mechanisms, so a newly
    registered one is measured without an edit here)."""
    covered = {s.family for s in SPECS} | {attention.baseline()}
    return [
        *SPECS,
        *(Spec(m, m, "ours", "longseq") for m in attention.mechanisms() if m not in covered),
    ]


def row(name: str) -> Spec:
    """The row called `name`."""
    found = [s for s in rows() if s.name == name]
    if not found:
        raise ValueError(f"no benchmark row {name!r}; rows: {', '.join(s.name for s in rows())}")
    return found[0]


def families() -> list[str]:
    """The default --mechanisms: every registered mechanism but the baseline (a row that is
    always run)."""
    return [m for m in attention.mechanisms() if m != attention.baseline()]


def choices() -> tuple[str, ...]:
    """Valid --mechanisms values: registry names (a family selects its variants and peers)
    or rows."""
    return tuple(dict.fromkeys([*attention.mechanisms(), *(s.name for s in rows())]))


def select(
    mechanisms: list[str], peers: bool, backends: tuple[str, ...] = ("native",)
) -> list[Spec]:
    """Baselines, then the chosen rows of ours, then their peers (when `peers`); `backends`
    other than native add a copy of each longseq row whose mechanism has that backend (named
    `row+backend`, e.g. `longformer+flex`)."""
    valid = choices()
    unknown = [m for m in mechanisms if m not in valid]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {unknown}; valid: {', '.join(valid)}")
    chosen = [
        s for s in rows() if s.kind == "baseline" or s.name in mechanisms or s.family in mechanisms
    ]
    if not peers:
        chosen = [s for s in chosen if s.kind != "peer"]
    return chosen + [
        with_backend(s, b) for b in backends if b != "native" for s in chosen if _has(s, b)
    ]


def _has(spec: Spec, backend: str) -> bool:
    if spec.builder != "longseq":
        return False
    name = attention.baseline() if spec.family == "baseline" else spec.family
    return backend != "flex" or attention.get(name).flex_refusal is None


def with_backend(spec: Spec, backend: str) -> Spec:
    """The longseq row `spec` run with `backend` (an attention option)."""
    return Spec(
        f"{spec.name}+{backend}",
        spec.family,
        spec.kind,
        spec.builder,
        {**spec.settings, "backend": backend},
        spec.global_tokens,
    )


@dataclass
class Config:
    mechanisms: list[str] = field(default_factory=families)
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    hidden: int = 768
    heads: int = 12
    batch: int = 1
    threads: int = 2
    repeats: int = 5
    warmup: int = 1
    # Interference: after `repeats`, more rounds (up to `max_repeats` in all) while a layer's
    # calls spread by more than `tolerance` (slowest / fastest - 1); 0 turns this off.
    max_repeats: int = 0
    tolerance: float = 0.25
    dtype: str = "fp32"
    device: str = "cpu"
    peers: bool = True
    backends: tuple[str, ...] = ("native",)  # flex: a `+flex` copy of each row that has it
    max_memory_gb: float = 18.0
    max_seconds: float = 120.0  # one forward+backward call
    out: str = "bench-out"
    progress: bool = True


# --------------------------------------------------------------------------------------------
# Building the layers


class Projections(nn.Module):
    """The four projections of an attention layer and no attention: the floor."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.query(x) + self.key(x) + self.value(x))


def make_layer(spec: Spec, n: int, cfg: Config) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """The layer of `spec` at length n and a call `f(x) -> (B, N, hidden)`."""
    torch.manual_seed(0)
    opts = spec.options(n)
    if spec.builder == "projections":
        module: nn.Module = Projections(cfg.hidden)
        fn: Callable[[Tensor], Tensor] = module
    elif spec.builder == "longseq":
        name = attention.baseline() if spec.family == "baseline" else spec.family
        layer = attention.build(name, cfg.hidden, cfg.heads, **opts)
        module = layer
        if spec.global_tokens:
            glob = torch.zeros(cfg.batch, n, dtype=torch.bool, device=cfg.device)
            glob[:, : spec.global_tokens] = True
            fn = lambda x: layer(x, global_attention_mask=glob)  # noqa: E731
        else:
            fn = layer
    else:
        if spec.global_tokens:
            opts["global_tokens"] = spec.global_tokens
        peer = peers.build_peer(spec.builder, cfg.hidden, cfg.heads, n, **opts)
        module, fn = peer.module, peer.fn
    return module.to(device=cfg.device, dtype=DTYPES[cfg.dtype]), fn


def make_input(n: int, cfg: Config) -> Tensor:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(cfg.batch, n, cfg.hidden, generator=gen, dtype=torch.float32)
    return x.to(device=cfg.device, dtype=DTYPES[cfg.dtype])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def call_once(
    module: nn.Module, fn: Callable[[Tensor], Tensor], x: Tensor, mode: str, device: str
) -> float:
    """Seconds for one forward (eval, no grad) or forward+backward (train, loss = out.sum())."""
    if mode == "forward":
        module.eval()
        with torch.no_grad():
            _sync(device)
            t0 = time.perf_counter()
            out = fn(x)
            _sync(device)
            dt = time.perf_counter() - t0
        del out
        return dt
    module.train()
    xg = x.detach().requires_grad_()
    _sync(device)
    t0 = time.perf_counter()
    fn(xg).sum().backward()
    _sync(device)
    dt = time.perf_counter() - t0
    module.zero_grad(set_to_none=True)
    return dt


# --------------------------------------------------------------------------------------------
# Peak memory, in a fresh process


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak_rss() -> Callable[[], int]:
    """Reset the RSS high-water mark; return a function giving bytes of growth since then."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
        return lambda: (_status_kb("VmHWM") - before) * 1024
    except OSError:  # not resettable: ru_maxrss (KiB on Linux) minus the RSS now
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            before_b = int(f.read().split()[1]) * page
        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before_b


def peak_memory(device: str) -> Callable[[], int]:
    """Start measuring; the returned function gives the peak growth in bytes since then:
    `max_memory_allocated` on CUDA, the RSS high-water mark on CPU (`reset_peak_rss`)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        return lambda: max(0, torch.cuda.max_memory_allocated() - base)
    growth = reset_peak_rss()
    return lambda: max(0, growth())


def warm_up(device: str) -> None:
    """Run a tiny forward+backward so thread pools and allocators exist before measuring."""
    lin = nn.Linear(8, 8).to(device)
    lin(torch.randn(4, 8, device=device, requires_grad=True)).sum().backward()


def probe(spec: dict[str, Any], n: int, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Peak memory (bytes) and cold time of one forward, then one forward+backward. The row
    comes whole (as a dict: the child has no list to look it up in that could miss it)."""
    cfg = Config(**cfg_dict)
    torch.set_num_threads(cfg.threads)
    warm_up(cfg.device)
    module, fn = make_layer(Spec(**spec), n, cfg)
    x = make_input(n, cfg)
    gc.collect()
    result: dict[str, Any] = {}
    for mode in MODES:
        measure = peak_memory(cfg.device)
        seconds = call_once(module, fn, x, mode, cfg.device)
        result[mode] = {"peak_bytes": measure(), "seconds": seconds}
    return result


def _short_error(err: BaseException) -> str:
    return _first_line(f"{type(err).__name__}: {err}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


class Prober:
    """Peak-memory probes, each in a fresh process (`longseq.forkserver`)."""

    def __init__(self, preload: list[str]) -> None:
        self.server = Server(["longseq.bench.attention", *preload], quiet=True)

    def __call__(self, spec: Spec, n: int, cfg: Config, timeout: float) -> dict[str, Any]:
        try:
            return {
                "ok": True,
                **self.server.call(probe, asdict(spec), n, asdict(cfg), timeout=timeout),
            }
        except ChildError as err:
            # a layer that raised fails its row; one that ran out of time or memory (no trace)
            # is fatal: longer lengths are not tried
            line = _first_line(str(err))
            return (
                {"ok": False, "error": line}
                if err.trace
                else {"ok": False, "error": line, "fatal": True}
            )

    def close(self) -> None:
        self.server.close()


def extrapolate(history: list[tuple[int, float]], n: int) -> float | None:
    """Value at n from the last two (length, value) points, growth exponent clamped to [1, 2].

    With one point, assume quadratic growth (the worst a layer here may do); none: unknown.
    """
    pts = [(m, v) for m, v in history if m < n and v > 0]
    if not pts:
        return None
    m2, v2 = pts[-1]
    p = 2.0
    if len(pts) >= 2:
        m1, v1 = pts[-2]
        p = min(2.0, max(1.0, math.log(v2 / v1) / math.log(m2 / m1))) if v1 > 0 else 2.0
    return v2 * (n / m2) ** p


# --------------------------------------------------------------------------------------------
# Running


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "longseq": longseq.__version__,
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    for pkg in ("transformers", "linformer"):
        with contextlib.suppress(Exception):
            info[pkg] = version(pkg)
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(specs: list[Spec], cfg: Config) -> str:
    """The fixed settings of every row, printed before a run and written in table.md."""
    n = max(cfg.lengths)
    lines = [
        f"hidden {cfg.hidden}, heads {cfg.heads}, batch {cfg.batch}, {cfg.dtype}, "
        f"{cfg.device}, {cfg.threads} threads, median of {cfg.repeats} "
        f"(+{cfg.warmup} warm-up), lengths {', '.join(map(str, cfg.lengths))}"
    ]
    for s in specs:
        opts = s.options(n)
        for k, v in opts.items():  # what the mechanism derives from the length (`options_at`)
            if s.settings.get(k) != v:
                opts[k] = f"{v} at n={n}"
        extra = f", global tokens: first {s.global_tokens}" if s.global_tokens else ""
        vs = f"  (peer of {s.compare_to})" if s.compare_to else ""
        text = ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"
        lines.append(f"- {s.name}: {text}{extra}{vs}")
    return "\n".join(lines)


def _preload(specs: list[Spec]) -> list[str]:
    mods = {
        "hf_longformer": "transformers.models.longformer.modeling_longformer",
        "hf_bigbird": "transformers.models.big_bird.modeling_big_bird",
        "hf_reformer": "transformers.models.reformer.modeling_reformer",
        "lucidrains_linformer": "linformer",
    }
    out = []
    for s in specs:
        if s.builder in mods and mods[s.builder] not in out:
            with contextlib.suppress(ImportError):
                __import__(mods[s.builder])
                out.append(mods[s.builder])
    return out


class _Results:
    """The rows measured so far: appended to results.jsonl as they come, with the settings
    shared by every row, and the progress bar advanced for the steps a skipped row saves."""

    def __init__(self, path: Path, common: dict[str, Any], bar: Any) -> None:
        self.file = path.open("w")
        self.common, self.bar = common, bar
        self.rows: list[dict[str, Any]] = []

    def record(
        self,
        spec: Spec,
        n: int,
        mode: str,
        *,
        reason: str | None = None,
        times: list[float] | None = None,
        peak: float | None = None,
    ) -> None:
        row = {
            "mechanism": spec.name,
            "kind": spec.kind,
            "family": spec.family,
            "compare_to": spec.compare_to,
            "n": n,
            "mode": mode,
            "status": "skipped" if reason else "ok",
            "reason": reason,
            "median_ms": statistics.median(times) if times else None,
            "times_ms": times or [],
            "peak_mb": None if peak is None else peak / MIB,
            "settings": {**spec.options(n), "global_tokens": spec.global_tokens},
            **self.common,
        }
        self.rows.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def skip(self, spec: Spec, n: int, reason: str, steps: int) -> None:
        for mode in MODES:
            self.record(spec, n, mode, reason=reason)
        self.bar.update(steps)

    def close(self) -> None:
        self.file.close()


def run(cfg: Config, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every selected row at every length; write the outputs to cfg.out; return rows.

    Per length: each row's peak memory in a fresh process (`_probe_length`), then every row
    that fits timed in this process, round-robin (`_time_length`)."""
    specs = select(cfg.mechanisms, cfg.peers, tuple(cfg.backends))
    lengths = sorted(set(cfg.lengths))
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    log("attention benchmark settings:\n" + describe(specs, cfg))
    common = {
        "hidden": cfg.hidden,
        "heads": cfg.heads,
        "batch": cfg.batch,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "threads": cfg.threads,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "machine": machine_info(cfg.device),
        "torch": torch.__version__,
    }
    steps = len(lengths) * len(specs) * (1 + cfg.warmup + cfg.repeats)
    bar = tqdm(total=steps, disable=not cfg.progress, desc="bench", unit="step", file=sys.stderr)
    prober = Prober(_preload(specs))
    results = _Results(out_dir / "results.jsonl", common, bar)
    history: dict[str, dict[str, list[tuple[int, float]]]] = {
        s.name: {"mem": [], "sec": []} for s in specs
    }
    gave_up: dict[str, str] = {}  # rows dropped for memory/time at a shorter length
    try:
        for n in lengths:
            probes = _probe_length(prober, specs, n, cfg, history, gave_up, results)
            _time_length([s for s in specs if s.name in probes], probes, n, cfg, results)
            gc.collect()
    finally:
        results.close()
        bar.close()
        prober.close()
    (out_dir / "table.md").write_text(report.table(results.rows, describe(specs, cfg)))
    report.plot(results.rows, out_dir / "plot.png")
    return results.rows


def _probe_length(
    prober: Prober,
    specs: list[Spec],
    n: int,
    cfg: Config,
    history: dict[str, dict[str, list[tuple[int, float]]]],
    gave_up: dict[str, str],
    results: _Results,
) -> dict[str, dict[str, Any]]:
    """Peak memory (and a cold time for the limits) of every row at n, one fresh process per
    row; the rows that fail are recorded as skipped. Returns the probes of the others."""
    probes: dict[str, dict[str, Any]] = {}
    for spec in specs:
        results.bar.set_description(f"n={n} memory {spec.name}")
        res = _probe(prober, spec, n, cfg, history[spec.name], gave_up)
        if not res["ok"]:
            if res.get("fatal"):
                gave_up[spec.name] = f"{res['error']} at n={n}"
            results.skip(spec, n, res["error"], 1 + cfg.warmup + cfg.repeats)
            continue
        probes[spec.name] = res
        results.bar.update(1)
    return probes


def _time_length(
    specs: list[Spec], probes: dict[str, dict[str, Any]], n: int, cfg: Config, results: _Results
) -> None:
    """Time the probed rows at n, all in this process, round-robin; record them."""
    layers = []
    for spec in specs:
        try:
            layers.append((spec, *make_layer(spec, n, cfg)))
        except Exception as err:  # the probe built it: unexpected, but recorded
            results.skip(spec, n, _short_error(err), cfg.warmup + cfg.repeats)
    times, failed = time_round_robin(layers, make_input(n, cfg), cfg, results.bar)
    for spec, _, _ in layers:
        for mode in MODES:
            if spec.name in failed:
                results.record(spec, n, mode, reason=failed[spec.name])
            else:
                peak = probes[spec.name][mode]["peak_bytes"]
                results.record(spec, n, mode, times=times[spec.name][mode], peak=peak)


def _probe(
    prober: Prober,
    spec: Spec,
    n: int,
    cfg: Config,
    history: dict[str, list[tuple[int, float]]],
    gave_up: dict[str, str],
) -> dict[str, Any]:
    """One row's memory probe at n (unless the shorter lengths rule it out), recorded in its
    history; {"ok": False, "error": why} ("fatal": no longer length either) otherwise."""
    reason = _precheck(spec, n, cfg, history, gave_up)
    if reason:
        return {"ok": False, "error": reason}
    res = prober(spec, n, cfg, timeout=3 * cfg.max_seconds + 60)
    if res["ok"]:
        fb = res["fwd+bwd"]
        history["mem"].append((n, fb["peak_bytes"]))
        history["sec"].append((n, fb["seconds"]))
        if fb["seconds"] > cfg.max_seconds:
            return {
                "ok": False,
                "fatal": True,
                "error": f"one fwd+bwd took {fb['seconds']:.1f} s > "
                f"--max-seconds {cfg.max_seconds:g}",
            }
    return res


Layer = tuple[Spec, nn.Module, Callable[[Tensor], Tensor]]


def time_round_robin(
    layers: list[Layer],
    x: Tensor,
    cfg: Config,
    bar: Any = None,
    modes: dict[str, tuple[str, ...]] | None = None,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """Milliseconds per call of every layer and mode, warm-up rounds dropped; and failures.
    `modes`: the modes of a layer (by name) that are timed, where not both.

    Each round calls every layer once per mode; the order rotates by one layer each round, so
    no layer always runs first (after a cold cache) or right after the same neighbour. With
    `cfg.max_repeats` > `cfg.repeats`, rounds go on while some layer's times spread by more
    than `cfg.tolerance` (another process took the cores for part of the time), up to
    `cfg.max_repeats` timed rounds; `spread` says whether they settled.
    """
    times: dict[str, dict[str, list[float]]] = {
        s.name: {m: [] for m in MODES} for s, _, _ in layers
    }
    failed: dict[str, str] = {}
    rounds = cfg.warmup + cfg.repeats

    def unsettled() -> bool:
        return any(
            spread(t[mode]) > cfg.tolerance
            for name, t in times.items()
            if name not in failed
            for mode in MODES
        )

    r = 0  # rounds done
    while r < rounds or (r < cfg.warmup + cfg.max_repeats and unsettled()):
        if r >= rounds and bar is not None:
            bar.total += len(layers)
        k = r % max(1, len(layers))
        for spec, module, fn in layers[k:] + layers[:k]:
            if spec.name in failed:
                continue
            if bar is not None:
                bar.set_description(f"n={x.shape[1]} time {spec.name}")
            try:
                for mode in (modes or {}).get(spec.name, MODES):
                    dt = call_once(module, fn, x, mode, cfg.device)
                    if r >= cfg.warmup:
                        times[spec.name][mode].append(dt * 1e3)
            except Exception as err:  # e.g. out of memory on CUDA: record, go on
                failed[spec.name] = _short_error(err)
                if bar is not None:
                    bar.update(max(0, rounds - r - 1))
            if bar is not None:
                bar.update(1)
        r += 1
    return times, failed


def spread(times: list[float]) -> float:
    """Slowest over fastest call, minus 1 (0 for fewer than two calls)."""
    return max(times) / min(times) - 1 if len(times) > 1 and min(times) > 0 else 0.0


def _precheck(
    spec: Spec,
    n: int,
    cfg: Config,
    hist: dict[str, list[tuple[int, float]]],
    gave_up: dict[str, str],
) -> str | None:
    """A reason to skip `spec` at n before running it, or None."""
    if spec.name in gave_up:
        return f"skipped after: {gave_up[spec.name]}"
    mem = extrapolate(hist["mem"], n)
    if mem is not None and mem > cfg.max_memory_gb * 2**30:
        return f"expected peak memory {mem / 2**30:.1f} GiB > --max-memory-gb {cfg.max_memory_gb:g}"
    sec = extrapolate(hist["sec"], n)
    if sec is not None and sec > cfg.max_seconds:
        return f"expected fwd+bwd time {sec:.0f} s > --max-seconds {cfg.max_seconds:g}"
    return None
