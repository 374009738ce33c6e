#!/usr/bin/env bash
# Issue 13 at the acceptance's sizes on one GPU, every suite at once (the slow ones in shards):
#   poisoned   PoisonedRAG NQ, all 100 target questions in SHUFFLES (default 2) seeded orders each, so that >= 100
#              answers are attacked; every tracer side by side on the same answers (AttnTrace at the paper's setting,
#              its 30 subsamples in one batch; ContextCite with 64 ablations as the context-cite package runs them,
#              one per forward, and batched 64 at once; leave-one-out, raw attention, the one-forward interactive
#              AttnTrace)
#   injection  DETECTORS (default rules; the judge flagged nothing in the lease of 2026-11-30) reading the top 5, 10,
#              20 or 40 traced segments, on a 200-question development slice (questions from 1000, the dev half of
#              the injected strings), and on the report slice (questions from 0, the other half of the strings; 200
#              injected + 200 clean contexts) that no choice saw
#   citations  NQ-open, CITATIONS questions (default 1000: about a third are answered correctly), the tracers of
#              CITE_METHODS (default the Pipeline's interactive AttnTrace)
#   poisoned_dev  the trace-and-remove defence's development run: PoisonedRAG MS MARCO (eval/data), AttnTrace, in
#              SHUFFLES orders; a second round of K2 in SECOND_ROUND (default 1,2,3) in it and in `poisoned`;
#              bench.attribution chooses the setting on it and reads that one on NQ
#   speed      the tracers alone, one process: PoisonedRAG NQ, the first SPEED_TARGETS (default 20) targets, AttnTrace
#              against ContextCite one ablation per forward (the package's default) and 64 at once; speed.json,
#              which bench.attribution's speed verdict reads (run it with nothing else on its GPU)
# SUITES (default "poisoned_dev poisoned injection citations") says which run;
# then `python -m bench.attribution --from-json` writes the "Attribution" section of docs/RESULTS.md.
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_attribution.sh OUTDIR [MODEL]
set -uo pipefail
OUT=${1:?output folder}
MODEL=${2:-qwen2.5-0.5b}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
POISONED=${POISONED:-100} INJECTION=${INJECTION:-200} CITATIONS=${CITATIONS:-1000}
CITE_METHODS=${CITE_METHODS:-"attntrace(subsamples=1, keep=1.0)"}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
ev() { # name, then `ragcore eval` arguments
  local name=$1; shift
  $PY -m ragcore.cli -v -q eval "$@" --model "$MODEL" --device "$DEVICE" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
}
# shards: one suite's questions split over processes (about 40 s per PoisonedRAG target with every tracer, 2.5 s per
# citation question, measured with ~20 processes on one H200); bench.attribution --from-json merges NAME-K.json
P_SHARDS=${P_SHARDS:-10} C_SHARDS=${C_SHARDS:-8} SHUFFLES=${SHUFFLES:-2}
P_METHODS=${P_METHODS:-"attntrace,contextcite,contextcite(batch_size=64),loo,attention,attntrace(subsamples=1, keep=1.0)"}
SUITES=${SUITES:-"poisoned_dev poisoned injection citations"} SECOND_ROUND=${SECOND_ROUND:-1,2,3}
on() { [[ " $SUITES " == *" $1 "* ]]; }
if on poisoned_dev; then
  for ((k = 0; k < P_SHARDS; k++)); do
    n=$(((POISONED + P_SHARDS - 1) / P_SHARDS))
    ev poisoned_dev-$k poisoned --data eval/data/poisonedrag_msmarco.json --method attntrace --shuffles "$SHUFFLES" \
      --second-round "$SECOND_ROUND" --offset $((k * n)) --limit $n
  done
fi
if on poisoned; then
  for ((k = 0; k < P_SHARDS; k++)); do
    n=$(((POISONED + P_SHARDS - 1) / P_SHARDS))
    ev poisoned-$k poisoned --method "$P_METHODS" --shuffles "$SHUFFLES" --second-round "$SECOND_ROUND" \
      --offset $((k * n)) --limit $n
  done
fi
if on speed; then  # one process: the tokenizer's own threads, as a user's process has them (the session turns them off)
  TOKENIZERS_PARALLELISM=${SPEED_TOKENIZERS_PARALLELISM:-true} \
    ev speed poisoned --method "attntrace,contextcite,contextcite(batch_size=64)" --limit "${SPEED_TARGETS:-20}"
fi
# the detector and K are chosen on the dev half of the injected strings; the report uses the other half
if on injection; then
  ev injection_dev injection --detector "${DETECTORS:-rules}" --top-k 5,10,20,40 --pool dev --offset 1000 --limit "$INJECTION"
  ev injection injection --detector "${DETECTORS:-rules}" --top-k 5,10,20,40 --pool report --limit "$INJECTION"
fi
if on citations; then
  for ((k = 0; k < C_SHARDS; k++)); do
    n=$(((CITATIONS + C_SHARDS - 1) / C_SHARDS))
    ev citations-$k citations --method "$CITE_METHODS" --offset $((k * n)) --limit $n
  done
fi
wait
$PY -m bench.attribution --from-json --out-dir "$OUT" --write-results \
  --note "Ran on one GPU by bench/gpu_attribution.sh, every suite at once, the slow ones in shards (times compare within a suite only)."
