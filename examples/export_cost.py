"""`longseq export --format torch/onnx`: what the program costs against eager at 4,096 tokens: Longformer (w=512, 16 global-slot program) and
full attention; 2 layers x 256 hidden, 4 heads, batch 1, fp32, 2 threads. Alternates the
contenders, 7 rounds, reports median times and ratios."""
import json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from longseq.models import ModelConfig, build_model
from longseq.convert import program
torch.set_num_threads(2)
out = {}
for mech, opts in (("longformer", {"window": 512}), ("full", {}), ("linformer", {"k": 256}), ("local", {"chunk_length": 128})):
    cfg = ModelConfig(vocab_size=1000, hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024,
                      max_length=4096, attention=mech, attention_options=opts, dropout=0.0)
    m = build_model(cfg, seed=0).eval()
    d = Path(tempfile.mkdtemp())
    t0 = time.time(); program.export_program(m, d / "t", "torch"); tt = time.time() - t0
    t0 = time.time(); program.export_program(m, d / "o", "onnx"); to = time.time() - t0
    rec = json.loads((d / "t" / "export.json").read_text())
    runners = {"torch": program.load_runner(d / "t" / "model.pt2", "torch"),
               "onnx": program.load_runner(d / "o" / "model.onnx", "onnx")}
    inputs = program.example_inputs(m, 4096, batch=1)
    fitted = program.fit(inputs, rec["min_length"], rec["length_multiple"])
    eager = program.Program(m, 1)
    times = {"eager": [], "torch": [], "onnx": []}
    with torch.no_grad():
        for _ in range(7):
            for name, f in (("eager", lambda: eager(*inputs)), ("torch", lambda: runners["torch"](*fitted)), ("onnx", lambda: runners["onnx"](*fitted))):
                t = time.perf_counter(); f(); times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out[mech] = {"export_s": {"torch": round(tt, 1), "onnx": round(to, 1)},
                 "median_ms": {k: round(1000 * v, 1) for k, v in med.items()},
                 "min_ms": {k: round(1000 * min(v), 1) for k, v in times.items()},
                 "ratio_to_eager": {k: round(med[k] / med["eager"], 2) for k in ("torch", "onnx")}}
    print(mech, json.dumps(out[mech]), flush=True)
Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
