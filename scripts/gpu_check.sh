#!/usr/bin/env bash
# The GPU check of issue 25 in one call (docs/benchmarks.md, "On a GPU"): correctness of the
# native and flex backends against the dense oracle, layer and whole-model benchmarks against
# Hugging Face and dense SDPA, compiled training tokens/s, and the ListOps runs in the time
# left. Writes gpu-results/<UTC time>/ (gitignored): summary.md, log.txt, *.jsonl, *.md, *.png.
#
#   scripts/gpu_check.sh                 # on the GPU machine, about 9 minutes (BUDGET seconds)
#   scripts/gpu_check.sh --tiny          # toy sizes on any machine: checks the script
#   BUDGET=300 scripts/gpu_check.sh --stages correctness,layers
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-gpu-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PY" scripts/gpu_check.py --out "$OUT" \
    --budget "${BUDGET:-540}" "$@"
echo "results: $OUT"
