#!/usr/bin/env bash
# Issue 14 at acceptance size, on one GPU machine (same code as the CPU runs, --device cuda). Steps:
#   profile   ragcore calibrate, both bundled models, 200 development questions (NQ-open 1-200), 10 passages
#   position  qwen2.5-0.5b, 300 questions per gold position (NQ-open from 201), every order; one process per order
#   layer     the development check of InfiniRetri's layer, both models (synthetic haystacks, no evaluation data)
#   longctx   key-value retrieval at 8k, 16k, 32k, 64k tokens: InfiniRetri (the layer from `layer`, LAYER_SMOL /
#             LAYER_QWEN) against truncation, both models, 50 queries each; one process per run (own peak memory)
#   peer      the authors' infini-retri 0.0.3 on the items of `longctx` at 8k and 64k, both models, 50 queries each
#             (bench.peers.infini_retri; PEER_PY: the python of its venv, .venv-infini, see docs/gpu-runs.md)
#   needle    hard-needle at 256k and 1M tokens, qwen2.5-0.5b, InfiniRetri, 20 queries each
#   crag      qwen2.5-0.5b, NQ-open from question 201, n=300: CRAG (k=ceil(sqrt(10/2))=3) against plain top-10
#   render    the docs/RESULTS.md sections and figures from the JSON files
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_rerank_context.sh OUTDIR profile+layer position+crag longctx peer needle render
#   (STEP "a+b": a and b together; `position` reads the profiles `profile` stored in RAGCORE_CACHE)
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"
PY=${PY:-python3}
PEER_PY=${PEER_PY:-.venv-infini/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
R=(-m ragcore.cli -q)
LAYER_SMOL=${LAYER_SMOL:-18}  # bench.infiniretri_layer on CPU (3 haystacks); `layer` re-measures it
LAYER_QWEN=${LAYER_QWEN:-}    # empty: the default (last layer) until `layer` says otherwise
infini() { [ -n "$1" ] && echo "infiniretri(layer=$1)" || echo infiniretri; }

for steps in "$@"; do
  echo "$(date +%T) $steps"
  for step in ${steps//+/ }; do
  case $step in
  profile)
    for m in smollm2-135m qwen2.5-0.5b; do
      $PY "${R[@]}" calibrate --model $m --device cuda --limit 200 --out "$OUT/profile-$m.json" > "$OUT/profile-$m.log" 2>&1 &
    done ;;
  position)
    for o in retrieval reversed lost_in_the_middle random attnrank attention_sort; do
      $PY "${R[@]}" eval position --model qwen2.5-0.5b --device cuda --order $o --limit 300 \
        --out "$OUT/position-$o.json" > "$OUT/position-$o.log" 2>&1 &
    done ;;
  layer)
    for m in smollm2-135m qwen2.5-0.5b; do
      $PY -m bench.infiniretri_layer --model $m --device cuda --trials 20 > "$OUT/layer-$m.log" 2>&1 &
    done ;;
  longctx)
    for t in 8192 16384 32768 65536; do
      for m in smollm2-135m:$LAYER_SMOL qwen2.5-0.5b:$LAYER_QWEN; do
        for meth in "$(infini "${m#*:}")" truncate; do
          name=longctx-${m%%:*}-$t-$(echo "$meth" | tr '()=,' '____')
          $PY "${R[@]}" eval longctx --model "${m%%:*}" --device cuda --tokens $t --method "$meth" --limit 50 \
            --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
        done
      done
    done ;;
  peer)
    for t in 8192 65536; do
      for m in smollm2-135m qwen2.5-0.5b; do
        $PY -m bench.peers.infini_retri.inputs --model $m --tokens $t --limit 50 --out "$OUT/inputs-$m-$t.json" \
          > "$OUT/inputs-$m-$t.log" 2>&1 &&
        $PEER_PY -m bench.peers.infini_retri.peer --input "$OUT/inputs-$m-$t.json" --device cuda \
          --out "$OUT/longctx-$m-$t-peer.json" > "$OUT/peer-$m-$t.log" 2>&1
      done
    done ;;
  needle)
    for t in 262144 1048576; do
      $PY "${R[@]}" eval longctx --data needle --model qwen2.5-0.5b --device cuda --tokens $t \
        --method "$(infini "$LAYER_QWEN")" --limit 20 --out "$OUT/needle-$t.json" > "$OUT/needle-$t.log" 2>&1
    done ;;
  crag)
    $PY "${R[@]}" eval crag --model qwen2.5-0.5b --device cuda --k 10 --limit 300 --out "$OUT/crag-qwen.json" \
      > "$OUT/crag.log" 2>&1 & ;;
  render)
    $PY -m bench.rerank_context profile "$OUT"/profile-*.json --section attn-profile-gpu --note "GPU run"
    $PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(p.read_text()) for p in sorted(out.glob("position-*.json"))]  # one per order
merged = {**runs[0], "orders": {}, "predictions": []}
for r in runs:
    merged["orders"].update(r["orders"]); merged["predictions"] += r["predictions"]
base = {(p["id"], p["rank"]): p["accuracy"] for p in merged["predictions"] if p["order"] == "retrieval"}
from eval.stats import mean_ci
for label, s in merged["orders"].items():
    if label != "retrieval":
        s["diff_vs_retrieval"], s["diff_ci95"] = mean_ci([p["accuracy"] - base[(p["id"], p["rank"])] for p in merged["predictions"] if p["order"] == label])
(out / "merged-position.json").write_text(json.dumps(merged))
PY
    $PY -m bench.rerank_context position "$OUT/merged-position.json" --profile "$OUT/profile-qwen2.5-0.5b.json" \
      --section position-gpu --note "GPU run"
    $PY -m bench.rerank_context longctx "$OUT"/longctx-*.json "$OUT"/needle-*.json --section longctx-gpu --note "GPU run"
    $PY -m bench.rerank_context crag "$OUT/crag-qwen.json" --section crag-gpu --note "GPU run" ;;
  *) echo "unknown step $step"; exit 2 ;;
  esac
  done
  wait
done
