#!/usr/bin/env bash
# Issue 14's key-value retrieval on CPU with smollm2-135m: InfiniRetri (layer 18, section
# infiniretri-layer-smollm2-135m of docs/RESULTS.md), truncation and the authors' infini-retri 0.0.3 (peer) on the
# same items, at the lengths given; one process per run (each its own peak memory), one thread each, two at a time.
#   bench/cpu_longctx.sh OUTDIR TOKENS:LIMIT [TOKENS:LIMIT ...]     e.g.  bench/cpu_longctx.sh out/lc 8192:6 65536:2
#   PY (default: python3, ragcore's venv), PEER_PY (default: .venv-infini/bin/python), METHODS (default: all three)
# Then: python -m bench.rerank_context longctx OUTDIR/longctx-*.json --section longctx-cpu --note "..."
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"
PY=${PY:-python3}
PEER_PY=${PEER_PY:-.venv-infini/bin/python}
METHODS=${METHODS:-"infiniretri(layer=18) truncate peer"}
M=${MODEL:-smollm2-135m}  # MODEL: another generator (then METHODS with its InfiniRetri layer)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

run() {  # run TOKENS LIMIT METHOD
  local t=$1 n=$2 meth=$3 name
  name=longctx-$M-$t-$(echo "$meth" | tr '()=,' '____')
  if [ "$meth" = peer ]; then
    $PEER_PY -m bench.peers.infini_retri.peer --input "$OUT/inputs-$M-$t.json" --device cpu --limit "$n" \
      --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  else
    $PY -m ragcore.cli -q eval longctx --model $M --device cpu --tokens "$t" --method "$meth" --limit "$n" \
      --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  fi
  local rc=$?
  echo "$(date +%T) done $name (rc $rc)"
}

for tl in "$@"; do
  $PY -m bench.peers.infini_retri.inputs --model $M --tokens "${tl%%:*}" --limit "${tl#*:}" \
    --out "$OUT/inputs-$M-${tl%%:*}.json" > "$OUT/inputs-$M-${tl%%:*}.log" 2>&1 || exit 1
done
jobs=()
for tl in "$@"; do
  for meth in $METHODS; do
    jobs+=("${tl%%:*} ${tl#*:} $meth")
  done
done
for ((i = 0; i < ${#jobs[@]}; i += 2)); do  # two at a time
  run ${jobs[i]} &
  [ $((i + 1)) -lt ${#jobs[@]} ] && run ${jobs[i + 1]} &
  wait
done
