#!/usr/bin/env bash
# Issue 14, SmolLM2's InfiniRetri on one GPU machine: its carry chosen on development key-value items 201-250 at 8k
# tokens (CARRIES; rule: the highest accuracy, a tie to the smaller carry), then the chosen setting at 8k and 64k
# tokens on items FIRST+1..FIRST+N (default 26-75, which no choice and no earlier report read) beside the authors'
# infini-retri 0.0.3 on the same items (PEER_PY, default python3 with its wheel on PYTHONPATH). DEVICE: cuda.
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_longctx_smol.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}
mkdir -p "$OUT"
rm -f "$OUT"/dev-carry-*.json  # the choice reads only this call's development runs
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
PEER_PY=${PEER_PY:-python3}
M=smollm2-135m
LAYER=${LAYER_SMOL:-18}
FIRST=${FIRST:-25}
N=${N:-50}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
R=(-m ragcore.cli -v -q)
for t in 8192 65536; do  # the peer on the report's items, beside everything else
  $PY -m bench.peers.infini_retri.inputs --model $M --tokens $t --offset "$FIRST" --limit "$N" \
    --out "$OUT/inputs-$M-$t.json" > "$OUT/inputs-$M-$t.log" 2>&1 &&
  $PEER_PY -m bench.peers.infini_retri.peer --input "$OUT/inputs-$M-$t.json" --device "$DEVICE" \
    --out "$OUT/longctx-$M-$t-peer.json" > "$OUT/peer-$M-$t.log" 2>&1 &
done
dev=()
for c in ${CARRIES:-128 192 256}; do
  $PY "${R[@]}" eval longctx --model $M --device "$DEVICE" --tokens 8192 --method "infiniretri(layer=$LAYER, carry=$c)" \
    --offset 200 --limit "${N_DEV:-50}" --out "$OUT/dev-carry-$c.json" > "$OUT/dev-carry-$c.log" 2>&1 &
  dev+=($!)
done
wait "${dev[@]}"  # the development runs (the peers run on)
for c in ${CARRIES:-128 192 256}; do
  [ -s "$OUT/dev-carry-$c.json" ] || { echo "development run carry=$c failed: $OUT/dev-carry-$c.log"; exit 1; }
done
METHOD=$($PY -c 'import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
best = max(runs, key=lambda r: (r["accuracy"], -int(r["method"].split("carry=")[1].rstrip(")"))))
print(best["method"])' "$OUT"/dev-carry-*.json) || exit 1
echo "chose $METHOD"
for t in 8192 65536; do
  $PY "${R[@]}" eval longctx --model $M --device "$DEVICE" --tokens $t --method "$METHOD" --offset "$FIRST" --limit "$N" \
    --out "$OUT/longctx-$M-$t-infiniretri.json" > "$OUT/longctx-$M-$t.log" 2>&1 &
done
wait
