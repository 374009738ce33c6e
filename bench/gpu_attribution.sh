#!/usr/bin/env bash
# Issue 13 at the acceptance's sizes on one GPU: PoisonedRAG NQ n=100 (every tracer side by side on the same
# answers: AttnTrace at the paper's setting, ContextCite with 64 ablations, leave-one-out, raw attention, and the
# one-forward interactive AttnTrace), injected instructions n=200 injected + 200 clean (detectors rules and judge
# chosen on a 200-question development slice from question 1000), citations on NQ-open n=300. Writes the JSON to
# OUTDIR and the "Attribution" section of docs/RESULTS.md.
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_attribution.sh OUTDIR [MODEL]
set -euo pipefail
OUT=${1:?output folder}
MODEL=${2:-qwen2.5-0.5b}
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
$PY -m bench.attribution --model "$MODEL" --device cuda --poisoned 100 --injection 200 --dev 200 --citations 300 \
  --out-dir "$OUT" --write-results 2>&1 | tee "$OUT/attribution.log"
