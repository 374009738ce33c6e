#!/usr/bin/env bash
# Issue #3 on one GPU machine, second round. Steps (run in this order, each waits for its processes):
#   convert   the GGUF converted once for ragcore's transformers and once for kvpress's (KVP)
#   headline  the query-aware headline chosen without peeking: every candidate at 0.5 and 0.75 on a development
#             slice (questions 301-600) and on the headline's questions (1-300); the compressor named best is the
#             one best on the development slice. One process per candidate and slice; the first of each slice
#             also runs the full cache. Further rounds: CANDIDATES="..." HEADLINE_BASELINE=0 (HEADLINE_RATIOS=0.75).
#   timing    kvpress 0.5.5 side by side ALONE on the GPU (nothing else running), so prefill + compression times
#             are comparable: snapkv, knorm, streaming_llm, expected_attention at 0.5 (TIMING_RATIOS), n=100; answers
#             are cut at 8 tokens (the timing covers prefill + compression only).
#   fill      the five compressors missing from the NQ top-10 and key-value matrices of the first GPU run.
#   MODEL=/var/tmp/m/qwen2.5-0.5b.gguf RETRIEVED=/var/tmp/m/retrieved.json KVP=/var/tmp/kvp \
#     RAGCORE_CACHE=/var/tmp/cache bench/gpu_kv_headline.sh OUTDIR STEP...   (STEP "a+b": a and b together)
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"
PY=${PY:-python3}
: "${MODEL:?}" "${RETRIEVED:?}" "${KVP:?}" "${RAGCORE_CACHE:?}"
B=${BATCH:-32}
CANDIDATES=${CANDIDATES:-snapkv layers:snapkv chunk:snapkv layers:chunk:snapkv caote:snapkv adaptive:snapkv}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NQ=(--k 5 --retrieved "$RETRIEVED")

m() { # name, then kv_matrix arguments
  local name=$1; shift
  $PY -m bench.kv_matrix --model "$MODEL" --device cuda --batch-size "$B" --out "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1 &
}

for steps in "$@"; do  # "a+b": steps that run together
  echo "$(date +%T) $steps"
  for step in ${steps//+/ }; do
  case $step in
  convert)
    $PY -c "import sys; from ragcore.models import resolve; print(resolve(sys.argv[1], 'generator'))" "$MODEL" \
      > "$OUT/convert.log" 2>&1 &
    [ -d "$KVP" ] && PYTHONPATH="$KVP:${PYTHONPATH:-}" RAGCORE_CACHE="$RAGCORE_CACHE-kvp" \
      $PY -c "import sys; from ragcore.models import resolve; print(resolve(sys.argv[1], 'generator'))" "$MODEL" \
      > "$OUT/convert-kvp.log" 2>&1 &  # KVP absent: ragcore's runs only
    ;;
  headline)
    for slice in dev:300 head:0; do
      base=""  # HEADLINE_BASELINE=0: a later round of candidates, merged with a round that ran the full cache
      [ "${HEADLINE_BASELINE:-1}" = 1 ] || base=--no-baseline
      for c in $CANDIDATES; do
        m "${slice%%:*}-$(echo "$c" | tr ":()=,/' " '________')" --query-aware --compressors "$c" --ratios "${HEADLINE_RATIOS:-0.5,0.75}" \
          --limit 300 --offset "${slice##*:}" $base "${NQ[@]}"
        base=--no-baseline
      done
    done
    ;;
  timing)
    PYTHONPATH="$KVP:${PYTHONPATH:-}" RAGCORE_CACHE="$RAGCORE_CACHE-kvp" \
      $PY -m bench.kv_side_by_side --model "$MODEL" --device cuda --match-kept --no-progress --no-baseline \
      --methods snapkv,knorm,streaming_llm,expected_attention --ratios "${TIMING_RATIOS:-0.5}" --limit 100 \
      --max-new-tokens 8 \
      "${NQ[@]}" --out "$OUT/sxs-timing.json" > "$OUT/sxs-timing.log" 2>&1 &
    ;;
  fill)
    # the first run's nq10-agn-a / kv-agn-a hold the full cache; FILL_NQ10 / FILL_KV75 narrow the lists
    for c in ${FILL_NQ10-a2sf caote adaptive razor random}; do
      m "fill-nq10-$c" --compressors "$c" --ratios 0.25,0.5,0.75,0.9 --limit 100 --no-baseline --k 10 \
        --retrieved "$RETRIEVED"
    done
    for c in ${FILL_KV75-a2sf caote adaptive razor random}; do
      m "fill-kv75-$c" --compressors "$c" --ratios 0.25,0.5,0.75,0.9 --limit 100 --no-baseline \
        --data eval/data/kv_retrieval_75_keys.jsonl.gz
    done
    ;;
  *) echo "unknown step $step (convert, headline, timing, fill)"; exit 2 ;;
  esac
  done
  wait
done
echo "$(date +%T) all done"
