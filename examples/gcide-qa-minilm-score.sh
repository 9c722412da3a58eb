#!/bin/bash
# Score a MiniLM QA run (examples/gcide-qa-minilm-short.yaml or -truncated.yaml) at 512
# tokens (its trained length) and longified after fine-tuning to 2,048 tokens (Longformer
# window 512 with the question global; BigBird blocks of 64), on the same test documents,
# by where the answer ends: within the first 512 tokens, 512-1023, and beyond. A step
# whose output exists is skipped, so the script resumes. docs/experiments.md has the
# results and set-up.
#
#   RUN=runs/gcide-qa-minilm-truncated CKPT=best TEST=data/gcide-qa-7000/test.jsonl \
#       examples/gcide-qa-minilm-score.sh
set -e
RUN=${RUN:-runs/gcide-qa-minilm-truncated}
CKPT=${CKPT:-best}
TEST=${TEST:-data/gcide-qa-7000/test.jsonl}
OUT=${OUT:-results/$(basename "$RUN")}
THREADS=${THREADS:-}  # torch threads per evaluation (default: torch's own)
mkdir -p "$OUT"
score() {  # MODEL NAME [--max-length N]
    local model=$1 name=$2
    shift 2
    [ -f "$OUT/$name.json" ] || longseq evaluate --model "$model" --data "$TEST" "$@" \
        --buckets 0,512,1024,2048 --batch-size 2 --no-progress --out "$OUT/$name.json" \
        ${THREADS:+--threads "$THREADS"}
}
score "$RUN/$CKPT" truncated --max-length 512  # its trained length, whatever the run read
[ -d "$RUN-longformer-2048" ] || longseq longify "$RUN/$CKPT" "$RUN-longformer-2048" \
    --max-length 2048 --attention longformer --window 512 --no-check
score "$RUN-longformer-2048" longformer --max-length 2048
[ -d "$RUN-bigbird-2048" ] || longseq longify "$RUN/$CKPT" "$RUN-bigbird-2048" \
    --max-length 2048 --attention bigbird --block-size 64 --no-check
score "$RUN-bigbird-2048" bigbird --max-length 2048
