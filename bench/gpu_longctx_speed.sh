#!/usr/bin/env bash
# Issue 14, InfiniRetri's speed against the authors' infini-retri 0.0.3 on one GPU: per model of MODELS, the segment
# (tokens read per window; fewer, longer windows launch fewer kernels) chosen on development key-value items 201-250
# at DEV_TOKENS (65536) among SEGMENTS (rule: the longest segment whose accuracy is at least that of the default
# 1024), then the chosen setting at 8k and 64k tokens on items FIRST+1..FIRST+N (default 76-125, which no choice and
# no earlier report read), then the peer on the same items at PEER_TOKENS (65536), one run after another (no two
# timed runs at once).
# INFINI_SMOL / INFINI_QWEN: the model's measured spec without a segment (sections longctx-smol-gpu and
# longctx-prefix-gpu). DEVICE: cuda; PEER_PY: python3 with the peer's wheel on PYTHONPATH. The peer runs at its
# defaults (window_length=1024, as in every earlier side by side); its window is not tuned here. A failed run stops
# the script (exit 1, naming its log). SEGMENT: a segment already chosen (no development runs; SEGMENTS ignored).
# PEER_WINDOWS: the peer's window_length values (default 1024, its default; each extra value W writes
# longctx-MODEL-TOKENS-peer-wW.json).
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_longctx_speed.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}
# settings checked before anything is removed or run
[[ -z "${SEGMENT:-}" || "$SEGMENT" =~ ^[1-9][0-9]*$ ]] || { echo "SEGMENT must be a positive whole number, got '$SEGMENT'"; exit 2; }
read -ra windows <<< "${PEER_WINDOWS:-1024}"
[ ${#windows[@]} -gt 0 ] || { echo "PEER_WINDOWS names no window"; exit 2; }
for w in "${windows[@]}"; do
  [[ "$w" =~ ^[1-9][0-9]*$ ]] || { echo "PEER_WINDOWS must hold positive whole numbers, got '$w'"; exit 2; }
done
PEER_WINDOWS=$(printf '%s\n' "${windows[@]}" | awk '!seen[$0]++' | tr '\n' ' ')  # each window once
mkdir -p "$OUT"
rm -f "$OUT"/dev-*.json "$OUT"/longctx-*.json  # the choice and the render read only this call's runs
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
PEER_PY=${PEER_PY:-python3}
FIRST=${FIRST:-75}
N=${N:-50}
SEGMENTS=${SEGMENTS:-1024 2048 4096}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
R=(-m ragcore.cli -v -q)
spec() {  # MODEL SEGMENT: the model's InfiniRetri spec with that segment
  local base
  case $1 in smollm2-135m) base=${INFINI_SMOL:-infiniretri(layer=18, carry=128)} ;; *) base=${INFINI_QWEN:-infiniretri(layer=9)} ;; esac
  echo "${base%)}, segment=$2)"
}
for m in ${MODELS:-smollm2-135m qwen2.5-0.5b}; do
  for t in ${PEER_TOKENS:-65536}; do  # the peer's inputs, made while the development runs go
    $PY -m bench.peers.infini_retri.inputs --model "$m" --tokens $t --offset "$FIRST" --limit "$N" \
      --out "$OUT/inputs-$m-$t.json" > "$OUT/inputs-$m-$t.log" 2>&1 &
  done
  [ -n "${SEGMENT:-}" ] && continue
  for s in $SEGMENTS; do
    $PY "${R[@]}" eval longctx --model "$m" --device "$DEVICE" --tokens "${DEV_TOKENS:-65536}" --method "$(spec "$m" "$s")" \
      --offset 200 --limit "${N_DEV:-50}" --out "$OUT/dev-$m-$s.json" > "$OUT/dev-$m-$s.log" 2>&1 &
  done
done
wait
for m in ${MODELS:-smollm2-135m qwen2.5-0.5b}; do
  if [ -n "${SEGMENT:-}" ]; then
    seg=$SEGMENT
  else
    for s in $SEGMENTS; do
      [ -s "$OUT/dev-$m-$s.json" ] || { echo "development run $m segment=$s failed: $OUT/dev-$m-$s.log"; exit 1; }
    done
    devs=(); for s in $SEGMENTS; do devs+=("$s" "$OUT/dev-$m-$s.json"); done
    seg=$($PY -c 'import json, sys
a = sys.argv[1:]
runs = {int(s): json.load(open(f)) for s, f in zip(a[::2], a[1::2])}
floor = runs[1024]["accuracy"] if 1024 in runs else max(r["accuracy"] for r in runs.values())
print(max(s for s, r in runs.items() if r["accuracy"] >= floor))' "${devs[@]}") || exit 1
    echo "$(date +%T) $m chose segment=$seg"
  fi
  for t in 8192 65536; do
    $PY "${R[@]}" eval longctx --model "$m" --device "$DEVICE" --tokens $t --method "$(spec "$m" "$seg")" --offset "$FIRST" \
      --limit "$N" --out "$OUT/longctx-$m-$t-infiniretri.json" > "$OUT/longctx-$m-$t.log" 2>&1 ||
      { echo "InfiniRetri $m at $t failed: $OUT/longctx-$m-$t.log"; exit 1; }
  done
  for t in ${PEER_TOKENS:-65536}; do
    [ -s "$OUT/inputs-$m-$t.json" ] || { echo "the peer's inputs $m at $t failed: $OUT/inputs-$m-$t.log"; exit 1; }
    for w in $PEER_WINDOWS; do
      tag=$([ "$w" = 1024 ] || echo "-w$w")
      $PEER_PY -m bench.peers.infini_retri.peer --input "$OUT/inputs-$m-$t.json" --device "$DEVICE" --window "$w" \
        --out "$OUT/longctx-$m-$t-peer$tag.json" > "$OUT/peer-$m-$t$tag.log" 2>&1 ||
        { echo "the peer $m at $t (window $w) failed: $OUT/peer-$m-$t$tag.log"; exit 1; }
    done
  done
done
