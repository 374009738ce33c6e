#!/usr/bin/env bash
# Issue 13 at the acceptance's sizes on one GPU, one process per suite, all at once:
#   poisoned   PoisonedRAG NQ, all 100 target questions; every tracer side by side on the same answers (AttnTrace at
#              the paper's setting, ContextCite with 64 ablations, leave-one-out, raw attention, the one-forward
#              interactive AttnTrace)
#   injection  detectors rules and judge on a 200-question development slice (questions from 1000), then on the
#              report slice (questions from 0, 200 injected + 200 clean contexts) that no choice saw
#   citations  NQ-open, CITATIONS questions (default 650, for >= 300 correct answers), the tracers of CITE_METHODS
# then `python -m bench.attribution --from-json` writes the "Attribution" section of docs/RESULTS.md.
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_attribution.sh OUTDIR [MODEL]
set -uo pipefail
OUT=${1:?output folder}
MODEL=${2:-qwen2.5-0.5b}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
POISONED=${POISONED:-100} INJECTION=${INJECTION:-200} CITATIONS=${CITATIONS:-650}
CITE_METHODS=${CITE_METHODS:-"attntrace,attntrace(subsamples=1, keep=1.0),attention"}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
ev() { # name, then `ragcore eval` arguments
  local name=$1; shift
  $PY -m ragcore.cli -v -q eval "$@" --model "$MODEL" --device "$DEVICE" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
}
ev poisoned poisoned --method "attntrace,contextcite,loo,attention,attntrace(subsamples=1, keep=1.0)" --limit "$POISONED"
ev injection_dev injection --detector rules,judge --offset 1000 --limit "$INJECTION"
ev injection injection --detector rules,judge --limit "$INJECTION"
ev citations citations --method "$CITE_METHODS" --limit "$CITATIONS"
wait
$PY -m bench.attribution --from-json --out-dir "$OUT" --write-results \
  --note "Ran on one GPU by bench/gpu_attribution.sh, one process per suite, all at once (times within a suite are comparable)."
