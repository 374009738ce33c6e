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
FILL="a2sf, caote, random and razor come from a second H100 session the same day (\`bench/gpu_kv_headline.sh OUT fill\`, one process per compressor, code of commit 0f093d0; raw JSON in \`$G/fill/\`); adaptive from a third (2026-11-23, code of commit 21b2b35, \`kv_matrix.py --compressors adaptive --ratios 0.25,0.5,0.75,0.9 --limit 100 --no-baseline --k 10 --batch-size 16\`)."
mx kv-nq10-agnostic-gpu "$RUN NQ-open, top 10 retrieved passages. $FILL" nq10-agnostic $G/nq10-agn-a.json.gz \
  $G/fill/fill-nq10-{a2sf,caote,random,razor,adaptive}.json.gz
mx kv-kv75-agnostic-gpu "$RUN Key-value retrieval with 75 keys (every record fits Qwen's window). $STOPPED caote comes from a second H100 session the same day (\`bench/gpu_kv_headline.sh OUT fill\`, code of commit 0f093d0); a2sf, razor, random and adaptive from a third (code of commit 21b2b35; the same step with FILL_KV75, random and adaptive rerun with \`--batch-size 16\` after running out of GPU memory beside 22 other processes)." kv75-agnostic \
  $G/kv-agn-a.json.gz $G/kv-agn-b.json.gz $G/fill/fill-kv75-{caote,a2sf,razor,random,adaptive}.json.gz

sxs() { # section, note, then the raw files
  local section=$1 note=$2; shift 2
  $PY bench/kv_side_by_side.py --render "$@" --write-results "$section" --note "$note"
}
sxs kv-vs-kvpress-gpu "Ran on one NVIDIA H100 on 2026-11-23 by \`bench/gpu_kv_matrix.sh\` (one process per method, beside 10 matrix processes on the same GPU; kvpress 0.5.5 and transformers 5.2 installed from wheels into their own site folder). Accuracy is unaffected by the sharing; the times are not a fair comparison: both sides were timed on a GPU time-sliced between 14 processes, which punishes every host-device synchronisation (see the quiet-GPU and CPU sections). Raw JSON: \`$G/sxs-*.json.gz\`." \
  $G/sxs-snapkv.json.gz $G/sxs-knorm.json.gz $G/sxs-streaming_llm.json.gz $G/sxs-expected_attention.json.gz
sxs kv-vs-kvpress-gpu-timing "Timing on a quiet H100 (second session, 2026-11-23, code of commit 0f093d0): \`bench/gpu_kv_headline.sh OUT timing\` with TIMING_RATIOS=0.5, then 0.75, each alone on the GPU (one process, n = 100 NQ-open questions, answers cut at 8 tokens: only prefill + compression is timed here, accuracy at full length is in kv-vs-kvpress-gpu); then snapkv once more at both ratios (the third file) to see the run-to-run spread. Raw JSON: \`$G/sxs-timing-*.json.gz\`." \
  $G/sxs-timing-0.5.json.gz $G/sxs-timing-0.75.json.gz $G/sxs-timing-snapkv-repeat.json.gz
sxs kv-vs-kvpress-gpu-quiet-1 "Timing on a quiet H100 (2026-11-23, this process alone on the GPU): \`python3 bench/kv_side_by_side.py --model qwen2.5-0.5b.gguf --device cuda --match-kept --no-baseline --ratios 0.5 --limit 30 --k 5 --retrieved retrieved.json\`, code of commit cabce84, whose cache adapter checked the pruning indices' range with two host-device synchronisations per layer. Raw JSON: \`$G/sxs-quiet.json.gz\`." \
  $G/sxs-quiet.json.gz
sxs kv-vs-kvpress-gpu-quiet-2 "The same right after, n = 20 (the session's device time ran out), with that range check limited to CPU tensors. Changed after this run and not yet timed on a GPU: the selection order without two argsorts per layer, and the context prefill without the LM head. Raw JSON: \`$G/sxs-quiet-fixed-prune.json.gz\`." \
  $G/sxs-quiet-fixed-prune.json.gz
