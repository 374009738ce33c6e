#!/usr/bin/env bash
# Issue #3's KV evaluation on one GPU machine, every part side by side as background processes that write
# their JSON after each configuration (a process stopped early keeps what it finished):
#   * the matrix (every compressor x ratios 0.25..0.9, n=100): NQ-open top 5 (question-agnostic and
#     query-aware), NQ-open top 10 and key-value retrieval (question-agnostic); compressors split over two
#     processes per matrix, merged afterwards with `python -m bench.kv_matrix --merge`;
#   * the headline: the strongest compressors at 0.5 and 0.75 on 300 questions, both modes;
#   * kvpress 0.5.5 side by side (python -m bench.kv_side_by_side, one process per method) in its own site folder
#     KVP (transformers 5.2), with the model converted separately for that transformers.
# Accuracy is per process and unaffected by the sharing. Times are not comparable across processes; the
# side-by-side compares times within its process, item by item.
#   MODEL=/var/tmp/m/qwen2.5-0.5b.gguf RETRIEVED=/var/tmp/m/retrieved.json KVP=/var/tmp/kvp \
#     bench/gpu_kv_matrix.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}; mkdir -p "$OUT"
PY=${PY:-python3}
: "${MODEL:?}" "${RETRIEVED:?}" "${KVP:?}" "${RAGCORE_CACHE:?}"
B=${BATCH:-32}
R=0.25,0.5,0.75,0.9
SET_A=streaming_llm,snapkv,h2o,knorm,expected_attention,tova
SET_B=a2sf,caote,adaptive,razor,random
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NQ=(--k 5 --retrieved "$RETRIEVED")
KV=(--data eval/data/kv_retrieval_75_keys.jsonl.gz)

# convert the GGUF once for each transformers (ragcore's and kvpress's), side by side
$PY -c "import sys; from ragcore.models import resolve; print(resolve(sys.argv[1], 'generator'))" "$MODEL" \
  > "$OUT/convert.log" 2>&1 &
PYTHONPATH="$KVP:${PYTHONPATH:-}" RAGCORE_CACHE="$RAGCORE_CACHE-kvp" \
  $PY -c "import sys; from ragcore.models import resolve; print(resolve(sys.argv[1], 'generator'))" "$MODEL" \
  > "$OUT/convert-kvp.log" 2>&1 &
wait

m() { # name, then kv_matrix arguments
  local name=$1; shift
  $PY -m bench.kv_matrix --model "$MODEL" --device cuda --batch-size "$B" --out "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1 &
}
m head-qa --query-aware --compressors "${HEADLINE_QA:-snapkv,h2o,tova,expected_attention}" --ratios 0.5,0.75 --limit 300 "${NQ[@]}"
m head-agn --compressors h2o,knorm,expected_attention,tova --ratios 0.5,0.75 --limit 300 "${NQ[@]}"
m nq5-agn-a --compressors $SET_A --ratios $R --limit 100 "${NQ[@]}"
m nq5-agn-b --compressors $SET_B --ratios $R --limit 100 "${NQ[@]}"
m nq5-qa-a --query-aware --compressors $SET_A --ratios $R --limit 100 "${NQ[@]}"
m nq5-qa-b --query-aware --compressors $SET_B --ratios $R --limit 100 "${NQ[@]}"
m nq10-agn-a --compressors $SET_A --ratios $R --limit 100 --k 10 --retrieved "$RETRIEVED"
m nq10-agn-b --compressors $SET_B --ratios $R --limit 100 --k 10 --retrieved "$RETRIEVED"
m kv-agn-a --compressors $SET_A --ratios $R --limit 100 "${KV[@]}"
m kv-agn-b --compressors $SET_B --ratios $R --limit 100 "${KV[@]}"
first=""
for meth in snapkv knorm streaming_llm expected_attention; do
  PYTHONPATH="$KVP:${PYTHONPATH:-}" RAGCORE_CACHE="$RAGCORE_CACHE-kvp" \
    $PY -m bench.kv_side_by_side --model "$MODEL" --device cuda --match-kept --no-progress $first \
    --methods "$meth" --ratios 0.5,0.75,0.25,0.9 --limit 100 "${NQ[@]}" --out "$OUT/sxs-$meth.json" \
    > "$OUT/sxs-$meth.log" 2>&1 &
  first=--no-baseline  # one uncompressed row is enough
done
wait
echo "all done"
