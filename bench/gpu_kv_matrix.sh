#!/usr/bin/env bash
# The KV-compression matrix on a GPU machine, many processes side by side (one per compressor), so that the
# whole matrix fits one call. Needs the generator converted under $RAGCORE_CACHE and MODEL pointing at it
# (a registry name, a local folder or a .gguf file), and a retrieval dump (eval retrieval --dump-retrieved).
# Accuracy is per process and unaffected by the sharing; times (prefill_s, decode_tok_s) are not comparable
# across rows of this run, since the processes share the GPU and the CPU.
#   MODEL=/var/tmp/m/qwen2.5-0.5b.gguf RETRIEVED=out/retrieved.json bench/gpu_kv_matrix.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}; mkdir -p "$OUT"
PY=${PY:-python3}
ALL="streaming_llm snapkv h2o knorm expected_attention tova a2sf caote adaptive razor random"
run() { # name, then kv_matrix args
  local name=$1; shift
  timeout "${TIMEOUT:-520}" $PY bench/kv_matrix.py --model "$MODEL" --device cuda --out "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1 &
}
for c in $ALL; do  # (a) NQ-open top 5, full matrix, 100 questions
  run "nq5-$c" --compressors "$c" --ratios 0.25,0.5,0.75,0.9 --limit 100 --k 5 --retrieved "$RETRIEVED"
done
for c in ${HEADLINE:-knorm expected_attention tova streaming_llm}; do  # headline: 300 questions at 0.5, 0.75
  run "nq5h-$c" --compressors "$c" --ratios 0.5,0.75 --limit 300 --k 5 --retrieved "$RETRIEVED"
done
for c in ${KVSET:-snapkv knorm expected_attention streaming_llm tova}; do  # (b) key-value retrieval
  run "kv-$c" --data eval/data/kv_retrieval_75_keys.jsonl.gz --compressors "$c" --ratios 0.25,0.5,0.75,0.9 --limit 50
done
wait