sxs kv-vs-kvpress-cpu "Timing on this project's 2-core CPU (no GPU), float32, n = 20, the code of commit 296f34d (selection without sorts, context prefill without the LM head; since then the protected positions are built once per prefill, not per layer): \`HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 PYTHONPATH=\$PWD .venv-kvpress/bin/python bench/kv_side_by_side.py --model ~/.cache/ragcore/hf/qwen2.5-0.5b-<digest> --device cpu --match-kept --no-baseline --ratios 0.5 --limit 20 --k 5 --max-new-tokens 1 --retrieved out/retrieved.json --out out/sxs-cpu.json\` (one answer token: only the times count here; accuracy is in the GPU section). Raw JSON: \`docs/data/kv/sxs-cpu.json.gz\`." \
  docs/data/kv/sxs-cpu.json.gz
PLOTS=docs/data/kv mx kv-chunk-cpu "A first check of the chunk wrapper on this project's 2-core CPU (float32, n = 50, query-aware, NQ-open top 5): \`HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/kv_matrix.py --model qwen2.5-0.5b --device cpu --query-aware --compressors snapkv,chunk:snapkv --ratios 0.5 --limit 50 --batch-size 5 --retrieved out/retrieved.json --out out/chunk-exp.json\`. Too few questions to decide anything; the 300-question GPU run is next. Raw JSON: \`docs/data/kv/chunk-cpu.json.gz\`." chunk-cpu docs/data/kv/chunk-cpu.json.gz

# the headline chosen on a development slice (bench/gpu_kv_headline.sh, second H100 session of 2026-11-23)
R1="snapkv layers_snapkv chunk_snapkv layers_chunk_snapkv caote_snapkv adaptive_snapkv"
R2="snapkv chunk_snapkv chunk_chunk_size_5__snapkv chunk_chunk_size_20__snapkv chunk_share_heads_False__snapkv"
R2="$R2 chunk_caote_snapkv chunk_snapkv_window_64_ snapkv_kernel_size_15_"
R3="passages_snapkv passages_chunk_snapkv passages_rest_first_True__chunk_snapkv global_snapkv global_chunk_snapkv"
R3="$R3 retrieval_snapkv retrieval_chunk_snapkv retrieval_boost_3.0__chunk_snapkv"  # both ratios; the rest 0.75 only
R3="$R3 retrieval_boost_4.0__chunk_snapkv retrieval_top_frac_0.25_boost_2.5__chunk_snapkv"
R3="$R3 retrieval_top_frac_0.1_boost_5.0__chunk_snapkv retrieval_boost_3.0__snapkv"
R3="$R3 retrieval_boost_3.0__chunk_share_heads_False__snapkv retrieval_top_frac_0.25_boost_3.0__chunk_snapkv"
R3="$R3 retrieval_top_frac_0.25_boost_2.5__snapkv retrieval_top_frac_0.2_boost_3.0__snapkv"
R3="$R3 retrieval_top_frac_0.35_boost_2.0__snapkv retrieval_boost_3.0__chunk_chunk_size_5__snapkv retrieval_boost_2.5__snapkv"
H=retrieval_scores__docs_data_kv_heads-nq-qwen2.5-0.5b.json_  # fourth round: heads measured on the task
R4="${H}__snapkv ${H}_boost_3.0__snapkv ${H}_top_frac_0.25_boost_2.5__snapkv ${H}_top_frac_0.2_boost_3.0__snapkv"
R4="$R4 ${H}_boost_3.0__chunk_snapkv"
files() { local dir=$1 slice=$2; shift 2; for c in "$@"; do echo "$G/$dir/$slice-$c.json.gz"; done; }
# shellcheck disable=SC2046,SC2086
$PY bench/kv_headline.py --dev $(files headline-r2 dev $R2) $(files headline-r3 dev $R3) $(files headline-r4 dev $R4) \
  --head $(files headline-r2 head $R2) $(files headline-r3 head $R3) $(files headline-r4 head $R4) \
  --baseline $G/headline-r1/dev-snapkv.json.gz $G/headline-r1/head-snapkv.json.gz --write-results kv-headline-select-gpu \
  --note "Every candidate of the second, third and fourth rounds, chosen among together on the development slice (ties: the earlier round). All ran on one NVIDIA H100 on 2026-11-23. Second round: \`CANDIDATES='snapkv chunk:snapkv chunk(chunk_size=5):snapkv chunk(chunk_size=20):snapkv chunk(share_heads=False):snapkv chunk:caote:snapkv chunk:snapkv(window=64) snapkv(kernel_size=15)' HEADLINE_BASELINE=0 bench/gpu_kv_headline.sh OUT headline\` (code of commit 0f093d0: selection without sort, window scores in bf16 with a float32 softmax), 16 processes sharing the GPU beside 10 others. Third round (a third session, code of commit 21b2b35): \`CANDIDATES='passages:snapkv passages:chunk:snapkv passages(rest_first=True):chunk:snapkv global:snapkv global:chunk:snapkv retrieval:snapkv retrieval:chunk:snapkv retrieval(boost=3.0):chunk:snapkv' HEADLINE_BASELINE=0 bench/gpu_kv_headline.sh OUT headline\`, then, as the retrieval wrapper led on the development slice at 0.75, two batches of variants at 0.75 only (\`kv_matrix.py --query-aware --compressors C --ratios 0.75 --limit 300 --offset 300|0 --no-baseline --k 5\`, one process per candidate and slice); pyramid:chunk:snapkv was started too and stopped unfinished (slow, and last on the CPU check). Fourth round (the same day, a fresh H100, code of commit 1a3f7ec): retrieval heads measured on the task instead of razor's random-token calibration (\`bench/kv_heads.py --offset 900 --limit 48\`, copy scores on questions 901-948, outside both slices; file \`docs/data/kv/heads-nq-qwen2.5-0.5b.json\`), five variants at 0.75 only: \`HEADLINE_RATIOS=0.75 HEADLINE_BASELINE=0 CANDIDATES=\"retrieval(scores='\$F'):snapkv retrieval(scores='\$F',boost=3.0):snapkv retrieval(scores='\$F',top_frac=0.25,boost=2.5):snapkv retrieval(scores='\$F',top_frac=0.2,boost=3.0):snapkv retrieval(scores='\$F',boost=3.0):chunk:snapkv\" bench/gpu_kv_headline.sh OUT convert headline\`. The full-cache runs come from the first round (\`$G/headline-r1/\`; the uncompressed path did not change). chunk = ChunkKV (chunks of 10 tokens, shared by a layer's heads unless share_heads=False) around SnapKV; passages = whole prompt parts first; global = AdaKV's allocation over every layer and head at once; retrieval = the retrieval heads of razor's calibration (top_frac of the key/value heads) get boost x the uniform budget and the other heads what is left of the same total (so kv bytes / full exceeds 0.25 at ratio 0.75: layers with a retrieval head hold padded slots, hidden by masks). Raw JSON: \`$G/headline-r2/\`, \`$G/headline-r3/\` and \`$G/headline-r4/\`, one file per candidate and slice."
