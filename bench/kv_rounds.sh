# The headline candidates of each round, as the file names bench/gpu_kv_headline.sh gives them
# (docs/data/kv/gpu/headline-rN/{dev,head}-NAME.json.gz); the order is the tie-break order of bench.kv_headline.
# Sourced by bench/render_kv_gpu.sh and bench/gpu_kv_confirm.sh.
# shellcheck shell=bash disable=SC2034
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
# fifth round (bench/gpu_kv_confirm.sh), compressor names: at both ratios, at 0.5 only, at 0.75 only
R5_BOTH="snapkv(group='max')"
R5_50="passages:chunk:snapkv(group='max')"
R5_75="retrieval(top_frac=0.25,boost=2.5):snapkv(group='max') retrieval(top_frac=0.25,boost=2.5):snapkv(window=16)"
R5_75="$R5_75 retrieval(top_frac=0.3,boost=2.5):snapkv"
fname() { echo "$1" | tr ":()=,/' " '________'; }  # a compressor's file name, as bench/gpu_kv_headline.sh gives it
R5=""
for c in $R5_BOTH $R5_50 $R5_75; do R5="$R5 $(fname "$c")"; done
# sixth round (bench/gpu_kv_confirm.sh round6): retrieval heads with per-layer budgets, which hold exactly the budget
# (no padded slots), at 0.75 on all three slices at once
R6_75="retrieval(top_frac=0.25,boost=2.5,per_layer=True):snapkv(window=16)"
R6_75="$R6_75 retrieval(top_frac=0.25,boost=2.5,per_layer=True):snapkv retrieval(top_frac=0.25,boost=3.5,per_layer=True):snapkv(window=16)"
R6=""
for c in $R6_75; do R6="$R6 $(fname "$c")"; done
