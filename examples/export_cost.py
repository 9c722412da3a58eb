"""What an exported program (`longseq export --format torch / onnx`) costs against eager at 4,096
tokens: Longformer (window 512, a 16-global-slot program), full attention, Linformer and local;
2 layers x 256 hidden, 4 heads, batch 1, fp32, 2 threads. The contenders alternate for 7
rounds; the medians, the fastest calls and the ratios to eager are printed and written as JSON.

    PYTHONPATH=src python examples/export_cost.py out.json
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from longseq.convert import program
from longseq.models import ModelConfig, build_model

MECHANISMS = (
    ("longformer", {"window": 512}),
    ("full", {}),
    ("linformer", {"k": 256}),
    ("local", {"chunk_length": 128}),
)


def timed(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def measure(mechanism: str, options: dict) -> dict:
    cfg = ModelConfig(
        vocab_size=1000,
        hidden_size=256,
        num_layers=2,
        num_heads=4,
        intermediate_size=1024,
        max_length=4096,
        attention=mechanism,
        attention_options=options,
        dropout=0.0,
    )
    model = build_model(cfg, seed=0).eval()
    folder = Path(tempfile.mkdtemp())
    export_s = {
        "torch": timed(lambda: program.export_program(model, folder / "t", "torch")),
        "onnx": timed(lambda: program.export_program(model, folder / "o", "onnx")),
    }
    rec = json.loads((folder / "t" / "export.json").read_text())
    torch_run = program.load_runner(folder / "t" / "model.pt2", "torch")
    onnx_run = program.load_runner(folder / "o" / "model.onnx", "onnx")
    inputs = program.example_inputs(model, 4096, batch=1)
    fitted = program.fit(inputs, rec["min_length"], rec["length_multiple"])
    eager = program.Program(model, 1)
    calls = {
        "eager": lambda: eager(*inputs),
        "torch": lambda: torch_run(*fitted),
        "onnx": lambda: onnx_run(*fitted),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for _ in range(7):
            for name, call in calls.items():
                times[name].append(timed(call))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "export_s": {k: round(v, 1) for k, v in export_s.items()},
        "median_ms": {k: round(1000 * v, 1) for k, v in med.items()},
        "min_ms": {k: round(1000 * min(v), 1) for k, v in times.items()},
        "ratio_to_eager": {k: round(med[k] / med["eager"], 2) for k in ("torch", "onnx")},
    }


def main() -> None:
    torch.set_num_threads(2)
    out = {}
    for mechanism, options in MECHANISMS:
        out[mechanism] = measure(mechanism, options)
        print(mechanism, json.dumps(out[mechanism]), flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
