#!/usr/bin/env bash
# Issue 14 at acceptance size, on one GPU machine (same code as the CPU runs, --device "$DEVICE"). Steps:
#   profile   ragcore calibrate, both bundled models, 200 development questions (NQ-open 1-200), 10 passages
#   position  qwen2.5-0.5b, N_POSITION questions per gold position (NQ-open from 201), every order of ORDERS; one
#             process per order and shard (POS_SHARDS)
#   sortboth  attention sorting's options chosen on N_SORTDEV development questions (1-100) among SORT_SPECS (';'-separated
#             specs, each one reranker, no setting twice, checked before any step starts; unset or empty: the two
#             placements), the highest average accuracy (a tie: the first), then the sweep with the choice
#   rankboth  calibrate GEN, then AttnRank's sweep (the profile it reads)
#   layer     the development check of InfiniRetri's layer, both models (synthetic haystacks, no evaluation data)
#   longctx   key-value retrieval at 8k, 16k, 32k, 64k tokens: InfiniRetri (the layer from `layer`, LAYER_SMOL /
#             LAYER_QWEN) against truncation, both models, 50 queries each; one process per run (own peak memory)
#   peer      the authors' infini-retri 0.0.3 on the items of `longctx` at 8k and 64k, both models, 50 queries each
#             (bench.peers.infini_retri; PEER_PY: the python of its venv, .venv-infini, see docs/gpu-runs.md)
#   needle    hard-needle at 256k and 1M tokens, qwen2.5-0.5b, InfiniRetri, 20 queries each
#   cragdev   CRAG's options (CRAG_SPECS, ';'-separated specs) on NQ-open questions 1-N_CRAGDEV (200), against plain
#             top-10; cragboth writes the choice's table to the RESULTS section CRAG_SECTION (crag-dev-gpu)
#   crag      qwen2.5-0.5b, NQ-open from question CRAG_FIRST+1 (default 201), n=N_CRAG (300): CRAG (CRAG_METHOD, default the setting that
#             `bench.rerank_context choose-crag` picks from cragdev's JSON) against plain top-10
#   cragboth  cragdev, then crag with its choice, as one chain beside the other steps
#   render    the docs/RESULTS.md sections and figures from the JSON files
#   peer      infini-retri 0.0.3 (the authors' package, its own environment PEER_PY) on the longctx items, 8k and 64k
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_rerank_context.sh OUTDIR profile+layer position+crag+longctx+needle peer render
#   (STEP "a+b": a and b together; `position` reads the profiles `profile` stored in RAGCORE_CACHE; longctx and
#   needle run their sizes one after another, beside the other steps). MODELS: the models of profile, layer,
#   longctx and peer (default both bundled ones; "qwen2.5-0.5b" where SmolLM2's runs are made on a CPU).
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"
PY=${PY:-python3}
PEER_PY=${PEER_PY:-.venv-infini/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
R=(-m ragcore.cli -v -q)
MODELS=${MODELS:-"smollm2-135m qwen2.5-0.5b"}
GEN=${GEN:-qwen2.5-0.5b}  # the generator of position, needle and crag
DEVICE=${DEVICE:-cuda}
N_POSITION=${N_POSITION:-300}
POS_FIRST=${POS_FIRST:-200}  # the sweep's first question (0-199: calibration and development)
LAYER_SMOL=${LAYER_SMOL:-18}  # bench.infiniretri_layer on CPU (3 haystacks); `layer` re-measures it
LAYER_QWEN=${LAYER_QWEN:-}    # empty: the default (last layer) until `layer` says otherwise
infini() { [ -n "$1" ] && echo "infiniretri(layer=$1)" || echo infiniretri; }
# INFINI_SMOL / INFINI_QWEN: the whole InfiniRetri spec of a model (default: infiniretri at its LAYER_*)
infini_of() { case $1 in smollm2-135m) echo "${INFINI_SMOL:-$(infini "$2")}" ;; *) echo "${INFINI_QWEN:-$(infini "$2")}" ;; esac; }
crag_shards() {  # METHOD: eval crag on N_CRAG questions from CRAG_FIRST+1 (default 201) in CRAG_SHARDS processes, then wait
  local per=$(((${N_CRAG:-300} + ${CRAG_SHARDS:-1} - 1) / ${CRAG_SHARDS:-1})) k n
  for ((k = 0; k < ${CRAG_SHARDS:-1}; k++)); do
    n=$((${N_CRAG:-300} - k * per < per ? ${N_CRAG:-300} - k * per : per))
    $PY "${R[@]}" eval crag --model "$GEN" --device "$DEVICE" --k 10 --method "$1" --offset $((${CRAG_FIRST:-200} + k * per)) \
      --limit "$n" --out "$OUT/crag-qwen-$k.json" > "$OUT/crag-$k.log" 2>&1 &
  done
  wait
}
tag_of() { echo "$1" | tr -d "()' " | tr '=,' '__'; }  # an order's spec as a file name
pos_shards() {  # ORDER FIRST N PREFIX: eval position on questions FIRST.. in POS_SHARDS processes, then wait
  local o=$1 first=$2 total=$3 pre=$4 ps=${POS_SHARDS:-1} per k n tag
  per=$(((total + ps - 1) / ps)); tag=$(tag_of "$o")
  for ((k = 0; k < ps; k++)); do
    n=$((total - k * per < per ? total - k * per : per))
    $PY "${R[@]}" eval position --model "$GEN" --device "$DEVICE" --order "$o" --offset $((first + k * per)) --limit "$n" \
      --out "$OUT/$pre-$tag-$k.json" > "$OUT/$pre-$tag-$k.log" 2>&1 &
  done
  wait
}

