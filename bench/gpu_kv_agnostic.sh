#!/usr/bin/env bash
# Issue #16 on one GPU machine: a question-agnostic KV compressor chosen on a development slice, measured on
# questions no choice saw, side by side with kvpress; and one compressed context reused for 10 questions.
# Steps (in this order; each waits for its processes):
#   dev     every candidate, question-agnostic, ratio 0.5, NQ-open top 5, questions 301-600 (the development slice
#           of docs/RESULTS.md kv-headline-fresh-gpu), one matrix with the full cache; the table names the best
#           change (-> PICK, and compress.kv.DEFAULT_AGNOSTIC if it differs from today's).
#   devs    as dev, split over processes: DEV_GROUPS is ';'-separated candidate lists, one process each
#           (dev-1.json, dev-2.json, ...; each with its own full-cache run, the first one's is the reference; a
#           group of one compressor is a single run, so then dev-full.json holds the full cache's run); and each
#           group on key-value retrieval rows 101-200 (guard-*.json, the guard of the pick step).
#   pick    PICK := the best change over dev-*.json among the candidates that lose at most 3 points on the guard
#           files when there are any (bench.kv_agnostic --matrix ... --guard ... --best), written to pick.txt;
#           the later steps of the same call use it (HEAD := PICK, and the sxs step's ours with SXS_OURS=pick).
#   head    HEAD (default: PICK, i.e. compress.kv.DEFAULT_AGNOSTIC, and REFERENCE, expected_attention; after the pick
#           step: PICK alone) on questions 1-300 (HEAD_OFFSET=600: 601-900), and 1001-1983 with FRESH=1 (none of them seen by the choice),
#           question-agnostic, ratio 0.5; the full cache as its own run beside (head-full.json, fresh-full.json).
#   aware   query-aware (the default of `ragcore ask --compressor NAME --ratio R`), ratios 0.5 and 0.75, questions 1-300
#   sxs     kvpress 0.5.5 side by side on the same prompts (questions 1-300): snapkv, knorm, streaming_llm,
#           expected_attention, kvzip at 0.5, ours question-agnostic, kvpress's defaults, the full cache first.
#           SXS_OURS=SPEC (or "pick"): ours runs SPEC against every press (bench.kv_side_by_side --ours).
#   reuse   eval kv --reuse 10: 30 key-value contexts (10 keys each) and 30 NQ-open contexts (the gold passages of
#           10 questions + 10 distractors), ratio 0.5, PICK; one prefill + 10 answers against 10 full prefills.
#   reuselong  eval kv --reuse 10 on contexts of REUSE_ROWS key-value rows each (--rows-per-context; default 5,
#           about 25k tokens: there a prefill costs more than the answers' decoding), N_REUSE contexts from row
#           REUSE_OFFSET (default 300), decoded 10 together, for each spec of REUSE_SPECS (';'-separated, default
#           PICK): one run after the other, alone on the GPU, so that neither arm's seconds share it
#   report  the RESULTS sections ($SECTIONS-dev-gpu, $SECTIONS-head-gpu, [$SECTIONS-fresh-gpu,] kv-reuse-gpu,
#           kv-vs-kvpress-agnostic-gpu); SECTIONS=kv-agnostic by default (kv-agnostic-kvzip for the options' choice).
#   MODEL=qwen2.5-0.5b [RETRIEVED=/var/tmp/m/retrieved.json] KVP=/var/tmp/kvp \
#     RAGCORE_CACHE=/var/tmp/cache bench/gpu_kv_agnostic.sh OUTDIR STEP...   (STEP "a+b": a and b together)
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"
PY=${PY:-python3}
: "${MODEL:?}" "${KVP:?}" "${RAGCORE_CACHE:?}"
B=${BATCH:-32}
CANDIDATES=${CANDIDATES:-"kvzip,kvzip(scope='layer'),expected_attention,h2o,snapkv,knorm,streaming_llm,tova,adaptive:expected_attention"}
PICK=${PICK:-$($PY -c "from compress.kv import DEFAULT_AGNOSTIC; print(DEFAULT_AGNOSTIC)")}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NQ=(--k 5); [ -n "${RETRIEVED:-}" ] && NQ+=(--retrieved "$RETRIEVED")  # else: the hybrid retriever (embedder here)
KV=(eval/data/kv_retrieval_75_keys.jsonl.gz)
ev() { # name, then `ragcore eval kv` arguments
  local name=$1; shift
  $PY -m ragcore.cli -v -q eval kv --model "$MODEL" --device "${DEVICE:-cuda}" --out "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1 &
}

