#!/usr/bin/env bash
# Where the GPU time goes, with qwen2.5-0.5b, one process after another on a GPU of its own:
#   reuse     bench.kv_reuse_overhead: the reusable compressed context (kvzip, a 5000-token key-value context, 10
#             questions) against full prefills, part by part, with torch.profiler's tables of one answer each way
#   infini    bench.infiniretri_profile: InfiniRetri (LAYER, default the layer chosen for qwen) at 65536 tokens,
#             part by part
# then, when KV_AFTER is set, bench/gpu_kv_agnostic.sh "$OUT/kv" $KV_AFTER (for example "reuse sxs": the reuse runs and
# the kvpress side by side one after the other, alone on this GPU).
#   RAGCORE_CACHE=/var/tmp/cache bench/gpu_profile.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# PROFILE_STEPS (default "reuse infini"): which; REUSE_ARGS: more options of bench.kv_reuse_overhead
if [[ " ${PROFILE_STEPS:-reuse infini} " == *" reuse "* ]]; then
  echo "$(date +%T) reuse profile"
  $PY -m bench.kv_reuse_overhead --model qwen2.5-0.5b --device cuda --tokens 5000 --steps 16 ${REUSE_ARGS:---profile} \
    --json "$OUT/reuse-overhead.json" > "$OUT/reuse-overhead.log" 2>&1
fi
if [[ " ${PROFILE_STEPS:-reuse infini} " == *" infini "* ]]; then
  echo "$(date +%T) infiniretri profile"
  $PY -m bench.infiniretri_profile --model qwen2.5-0.5b --device cuda --tokens 65536 --limit 3 \
    --method "infiniretri(layer=${LAYER:-9})" --json "$OUT/infiniretri-profile.json" > "$OUT/infiniretri-profile.log" 2>&1
fi
echo "$(date +%T) profiles done"
if [ -n "${KV_AFTER:-}" ]; then
  bench/gpu_kv_agnostic.sh "$OUT/kv" $KV_AFTER > "$OUT/kv.log" 2>&1
fi
echo "$(date +%T) done"