case " ${*//+/ } " in  # sortboth's specs checked (the registry, no setting twice) before any step starts
  *" sortboth "*)
    SORT_LIST=$($PY -c 'import sys
from bench.rerank_context import dev_orders
from ragcore.errors import ConfigError
try:
    print("\n".join(dev_orders(sys.argv[1])))
except ConfigError as e:
    sys.exit(f"SORT_SPECS: {e}")' "${SORT_SPECS:-attention_sort;attention_sort(place='first')}") || exit 1 ;;
esac

for steps in "$@"; do
  echo "$(date +%T) $steps"
  for step in ${steps//+/ }; do
  case $step in
  profile)
    for m in $MODELS; do
      $PY "${R[@]}" calibrate --model $m --device "$DEVICE" --limit "${N_PROFILE:-200}" --out "$OUT/profile-$m.json" > "$OUT/profile-$m.log" 2>&1 &
    done ;;
  position)  # one process per order and shard (POS_SHARDS, default 1) of the questions from POS_FIRST on
    for o in ${ORDERS:-retrieval reversed lost_in_the_middle random attnrank attention_sort}; do
      pos_shards "$o" "$POS_FIRST" "$N_POSITION" position &
    done ;;
  rankboth)  # calibrate qwen2.5-0.5b (the profile AttnRank reads), then AttnRank's sweep
    (
      $PY "${R[@]}" calibrate --model "$GEN" --device "$DEVICE" --limit "${N_PROFILE:-200}" --out "$OUT/profile-$GEN.json" \
        > "$OUT/profile-$GEN.log" 2>&1 || exit 1
      pos_shards attnrank "$POS_FIRST" "$N_POSITION" position
    ) & ;;
  sortboth)  # attention sorting's placement (best last, the paper, or first) chosen on development questions
    (         # 1-N_SORTDEV (the calibration questions), then the chosen one on the sweep's questions
      mapfile -t specs <<< "$SORT_LIST"  # their labels, one a line
      for spec in "${specs[@]}"; do
        pos_shards "$spec" 0 "${N_SORTDEV:-100}" sortdev &
      done
      wait
      files=()  # this run's specs only (not an earlier run's files in OUT), every shard of each
      for spec in "${specs[@]}"; do
        for ((k = 0; k < ${POS_SHARDS:-1}; k++)); do
          f="$OUT/sortdev-$(tag_of "$spec")-$k.json"
          [ -s "$f" ] || { echo "sortboth: $spec wrote no $f (see its .log); no choice made" >&2; exit 1; }
          files+=("$f")
        done
      done
      SORT=$($PY -c 'import json, sys; from eval.position import merge
m = merge([json.load(open(f)) for f in sys.argv[1:]])["orders"]
print(max(m, key=lambda k: m[k]["accuracy_avg"]))' "${files[@]}") || exit 1
      echo "$(date +%T) attention sorting chose $SORT"
      pos_shards "$SORT" "$POS_FIRST" "$N_POSITION" position
    ) & ;;
  layer)
    for m in $MODELS; do
      $PY -m bench.infiniretri_layer --model $m --device "$DEVICE" --trials "${N_LAYER:-20}" > "$OUT/layer-$m.log" 2>&1 &
    done ;;
  longctx|needle)
    if [ -z "$LAYER_QWEN" ]; then  # the layer `layer` chose for qwen2.5-0.5b (synthetic haystacks, no evaluation data)
      LAYER_QWEN=$(sed -n '/BEGIN infiniretri-layer-qwen2.5-0.5b/,/END infiniretri-layer-qwen2.5-0.5b/p' docs/RESULTS.md \
        | grep -o "Best layer: [0-9]*" | grep -o "[0-9]*$" || true)
      echo "LAYER_QWEN=${LAYER_QWEN:-(default)}"
    fi ;;&
  longctx)
    ms=(); for m in $MODELS; do [ "$m" = smollm2-135m ] && ms+=("$m:$LAYER_SMOL") || ms+=("$m:$LAYER_QWEN"); done
    for t in ${LONGCTX_TOKENS:-8192 16384 32768 65536}; do
      for m in "${ms[@]}"; do
        for meth in "$(infini_of "${m%%:*}" "${m#*:}")" ${TRUNCATE-truncate}; do
          name=longctx-${m%%:*}-$t-$(echo "$meth" | tr -d ' ' | tr '()=,' '____')
          $PY "${R[@]}" eval longctx --model "${m%%:*}" --device "$DEVICE" --tokens $t --method "$meth" --limit "${N_LONGCTX:-50}" \
            --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
        done
      done
    done & ;;
  peer)
    for t in ${LONGCTX_TOKENS:-8192 65536}; do
      for m in $MODELS; do
        $PY -m bench.peers.infini_retri.inputs --model $m --tokens $t --limit "${N_LONGCTX:-50}" \
          --out "$OUT/inputs-$m-$t.json" > "$OUT/inputs-$m-$t.log" 2>&1 &&
        ${PEER_PY:?PEER_PY: the python of the infini-retri environment} -m bench.peers.infini_retri.peer \
          --input "$OUT/inputs-$m-$t.json" --device "$DEVICE" --out "$OUT/longctx-$m-$t-peer.json" \
          > "$OUT/peer-$m-$t.log" 2>&1
      done
    done & ;;
  needle)
    for t in ${NEEDLE_TOKENS:-262144 1048576}; do
      $PY "${R[@]}" eval longctx --data needle --model "$GEN" --device "$DEVICE" --tokens $t \
        --method "$(infini "$LAYER_QWEN")" --limit "${N_NEEDLE:-20}" --out "$OUT/needle-$t.json" > "$OUT/needle-$t.log" 2>&1
    done & ;;
  cragdev|cragboth)  # CRAG's options on the development questions 1-200 (the report reads from question 201)
    (
      IFS=';' read -ra specs <<< "${CRAG_SPECS:-crag;crag(sentences=4);crag(sentences=8);crag(sentences=12);crag(k=5, sentences=4);crag(k=5, sentences=7)}"
      for spec in "${specs[@]}"; do
        name=cragdev-$(echo "$spec" | tr -d '() ' | tr '=,' '__')
        $PY "${R[@]}" eval crag --model "$GEN" --device "$DEVICE" --k 10 --method "$spec" --offset 0 --limit "${N_CRAGDEV:-200}" \
          --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
      done
      wait
      [ "$step" = cragboth ] || exit 0
      CRAG_METHOD=$($PY -m bench.rerank_context choose-crag "$OUT"/cragdev-*.json --section "${CRAG_SECTION:-crag-dev-gpu}" \
        --note "GPU run") || exit 1
      echo "$(date +%T) crag chose $CRAG_METHOD"
      crag_shards "$CRAG_METHOD"
    ) & ;;
  crag)  # CRAG_METHOD: the setting cragdev chose (bench.rerank_context choose-crag)
    CRAG_METHOD=${CRAG_METHOD:-$($PY -m bench.rerank_context choose-crag "$OUT"/cragdev-*.json)} || exit 1
    crag_shards "$CRAG_METHOD" & ;;
  render)
    $PY -m bench.rerank_context profile "$OUT"/profile-*.json --section attn-profile-gpu --note "GPU run"
    $PY -c 'import json, sys; from pathlib import Path; from eval.position import merge
out = Path(sys.argv[1]); runs = [json.loads(p.read_text()) for p in sorted(out.glob("position-*.json"))]
(out / "merged-position.json").write_text(json.dumps(merge(runs)))' "$OUT"
    $PY -m bench.rerank_context position "$OUT/merged-position.json" --profile "$OUT/profile-qwen2.5-0.5b.json" \
      --section position-gpu --note "GPU run"
    $PY -m bench.rerank_context longctx "$OUT"/longctx-*.json "$OUT"/needle-*.json --section longctx-gpu --note "GPU run"
    $PY -m bench.rerank_context crag "$OUT"/crag-qwen-*.json --section crag-gpu --note "GPU run" ;;
  *) echo "unknown step $step"; exit 2 ;;
  esac
  done
  wait
done