for steps in "$@"; do
  echo "$(date +%T) $steps"
  for step in ${steps//+/ }; do
  case $step in
  dev) ev dev --compressor "$CANDIDATES" --ratio 0.5 --offset 300 --limit "${N_KV:-300}" --batch-size "$B" "${NQ[@]}" ;;
  devs)
    i=0
    IFS=';' read -ra groups <<< "${DEV_GROUPS:?DEV_GROUPS: candidate lists separated by ;}"
    full=0
    for g in "${groups[@]}"; do
      i=$((i + 1))
      ev "dev-$i" --compressor "$g" --ratio 0.5 --offset 300 --limit "${N_KV:-300}" --batch-size "$B" "${NQ[@]}"
      # a group of one compressor is a single run, without the full cache beside (commas inside a spec's
      # brackets do not separate compressors: the registry's own split counts them)
      n=$($PY -c 'import sys; from ragcore.registry import split_top; print(len(split_top(sys.argv[1], ",")))' "$g")
      [ "$n" = 1 ] && full=1
    done
    [ $full = 1 ] && ev dev-full --compressor none --offset 300 --limit "${N_KV:-300}" --batch-size "$B" "${NQ[@]}"
    # the guard: every group on key-value retrieval too (rows 101-200; the reuse runs read rows 1-30), since a
    # setting that keeps NQ-open's short answers can lose long exact strings outright (kv-reuse-kvzap-layer-cpu);
    # the pick step then takes only a candidate that loses at most 3 points there
    i=0
    for g in "${groups[@]}"; do
      i=$((i + 1))
      ev "guard-$i" --compressor "$g" --ratio 0.5 --data "${KV[0]}" --offset 100 --limit "${N_GUARD:-100}" --batch-size "$B"
    done
    ev guard-full --compressor none --data "${KV[0]}" --offset 100 --limit "${N_GUARD:-100}" --batch-size "$B"
    ;;
  devfull)  # the full cache alone on the development questions (what `devs` adds for groups of one compressor)
    ev dev-full --compressor none --offset 300 --limit "${N_KV:-300}" --batch-size "$B" "${NQ[@]}" ;;
  pick)
    guard=(); compgen -G "$OUT/guard-*.json" > /dev/null && guard=(--guard "$OUT"/guard-*.json)
    PICK=$($PY -m bench.kv_agnostic --matrix "$OUT"/dev-*.json "${guard[@]}" --best) && [ -n "$PICK" ] || { echo "no pick"; exit 3; }
    HEAD=$PICK; echo "$PICK" > "$OUT/pick.txt"; echo "pick: $PICK"
    ;;
  head)  # HEAD (default: PICK and REFERENCE); FRESH=1 adds questions 1001-1983. The full cache runs on its own
    # (head-full.json, fresh-full.json): HEAD of one compressor is a single run, without a baseline
    # HEAD_OFFSET: the first question (0: questions 1-300; 600: 601-900, which no KV choice or headline read before
    # the KVzap runs of 2026-12-01)
    ho=(--offset "${HEAD_OFFSET:-0}")
    ev head --compressor "${HEAD:-$PICK,${REFERENCE:-expected_attention}}" --ratio 0.5 --limit "${N_KV:-300}" "${ho[@]}" --batch-size "$B" "${NQ[@]}"
    ev head-full --compressor none --limit "${N_KV:-300}" "${ho[@]}" --batch-size "$B" "${NQ[@]}"
    if [ "${FRESH:-0}" = 1 ]; then
      ev fresh --compressor "${HEAD:-$PICK,${REFERENCE:-expected_attention}}" --ratio 0.5 --offset 1000 --batch-size "$B" "${NQ[@]}"
      ev fresh-full --compressor none --offset 1000 --batch-size "$B" "${NQ[@]}"
    fi
    ;;
  aware)  # the single-question default (query-aware), as `ragcore ask --compressor NAME --ratio R` runs it
    ev aware --query-aware --compressor "${AWARE:-snapkv,expected_attention,kvzip,h2o}" --ratio 0.5,0.75 \
      --limit "${N_KV:-300}" --batch-size "$B" "${NQ[@]}" ;;
  sxs)
    # three processes on the same 300 prompts (the full cache row once); rendered together
    i=0
    for methods in ${SXS_GROUPS:-snapkv,knorm streaming_llm,expected_attention kvzip}; do
      i=$((i + 1)); extra=(); [ $i -gt 1 ] || [ -n "${SXS_GROUPS:-}" ] && extra=(--no-baseline)
      ours=${SXS_OURS:-}; [ "$ours" = pick ] && ours=$PICK
      [ -n "$ours" ] && extra+=(--ours "$ours")
      PYTHONPATH="$KVP:${PYTHONPATH:-}" RAGCORE_CACHE="$RAGCORE_CACHE-kvp" \
        $PY -m bench.kv_side_by_side --model "$MODEL" --device "${DEVICE:-cuda}" --no-progress \
        --methods $methods --ratios 0.5 --limit "${N_KV:-300}" "${extra[@]}" \
        "${NQ[@]}" --out "$OUT/sxs-agnostic-$i.json" > "$OUT/sxs-agnostic-$i.log" 2>&1 &
    done
    ;;
  reuse)  # REUSE_BATCHES: questions decoded together in both arms (1: one by one); one run per value and data
    for b in ${REUSE_BATCHES:-1}; do
      sfx=; [ "$b" = 1 ] || sfx=-b$b
      ev reuse-kv$sfx --reuse 10 --limit "${N_REUSE:-30}" --compressor "$PICK" --ratio 0.5 --data "${KV[0]}" --batch-size "$b"
      ev reuse-nq$sfx --reuse 10 --limit "${N_REUSE:-30}" --compressor "$PICK" --ratio 0.5 --batch-size "$b"
    done
    ;;
  reuselong)
    IFS=';' read -ra specs <<< "${REUSE_SPECS:-$PICK}"
    j=0
    for spec in "${specs[@]}"; do
      j=$((j + 1))
      for r in ${REUSE_ROWS:-5}; do
        ev "reuse-long-$j-r$r" --reuse 10 --rows-per-context "$r" --limit "${N_REUSE:-30}" --offset "${REUSE_OFFSET:-300}" \
          --compressor "$spec" --ratio 0.5 --data "${KV[0]}" --batch-size 10
        wait
      done
    done
    ;;
  report)  # SECTIONS: the prefix of the section names (kv-agnostic: the method choice; kv-agnostic-kvzip: the options)
    NOTE="Ran on one GPU by bench/gpu_kv_agnostic.sh (qwen2.5-0.5b, $($PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))."
    S=${SECTIONS:-kv-agnostic}
    dev=("$OUT"/dev.json); [ -f "$OUT/dev.json" ] || dev=("$OUT"/dev-*.json)  # one process (dev) or several (devs)
    $PY -m bench.kv_agnostic --matrix "${dev[@]}" --write-results "$S-dev-gpu" \
      --title "KV compression, question-agnostic: the choice on the development slice" --note "$NOTE"
    $PY -m bench.kv_agnostic --matrix "$OUT/head-full.json" "$OUT/head.json" --write-results "$S-head-gpu" \
      --title "KV compression, question-agnostic: the choice on questions 1-300" --note "$NOTE"
    [ -f "$OUT/fresh.json" ] && $PY -m bench.kv_agnostic --matrix "$OUT/fresh-full.json" "$OUT/fresh.json" \
      --write-results "$S-fresh-gpu" --title "KV compression, question-agnostic: the choice on questions 1001-1983" --note "$NOTE"
    [ -f "$OUT/aware.json" ] && $PY -m bench.kv_matrix --merge "$OUT/aware.json" --out "$OUT/aware-merged.json" \
      --write-results kv-ask-default-gpu --note "$NOTE Query-aware, the default of ragcore ask --compressor NAME --ratio R, questions 1-300."
    $PY -m bench.kv_agnostic --reuse "$OUT/reuse-kv.json" "$OUT/reuse-nq.json" --write-results kv-reuse-gpu \
      --title "KV compression: one compressed context, 10 questions" --note "$NOTE"
    sxs=kv-vs-kvpress-agnostic-gpu; [ -n "${SXS_OURS:-}" ] && sxs=kv-vs-kvpress-agnostic-default-gpu  # one of ours: --ours
    $PY -m bench.kv_side_by_side --render "$OUT"/sxs-agnostic-*.json --write-results "$sxs" \
      --note "$NOTE Ours question-agnostic against kvpress's presses with their defaults."
    ;;
  *) echo "unknown step $step (dev, devs, pick, head, aware, sxs, reuse, reuselong, report)"; exit 2 ;;
  esac
  done
  wait
done
echo "$(date +%T) all done"
