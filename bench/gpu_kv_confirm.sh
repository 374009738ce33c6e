#!/usr/bin/env bash
# Issue #3's headline on questions that no choice has seen, on one GPU machine (environment as for
# bench/gpu_kv_headline.sh, after its convert step). Steps, in order:
#   round5  the fifth round of candidates (R5_* in bench/kv_rounds.sh) on the development (301-600) and headline
#           (1-300) slices, paired with the first round's full cache like rounds 2-4;
#   pick    the choice per ratio over rounds 2-5 on both slices together (python -m bench.kv_headline --picks), and a check
#           that this machine builds the same prompts as the first round did (mean prompt tokens per slice);
#   fresh   on questions FRESH_OFFSET+1 onwards (FRESH_LIMIT of them): the full cache, each choice at its ratio and
#           snapkv at both (a reference), one process each.
#   round6  (later, on its own) the sixth round (R6_75: retrieval heads with per-layer budgets) at 0.75 on all three
#           slices at once, paired with the full-cache runs of the first round and of the fresh step.
#   MODEL=/var/tmp/m/qwen2.5-0.5b.gguf RETRIEVED=/var/tmp/m/retrieved.json RAGCORE_CACHE=/var/tmp/cache \
#     bench/gpu_kv_confirm.sh OUTDIR [STEP...]
set -uo pipefail
OUT=${1:?output folder}; shift
PY=${PY:-python3}
: "${MODEL:?}" "${RETRIEVED:?}" "${RAGCORE_CACHE:?}"
G=docs/data/kv/gpu
R5DIR=$OUT/r5
R6DIR=$OUT/r6
# shellcheck source=bench/kv_rounds.sh
. bench/kv_rounds.sh
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$R5DIR" "$R6DIR"

m() { # output file (no suffix), then kv_matrix arguments
  local out=$1; shift
  $PY -m bench.kv_matrix --model "$MODEL" --device cuda --batch-size "${BATCH:-32}" --query-aware --k 5 \
    --retrieved "$RETRIEVED" --out "$out.json" "$@" > "$out.log" 2>&1 &
}
slice_files() { # dev|head: every candidate's file of that slice, rounds 2-5, in tie-break order
  local s=$1 c
  for c in $R2; do echo "$G/headline-r2/$s-$c.json.gz"; done
  for c in $R3; do echo "$G/headline-r3/$s-$c.json.gz"; done
  for c in $R4; do echo "$G/headline-r4/$s-$c.json.gz"; done
  for c in $R5; do echo "$R5DIR/$s-$c.json"; done
}
BASE=("$G/headline-r1/dev-snapkv.json.gz" "$G/headline-r1/head-snapkv.json.gz")
same_prompts() { # FILES: refuse runs whose prompts differ from the full-cache runs they are paired with
  local fresh=$OUT/fresh-full.json
  [ -f "$fresh" ] || fresh=$G/fresh/fresh-full.json.gz
  $PY - "${BASE[@]}" "$fresh" "$@" <<'PY'
import gzip, json, sys
def read(p): return json.load(gzip.open(p) if p.endswith(".gz") else open(p))
ref = {d["offset"]: d["runs"][0]["mean_prompt_tokens"] for d in map(read, sys.argv[1:4])}
for p in sys.argv[4:]:
    d = read(p)
    for r in d["runs"]:
        if abs(r["mean_prompt_tokens"] - ref[d["offset"]]) > 1e-6:
            sys.exit(f"{p}: mean prompt tokens {r['mean_prompt_tokens']} != the full-cache run's {ref[d['offset']]}")
print("prompts as in the full-cache runs:", ref)
PY
}

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(round5 pick fresh)
for step in "${STEPS[@]}"; do
  echo "$(date +%T) $step"
  case $step in
  round5)
    for slice in dev:300 head:0; do
      for c in $R5_BOTH; do m "$R5DIR/${slice%%:*}-$(fname "$c")" --no-baseline --compressors "$c" --ratios 0.5,0.75 --limit 300 --offset "${slice##*:}"; done
      for c in $R5_50; do m "$R5DIR/${slice%%:*}-$(fname "$c")" --no-baseline --compressors "$c" --ratios 0.5 --limit 300 --offset "${slice##*:}"; done
      for c in $R5_75; do m "$R5DIR/${slice%%:*}-$(fname "$c")" --no-baseline --compressors "$c" --ratios 0.75 --limit 300 --offset "${slice##*:}"; done
    done
    wait
    ;;
  pick)
    # shellcheck disable=SC2046
    $PY -m bench.kv_headline --dev $(slice_files dev) --head $(slice_files head) --baseline "${BASE[@]}" --picks \
      > "$OUT/picks.json" || exit 1
    same_prompts "$R5DIR"/*.json || exit 1
    echo "picks $(cat "$OUT/picks.json")"
    ;;
  fresh)
    p50=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["0.5"])' "$OUT/picks.json")
    p75=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["0.75"])' "$OUT/picks.json")
    F=(--offset "${FRESH_OFFSET:-1000}" --limit "${FRESH_LIMIT:-1000}")
    m "$OUT/fresh-full" --compressors snapkv --ratios 0 "${F[@]}"  # ratio 0: the full cache only
    m "$OUT/fresh-pick-0.5" --no-baseline --compressors "$p50" --ratios 0.5 "${F[@]}"
    m "$OUT/fresh-pick-0.75" --no-baseline --compressors "$p75" --ratios 0.75 "${F[@]}"
    m "$OUT/fresh-snapkv" --no-baseline --compressors snapkv --ratios 0.5,0.75 "${F[@]}"
    wait
    ;;
  round6)
    for c in $R6_75; do
      for slice in dev:300:300 head:0:300 fresh:"${FRESH_OFFSET:-1000}":"${FRESH_LIMIT:-1000}"; do
        IFS=: read -r s off lim <<< "$slice"
        m "$R6DIR/$s-$(fname "$c")" --no-baseline --compressors "$c" --ratios 0.75 --limit "$lim" --offset "$off"
      done
    done
    wait
    same_prompts "$R6DIR"/*.json || exit 1
    ;;
  *) echo "unknown step $step (round5, pick, fresh, round6)"; exit 2 ;;
  esac
done
echo "$(date +%T) all done"