# shellcheck disable=SC2046,SC2086
$PY bench/kv_headline.py --title "headline selection, first round" --dev $(files headline-r1 dev $R1) \
  --head $(files headline-r1 head $R1) --write-results kv-headline-select-gpu-r1 \
  --note "First round, the same day and GPU: \`bench/gpu_kv_headline.sh OUT convert headline\` with its default candidates, 12 processes on the GPU, code of commit 3618217 (kept positions sorted, window scores in float32). layers = one selection shared by every layer (compress/kv/layers.py), caote = value-aware correction, adaptive = AdaKV head budgets. The second round (section above) reran snapkv and chunk:snapkv on the current code. Raw JSON: \`$G/headline-r1/\`."
PLOTS=docs/data/kv mx kv-passages-cpu "First checks of the passages wrapper on this project's 2-core CPU (float32, n = 30 of the development slice, questions 301-330, query-aware, NQ-open top 5, ratio 0.75), made after the GPU time was spent, in three runs on the same questions (the last two without the full cache, merged here): \`HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/kv_matrix.py --model qwen2.5-0.5b --device cpu --query-aware --compressors snapkv,passages:snapkv,passages:chunk:snapkv --ratios 0.75 --limit 30 --offset 300 --batch-size 5 --retrieved out/retrieved.json --out out/passages-smoke.json\`, then \`--no-baseline --compressors 'passages(rest_first=True):snapkv,passages(rest_first=True):chunk:snapkv'\` and \`--no-baseline --compressors 'layers:passages:snapkv,layers:passages(rest_first=True):snapkv'\`. Thirty questions cannot separate the first five (all lose the same six answers or so); sharing one passage choice across layers collapses. Later (third session, before its GPU run), the same questions with the pyramid wrapper: \`--no-baseline --compressors pyramid:snapkv,pyramid:chunk:snapkv\`. Raw JSON: \`docs/data/kv/passages-*cpu.json.gz\`, \`docs/data/kv/pyramid-cpu.json.gz\`." passages-cpu \
  docs/data/kv/passages-cpu.json.gz docs/data/kv/passages-rest-cpu.json.gz docs/data/kv/passages-layers-cpu.json.gz \
  docs/data/kv/pyramid-cpu.json.gz
