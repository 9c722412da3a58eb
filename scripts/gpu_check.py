"""The GPU check of issue 25, in one call: correctness, layer and model benchmarks, training
throughput and the ListOps runs, each stage time-boxed, every result written as it comes.

    PYTHONPATH=src python scripts/gpu_check.py --out gpu-results/RUN [--budget 540] [--tiny]

Stages (in this order; a stage that fails is recorded and the next one runs):

1. correctness: every mask mechanism (full, longformer with dilation and global tokens,
   bigbird ITC / ETC / causal, local; causal and not), native and flex, against the dense
   oracle (fp64 softmax under the layer's own `pattern`, from the same projections), outputs
   and input gradients (TF32 off).
2. layers: Longformer (window 512) and BigBird (block 64) layers, native and flex, against
   Hugging Face's layers and dense SDPA (FlashAttention), forward and fwd+bwd at 4K/16K/32K;
   peak memory at 128K for ours and SDPA (`bench.attention`'s rows and timing).
3. models: Longformer-base whole (12 layers), native and flex, against HF's LongformerModel with
   the same weights and dense SDPA, at 4K/16K/32K (`bench.model`'s rows).
4. train: training tokens/s of Longformer-base at 16K, bf16 autocast, AdamW: longseq native and
   flex under torch.compile, HF eager.
5. listops: `longseq compare --task listops --preset cpu` for every mechanism, two seeds, in the
   time left (resumable: run the same command again with --resume to finish it).

`--tiny`: the same stages at toy sizes on whatever device there is (CPU: flex forward only,
eager), to check the script itself (docs/benchmarks.md). Writes OUT/<stage>.jsonl,
OUT/summary.md (the goals of issue 25 and what was measured) and OUT/log.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from longseq import attention
from longseq.attention import flex
from longseq.bench import attention as ba
from longseq.bench import model as bm
from longseq.bench import report


class Run:
    def __init__(self, out: Path, budget: float, tiny: bool, device: str) -> None:
        self.out, self.budget, self.tiny, self.device = out, budget, tiny, device
        self.start = time.monotonic()
        self.summary: list[str] = []
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "log.txt").open("a")

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def log(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:7.1f}s] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def write(self, stage: str, record: dict[str, Any]) -> None:
        with (self.out / f"{stage}.jsonl").open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    @contextlib.contextmanager
    def stage(self, name: str, need: float) -> Iterator[bool]:
        """Run the block if `need` seconds are left; record a failure and go on."""
        if self.left() < need:
            self.log(f"{name}: skipped, {self.left():.0f} s left < {need:.0f} s needed")
            self.summary.append(f"- {name}: not run (time)")
            yield False
            return
        self.log(f"{name}: start")
        t0 = time.monotonic()
        try:
            yield True
        except Exception as err:  # a stage's failure is a result too
            self.log(f"{name}: FAILED {type(err).__name__}: {err}\n{traceback.format_exc()}")
            self.summary.append(f"- {name}: failed: {type(err).__name__}: {str(err)[:200]}")
        finally:
            self.log(f"{name}: {time.monotonic() - t0:.0f} s")
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ correctness

# (mechanism, options, global tokens): few, since each compiles FlexAttention's kernels
# (forward and backward: tens of seconds each on a GPU)
CORRECTNESS: list[tuple[str, dict[str, Any], bool]] = [
    ("full", {"causal": True}, False),
    ("longformer", {"window": 64, "dilation": [1, 2, 1, 3]}, True),
    ("longformer", {"window": 64, "causal": True, "num_key_value_heads": 2}, False),
    ("bigbird", {"block_size": 16, "num_random_blocks": 2}, False),
    ("bigbird", {"block_size": 16, "num_random_blocks": 2, "variant": "etc"}, False),
    ("bigbird", {"block_size": 16, "num_random_blocks": 2, "causal": True}, False),
    ("local", {"chunk_length": 32, "num_chunks_after": 1}, False),
]


def oracle(layer: Any, x: torch.Tensor, real: torch.Tensor, glob: torch.Tensor | None) -> Any:
    """fp64 dense softmax under `layer.pattern` from the layer's own projections, each row of
    the batch under the pattern of its own length (up to its last real token: BigBird draws
    its blocks for that), real keys only; Longformer's global rows from its global projections
    over every real key."""
    layer64, x64 = layer.double(), x.double()
    q, k, v = layer64.project(x64)
    b, n = real.shape
    extra = 0
    if getattr(layer64, "global_states", None) is not None:  # BigBird ETC: extra keys first
        _, ek, ev = layer64.project(layer64.global_states[None])
        extra = ek.shape[2]
        k = torch.cat([ek.expand(b, -1, -1, -1), k], 2)
        v = torch.cat([ev.expand(b, -1, -1, -1), v], 2)
    allowed = torch.zeros(b, layer.num_heads, n, n + extra, dtype=torch.bool)
    for i in range(b):
        m = int(real[i].nonzero().max()) + 1
        is_global = None if glob is None else glob[i, :m].cpu()
        pat = layer64.pattern(m, is_global)  # (H, extra + m, extra + m)
        allowed[i, :, :m, : extra + m] = pat[:, extra:]
    real_k = torch.cat([real.new_ones(b, extra), real], 1)
    allowed = allowed.to(x.device) & real_k[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    ctx = torch.softmax(scores, -1).nan_to_num(0.0) @ v
    if glob is not None:  # the global rows: their own projections, every real key
        d = layer64.head_dim
        qg = layer64.query_global(x64).unflatten(-1, (-1, d)).transpose(1, 2) * d**-0.5
        kg = layer64.key_global(x64).unflatten(-1, (-1, d)).transpose(1, 2)
        vg = layer64.value_global(x64).unflatten(-1, (-1, d)).transpose(1, 2)
        s = (qg @ kg.transpose(-1, -2)).masked_fill(~real[:, None, None, :], float("-inf"))
        rows = torch.softmax(s, -1) @ vg
        ctx = torch.where(glob[:, None, :, None], rows, ctx)
    out = layer64.out(ctx.transpose(1, 2).flatten(2))
    layer.float()
    return out.masked_fill(~real[..., None], 0.0).float()


def correctness(run: Run) -> None:
    n, hidden, heads = (80, 32, 4) if run.tiny else (1000, 256, 4)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    grads = run.device == "cuda"
    ok_all = True
    for name, opts, with_glob in CORRECTNESS:
        torch.manual_seed(0)
        native = attention.build(name, hidden, heads, **opts).to(run.device).eval()
        flexed = attention.build(name, hidden, heads, backend="flex", **opts).to(run.device).eval()
        flexed.load_state_dict(native.state_dict())
        x = torch.randn(2, n, hidden, device=run.device)
        real = torch.ones(2, n, dtype=torch.bool, device=run.device)
        real[1, n - 37 :] = False
        glob = None
        if with_glob:
            glob = torch.zeros(2, n, dtype=torch.bool, device=run.device)
            glob[:, [0, n // 3]] = True
        with torch.no_grad():
            want = oracle(native, x, real, glob)
        rec: dict[str, Any] = {"mechanism": name, "options": opts, "global": with_glob, "n": n}
        for label, layer in (("native", native), ("flex", flexed)):
            xg = x.clone().requires_grad_(grads)
            with contextlib.ExitStack() as stack:
                if run.device == "cpu":  # CPU: forward only; eager (compiling takes minutes)
                    stack.enter_context(torch.no_grad())
                    stack.enter_context(flex.eager())
                got = layer(xg, real, glob)
                if grads:
                    got.square().sum().backward()
            rec[f"{label}_max_err"] = float((got.detach() - want).abs().max())
            if grads:
                rec[f"{label}_grad"] = xg.grad
        if grads:
            rec["grad_max_diff"] = float(
                (rec.pop("flex_grad") - rec.pop("native_grad")).abs().max()
            )
        rec["ok"] = rec["native_max_err"] < 1e-4 and rec["flex_max_err"] < 1e-4
        rec["ok"] = rec["ok"] and rec.get("grad_max_diff", 0.0) < 1e-4
        ok_all &= rec["ok"]
        run.write("correctness", rec)
        run.log(f"correctness {name} {opts} glob={with_glob}: {rec}")
    run.summary.append(
        f"- correctness (native and flex vs the fp64 dense oracle, 1e-4, n={n}): "
        f"{'all equal' if ok_all else 'DIFFERENCES: see correctness.jsonl'}"
    )


# ---------------------------------------------------------------------------------- timing


def _time_and_memory(
    run: Run,
    stage: str,
    rows: list[tuple[str, Callable[[], tuple[Any, Callable]]]],
    n: int,
    repeats: int,
    x: torch.Tensor,
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    """Build each row, measure its peak memory (CUDA: in this process, max_memory_allocated
    is exact), then time them all round-robin. Records as the benches write them."""
    built, peaks, records = [], {}, []
    for name, make in rows:
        try:
            module, fn = make()
            peaks[name] = {}
            for mode in ba.MODES:
                measure = ba.peak_memory(run.device)
                try:
                    ba.call_once(module, fn, x, mode, run.device)
                    peaks[name][mode] = measure()
                except flex.FlexBackwardUnavailable:
                    peaks[name][mode] = None
            built.append((bm.ModelRow(name), module, fn))
        except Exception as err:  # out of memory, a peer's length rule: a skipped row
            records.append(
                {"mechanism": name, "n": n, "status": "skipped", "reason": str(err)[:300]}
            )
            if run.device == "cuda":
                torch.cuda.empty_cache()
    modes = {name: tuple(m for m in ba.MODES if peaks[name][m] is not None) for name in peaks}
    cfg = ba.Config(repeats=repeats, warmup=1, device=run.device)
    times, failed = ba.time_round_robin(built, x, cfg, None, modes)
    for spec, _, _ in built:
        for mode in ba.MODES:
            t = times[spec.name][mode]
            rec = {
                "mechanism": spec.name,
                "kind": "peer" if spec.name.startswith("hf") else "ours",
                "compare_to": None,
                "n": n,
                "mode": mode,
                "status": "ok" if t and spec.name not in failed else "skipped",
                "reason": failed.get(spec.name),
                "median_ms": statistics.median(t) if t else None,
                "times_ms": t,
                "peak_mb": None
                if peaks[spec.name][mode] is None
                else peaks[spec.name][mode] / 2**20,
                "tokens_per_s": x.shape[0] * n / (statistics.median(t) / 1e3) if t else None,
                "device": run.device,
                **extra,
            }
            records.append(rec)
    for rec in records:
        run.write(stage, rec)
    del built
    return records


def layers(run: Run) -> None:
    lengths = [256, 512] if run.tiny else [4096, 16384, 32768]
    hidden, heads = (64, 4) if run.tiny else (768, 12)
    cfg = ba.Config(hidden=hidden, heads=heads, device=run.device)
    specs = ba.select(["longformer", "bigbird"], True, ("native", "flex"))
    # not the projections, the global-token rows or flex full attention (SDPA is the dense
    # baseline): each flex row compiles its kernels at each length
    drop = ("projections", "full+flex")
    specs = [s for s in specs if s.name not in drop and "+global" not in s.name]
    records = []
    for n in lengths + ([] if run.tiny else [131072]):
        memory_only = n == 131072
        chosen = [s for s in specs if not (memory_only and s.kind == "peer")]
        x = ba.make_input(n, cfg)
        rows = [(s.name, lambda s=s, n=n: ba.make_layer(s, n, cfg)) for s in chosen]
        records += _time_and_memory(run, "layers", rows, n, 1 if memory_only else 5, x, {})
        run.log(f"layers n={n} done, {run.left():.0f} s left")
        if run.left() < 200:
            break
    _report(run, "layers", records, "Attention layers (hidden 768, 12 heads, batch 1, fp32)")
    _goal(run, records, "longformer", "hf-longformer", 16384, 10, "Longformer layer vs HF")
    _goal(run, records, "longformer+flex", "hf-longformer", 16384, 10, "Longformer flex vs HF")
    _goal(run, records, "longformer", "full", 32768, 4, "Longformer layer vs SDPA")
    _goal(run, records, "longformer+flex", "full", 32768, 4, "Longformer flex vs SDPA")
    _goal(run, records, "bigbird", "hf-bigbird", 16384, 10, "BigBird layer vs HF")
    _goal(run, records, "bigbird+flex", "hf-bigbird", 16384, 10, "BigBird flex vs HF")


def models(run: Run) -> None:
    lengths = [256, 512] if run.tiny else [4096, 16384, 32768]
    cfg = bm.ModelBenchConfig(
        model="longformer-base", layers=1 if run.tiny else None, flex=True, device=run.device
    )
    records = []
    for n in lengths:
        x = torch.zeros(1, n, device=run.device)
        rows = [(r, lambda r=r, n=n: _model_row(r, cfg, n)) for r in bm.rows(cfg)]
        records += _time_and_memory(run, "models", rows, n, 3, x, {"model": cfg.model})
        run.log(f"models n={n} done, {run.left():.0f} s left")
        if run.left() < 240:
            break
    _report(run, "models", records, "Longformer-base, whole model (batch 1, fp32)")
    _goal(run, records, "longseq", "hf", 16384, 3, "Longformer-base fwd+bwd vs HF")


def _model_row(row: str, cfg: bm.ModelBenchConfig, n: int) -> tuple[Any, Callable]:
    model = bm.build_row(row, cfg, n)
    return model, bm.make_call(model, cfg, n)


def train(run: Run) -> None:
    """Training tokens/s: AdamW steps under bf16 autocast (CUDA), compiled for longseq."""
    n = 512 if run.tiny else 16384
    steps = 2 if run.tiny else 6
    cfg = bm.ModelBenchConfig(
        model="longformer-base", layers=1 if run.tiny else None, device=run.device
    )
    rows = ["longseq", "hf"] + (["longseq-flex"] if run.device == "cuda" else [])
    out = {}
    for row in rows:
        try:
            model = bm.build_row(row, cfg, n).train()
            if row != "hf" and not run.tiny:
                model.compile()  # in place: the calls below run the compiled forward
            step = bm.make_call(model, cfg, n)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            autocast = torch.autocast(
                run.device, dtype=torch.bfloat16, enabled=run.device == "cuda"
            )
            times = []
            for i in range(steps + 2):  # two warm-up steps (compilation)
                _sync(run.device)
                t0 = time.perf_counter()
                with autocast:
                    loss = step(None).float().sum()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync(run.device)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            out[row] = n / statistics.median(times)
            rec = {"row": row, "n": n, "tokens_per_s": out[row], "step_s": times}
        except Exception as err:
            rec = {"row": row, "n": n, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        run.write("train", rec)
        run.log(f"train {rec}")
        gc.collect()
        if run.device == "cuda":
            torch.cuda.empty_cache()
    if "longseq" in out and "hf" in out:
        ratio = out["longseq"] / out["hf"]
        run.summary.append(
            f"- Longformer-base training tokens/s at n={n}: longseq {out['longseq']:.0f}, HF "
            f"{out['hf']:.0f} ({ratio:.2f}x; goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})"
            + (f"; flex {out['longseq-flex']:.0f}" if "longseq-flex" in out else "")
        )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def listops(run: Run) -> None:
    budget = max(60.0, run.left() - 30)
    preset = ["--preset", "default", "--steps", "20"] if run.tiny else ["--preset", "cpu"]
    cmd = [
        sys.executable,
        "-m",
        "longseq.cli",
        "compare",
        "--task",
        "listops",
        *preset,
        "--seeds",
        "2",
        "--device",
        "auto",
        "--no-sweep",
        "--no-progress",
        "--resume",
        "--out",
        str(run.out / "listops"),
    ]
    run.log(f"listops: {' '.join(cmd)} (up to {budget:.0f} s; resumable)")
    try:
        proc = subprocess.run(cmd, timeout=budget, capture_output=True, text=True)
        (run.out / "listops.out").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
        done = "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        done = f"stopped after {budget:.0f} s (resume: the same command with --resume)"
    run.summary.append(f"- ListOps `cpu` preset, every mechanism, 2 seeds: {done}; listops/")


# ---------------------------------------------------------------------------------- report


def _report(run: Run, stage: str, records: list[dict[str, Any]], title: str) -> None:
    ok = [r for r in records if "mode" in r]
    (run.out / f"{stage}.md").write_text(
        report.table(ok, title) if stage == "layers" else bm.table(ok, title)
    )
    report.plot(ok, run.out / f"{stage}.png", title=f"{title}, {run.device}")


def _goal(
    run: Run, records: list[dict[str, Any]], ours: str, other: str, n: int, want: float, what: str
) -> None:
    def ms(name: str) -> float | None:
        return next(
            (
                r["median_ms"]
                for r in records
                if r.get("mechanism") == name
                and r.get("n") == n
                and r.get("mode") == "fwd+bwd"
                and r.get("status") == "ok"
            ),
            None,
        )

    a, b = ms(ours), ms(other)
    if a is None or b is None:
        run.summary.append(f"- {what} at n={n}: not measured ({ours}: {a}, {other}: {b})")
        return
    ratio = b / a
    verdict = "met" if ratio >= want else "NOT met"
    run.summary.append(f"- {what} at n={n}, fwd+bwd: {ratio:.2f}x (goal >= {want}x: {verdict})")


STAGES = {
    "correctness": (correctness, 30),
    "layers": (layers, 120),
    "models": (models, 120),
    "train": (train, 90),
    "listops": (listops, 60),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all the stages")
    p.add_argument("--tiny", action="store_true", help="toy sizes, any device: checks the script")
    p.add_argument("--stages", default=",".join(STAGES))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(2 if device == "cpu" else torch.get_num_threads())
    run = Run(Path(args.out), args.budget, args.tiny, device)
    info = ba.machine_info(device)
    run.log(f"machine: {info}")
    (run.out / "machine.json").write_text(json.dumps(info, indent=1))
    with contextlib.ExitStack() as stack:
        if device == "cpu":  # CPU flex compiles for minutes per shape: the dry run runs it eager
            stack.enter_context(flex.eager())
        for name in args.stages.split(","):
            fn, need = STAGES[name]
            with run.stage(name, 5 if args.tiny else need) as go:
                if go:
                    fn(run)
    summary = "\n".join([f"# GPU check ({info.get('gpu', device)})", "", *run.summary, ""])
    (run.out / "summary.md").write_text(summary)
    run.log(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
