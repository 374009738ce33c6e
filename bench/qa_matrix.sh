#!/usr/bin/env bash
# QA accuracy of both bundled generators in the three settings (closed book, oracle passage, top 5 retrieved).
# Usage: bench/qa_matrix.sh [LIMIT] [OUTDIR] [DEVICE]
set -euo pipefail
LIMIT=${1:-100}; OUT=${2:-out/qa}; DEVICE=${3:-cpu}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
for model in smollm2-135m qwen2.5-0.5b; do
  for setting in closed oracle top5; do
    HF_HUB_OFFLINE=1 "$BIN/ragcore" eval qa --setting "$setting" --model "$model" --limit "$LIMIT" \
      --device "$DEVICE" --out "$OUT/$model-$setting.json" > /dev/null
  done
done
