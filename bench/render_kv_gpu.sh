#!/usr/bin/env bash
# Render issue #3's GPU (and CPU timing) results (raw JSON kept in docs/data/kv/gpu/, made by bench/gpu_kv_matrix.sh and
# bench/kv_side_by_side.py on an H100 on 2026-11-23) into docs/RESULTS.md sections and plots.
#   bench/render_kv_gpu.sh [PYTHON]
set -euo pipefail
PY=${1:-.venv/bin/python}
G=docs/data/kv/gpu
RUN="Ran on one NVIDIA H100 on 2026-11-23 with \`bench/gpu_kv_matrix.sh\` (model: the bundled qwen2.5-0.5b GGUF; NQ passages from \`ragcore eval retrieval --dump-retrieved\`), as 14 processes sharing the GPU: prefill_s and decode_tok_s (per sequence, in batches of 32) are not comparable between rows. Raw JSON: \`$G/\`, rendered by \`bench/render_kv_gpu.sh\`."
STOPPED="The second process (a2sf, caote, adaptive, razor, random) was stopped early to give the GPU to the others."
mx() { # section, note, plot name, then the raw files
  local section=$1 note=$2 name=$3; shift 3
  $PY bench/kv_matrix.py --merge "$@" --out "out/kv-gpu/$name.json" --plot "${PLOTS:-$G}/$name.png" --note "$note" \
    --write-results "$section"
}
mkdir -p out/kv-gpu
mx kv-headline-gpu "$RUN Headline: the strongest query-aware compressors of the n=100 matrix, at 0.5 and 0.75 on 300 questions (NQ-open, top 5)." headline-query-aware $G/head-qa.json.gz
mx kv-nq5-query-aware-gpu "$RUN NQ-open, top 5 retrieved passages." nq5-query-aware $G/nq5-qa-a.json.gz $G/nq5-qa-b.json.gz
mx kv-nq5-agnostic-gpu "$RUN NQ-open, top 5 retrieved passages." nq5-agnostic $G/nq5-agn-a.json.gz $G/nq5-agn-b.json.gz
mx kv-nq10-agnostic-gpu "$RUN NQ-open, top 10 retrieved passages. $STOPPED" nq10-agnostic $G/nq10-agn-a.json.gz $G/nq10-agn-b.json.gz
mx kv-kv75-agnostic-gpu "$RUN Key-value retrieval with 75 keys (every record fits Qwen's window). $STOPPED" kv75-agnostic $G/kv-agn-a.json.gz $G/kv-agn-b.json.gz

sxs() { # section, note, then the raw files
  local section=$1 note=$2; shift 2
  $PY bench/kv_side_by_side.py --render "$@" --write-results "$section" --note "$note"
}
sxs kv-vs-kvpress-gpu "Ran on one NVIDIA H100 on 2026-11-23 by \`bench/gpu_kv_matrix.sh\` (one process per method, beside 10 matrix processes on the same GPU; kvpress 0.5.5 and transformers 5.2 installed from wheels into their own site folder). Accuracy is unaffected by the sharing; the times are not a fair comparison: both sides were timed on a GPU time-sliced between 14 processes, which punishes every host-device synchronisation (see the quiet-GPU and CPU sections). Raw JSON: \`$G/sxs-*.json.gz\`." \
  $G/sxs-snapkv.json.gz $G/sxs-knorm.json.gz $G/sxs-streaming_llm.json.gz $G/sxs-expected_attention.json.gz
sxs kv-vs-kvpress-gpu-quiet-1 "Timing on a quiet H100 (2026-11-23, this process alone on the GPU): \`python3 bench/kv_side_by_side.py --model qwen2.5-0.5b.gguf --device cuda --match-kept --no-baseline --ratios 0.5 --limit 30 --k 5 --retrieved retrieved.json\`, code of commit cabce84, whose cache adapter checked the pruning indices' range with two host-device synchronisations per layer. Raw JSON: \`$G/sxs-quiet.json.gz\`." \
  $G/sxs-quiet.json.gz
sxs kv-vs-kvpress-gpu-quiet-2 "The same right after, n = 20 (the session's device time ran out), with that range check limited to CPU tensors. Changed after this run and not yet timed on a GPU: the selection order without two argsorts per layer, and the context prefill without the LM head. Raw JSON: \`$G/sxs-quiet-fixed-prune.json.gz\`." \
  $G/sxs-quiet-fixed-prune.json.gz
sxs kv-vs-kvpress-cpu "Timing on this project's 2-core CPU (no GPU), float32, n = 20, the code of commit 296f34d (selection without sorts, context prefill without the LM head; since then the protected positions are built once per prefill, not per layer): \`HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 PYTHONPATH=\$PWD .venv-kvpress/bin/python bench/kv_side_by_side.py --model ~/.cache/ragcore/hf/qwen2.5-0.5b-<digest> --device cpu --match-kept --no-baseline --ratios 0.5 --limit 20 --k 5 --max-new-tokens 1 --retrieved out/retrieved.json --out out/sxs-cpu.json\` (one answer token: only the times count here; accuracy is in the GPU section). Raw JSON: \`docs/data/kv/sxs-cpu.json.gz\`." \
  docs/data/kv/sxs-cpu.json.gz
PLOTS=docs/data/kv mx kv-chunk-cpu "A first check of the chunk wrapper on this project's 2-core CPU (float32, n = 50, query-aware, NQ-open top 5): \`HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/kv_matrix.py --model qwen2.5-0.5b --device cpu --query-aware --compressors snapkv,chunk:snapkv --ratios 0.5 --limit 50 --batch-size 5 --retrieved out/retrieved.json --out out/chunk-exp.json\`. Too few questions to decide anything; the 300-question GPU run is next. Raw JSON: \`docs/data/kv/chunk-cpu.json.gz\`." chunk-cpu docs/data/kv/chunk-cpu.json.gz
