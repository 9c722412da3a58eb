#!/usr/bin/env bash
# Does reading 16K bases pay once a model knows the local code? Short windows first, then
# long (the curriculum that made QA learn): the genome-cds model trained at 512 bases
# (examples/genome-cds.yaml, runs/genome-cds) continues for 500 more steps of 16,384 bases,
# either at 512 bases (32 windows a step) or at 16,384 (one window a step), seeds 0 and 1.
# Same weights at the start, same bases seen, full attention with rotary positions (nothing
# in the model depends on the length). docs/experiments.md (genome-cds) has the result.
#
#   longseq train --config examples/genome-cds.yaml        # once: runs/genome-cds
#   bash examples/genome_cds_curriculum.sh                  # ~4 min a run on one core
set -euo pipefail
START=${START:-runs/genome-cds/best}
THREADS=${THREADS:-1}
for seed in ${SEEDS:-0 1}; do
  for n in 512 16384; do
    out=runs/genome-cds-then-$n-s$seed
    [ -f "$out/best/config.json" ] && [ -n "$(grep -l '"split": "test"' "$out/log.jsonl" 2>/dev/null)" ] && continue
    longseq train --config examples/genome-cds.yaml --no-progress --resume \
      --set model.init_from="$START" --set model.max_length=$n \
      --set data.max_length=$n --set data.batch_size=$((16384 / n)) \
      --set optim.warmup_steps=0 --set run.seed=$seed --set run.threads=$THREADS \
      --set run.out="$out"
  done
done
for seed in ${SEEDS:-0 1}; do
  for n in 512 16384; do
    printf '%s seed %s: ' "$n" "$seed"
    grep '"split": "test"' runs/genome-cds-then-$n-s$seed/log.jsonl | tail -1
  done
done
