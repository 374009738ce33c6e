"""The reuse suite (``ragcore eval kv --reuse Q``): Q different questions asked of one compressed context.

Each context is prefilled and compressed once, question-agnostic (``Generator.prefill_context``), and answers Q
questions (``CompressedContext.ask``); the same Q questions are also answered with Q full prefills of the full
prompt, no compression. Reported: accuracy per question index for both and their paired difference, the seconds
of one prefill + Q answers against Q full prefills (with their answers) as a ratio, and the KV bytes held.

Contexts, by data format:

* ``"kv_retrieval"``: one row's records (or the records of ``rows_per_context`` consecutive rows, for longer
  contexts), as many as fit ``max_tokens``, asked for the values of Q keys spread evenly over the records shown;
* ``"nq"``: the gold passages of Q consecutive NQ-open questions plus ``distractors`` gold passages of the
  questions that follow them, in a fixed shuffled order; each of the Q questions is asked.

Figures: docs/RESULTS.md, sections ``kv-reuse-*``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval.datasets import NQ_OPEN, load_nq_open, read_jsonl
from eval.kv_compression import (
    DEFAULT_NEW_TOKENS,
    KV_RETRIEVAL_SYSTEM,
    detect_format,
    dtype_name,
    score_answer,
    window_limit,
)
from eval.stats import mean_ci
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig, Generator
from ragcore.types import Chunk

logger = logging.getLogger(__name__)


@dataclass
class ReuseContext:
    """One context: its passages, the system prompt, and the Q (question, answers) asked of it."""

    id: str
    passages: list[Chunk]
    system: str | None
    questions: list[tuple[str, list[str]]]


def kv_question(key: str) -> str:
    return f'What is the value of the key "{key}" in the JSON object above? Answer with the value only.'


def records_passage(records: list[tuple[str, str]]) -> list[Chunk]:
    """Key-value records as one JSON object in one passage."""
    return [Chunk(json.dumps(dict(records), indent=1), "kv-records")]


def kv_contexts(
    gen: Generator, rows: list[dict], q: int, budget: int, first: int = 0, rows_per_context: int = 1
) -> list[ReuseContext]:
    """Per group of ``rows_per_context`` consecutive rows, the most of their records (in order, from the first)
    that fit ``budget`` with the longest question, and ``q`` keys spread evenly over them. A context is named by
    its first row's ``id`` (or, without one, by the row's index in the file, ``first`` being that of
    ``rows[0]``), joined with ``+`` to its last row's when it holds several, so runs over different ``--offset``
    name their contexts apart. Raises ``ConfigError`` when fewer than ``q`` records fit or when the rows of one
    context share a key."""
    out = []
    for g in range(0, len(rows) - rows_per_context + 1, rows_per_context):
        group = rows[g : g + rows_per_context]
        records = [tuple(r) for row in group for r in row["ordered_kv_records"]]
        if len({k for k, _ in records}) < len(records):
            raise ConfigError(
                f"rows {first + g}..{first + g + len(group) - 1} repeat a key: they cannot share a context"
            )
        longest = kv_question(max((k for k, _ in records), key=len))

        lo, hi, best = 1, len(records), 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if len(gen.prompt(longest, records_passage(records[:mid]), KV_RETRIEVAL_SYSTEM)) <= budget:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best < q:
            raise ConfigError(f"only {best} key-value records fit in {budget} prompt tokens, fewer than --reuse {q}")
        starts = [0, *itertools.accumulate(len(r["ordered_kv_records"]) for r in group)][:-1]
        shown = sum(1 for start in starts if start < best)  # rows with at least one record in the context
        if shown < len(group):
            raise ConfigError(
                f"only {best} key-value records fit in {budget} prompt tokens: rows {first + g + shown}.. of a "
                f"context of {rows_per_context} rows would not be shown (raise --max-tokens or lower "
                "--rows-per-context)",
                param="rows_per_context",
            )
        picks = [records[int((j + 0.5) * best / q)] for j in range(q)]
        questions = [(kv_question(k), [str(v)]) for k, v in picks]
        names = [str(row.get("id", first + g + j)) for j, row in enumerate(group)]
        name = names[0] if len(names) == 1 else f"{names[0]}+{names[-1]}"
        out.append(ReuseContext(name, records_passage(records[:best]), KV_RETRIEVAL_SYSTEM, questions))
    return out


def nq_contexts(gen: Generator, path: Path, q: int, n: int, offset: int, distractors: int, budget: int) -> list:
    """``n`` contexts of ``q`` consecutive questions' gold passages (from ``offset`` on) plus ``distractors`` gold
    passages of the questions after them, shuffled with a fixed seed; distractors are dropped until it fits."""
    ds = load_nq_open(path)
    by_id = ds.by_id()
    ex = ds.examples
    out = []
    for c in range(n):
        s = offset + c * q
        group = ex[s : s + q]
        if len(group) < q:
            raise ConfigError(f"{str(path)!r} has too few questions after --offset {offset} for {n} x {q}")
        gold = [by_id[next(iter(e.gold_ids))] for e in group]
        extra = [by_id[next(iter(e.gold_ids))] for e in ex[s + q : s + q + distractors]]
        extra = [x for x in extra if x not in gold]
        longest = max((e.question for e in group), key=len)
        while True:
            passages = gold + extra
            random.Random(s).shuffle(passages)
            if len(gen.prompt(longest, passages)) <= budget:
                break
            if not extra:
                raise ConfigError(f"the gold passages of {q} questions do not fit {budget} prompt tokens")
            extra = extra[:-1]
        out.append(ReuseContext(group[0].id, passages, None, [(e.question, e.answers) for e in group]))
    return out


def run_reuse(
    model: str | Generator = "smollm2-135m",
    data: str | Path | None = None,
    compressor: str | None = None,
    ratio: float | None = None,
    reuse: int = 10,
    limit: int = 5,
    offset: int = 0,
    device: str | None = None,
    max_tokens: int | None = None,
    max_new_tokens: int | None = None,
    distractors: int = 10,
    progress: bool = True,
    batch_size: int = 1,
    rows_per_context: int = 1,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Ask ``reuse`` questions of each of ``limit`` contexts, from one compressed context and from full prefills.

    Parameters
    ----------
    model:
        A generator name or a loaded :class:`Generator`.
    data:
        Key-value retrieval or NQ-open JSON lines (default: the bundled NQ-open).
    compressor:
        A KV compressor spec (default ``compress.kv.DEFAULT_AGNOSTIC``), compressed question-agnostic; ``"none"``
        reuses the full cache (one prefill of the context, no compression).
    ratio:
        Fraction of the context's cache removed, for a spec that sets neither ratio nor budget (default
        ``compress.kv.DEFAULT_AGNOSTIC_RATIO``); the result records the one used (0 for ``"none"``), and a spec's
        budget in its ``compressor`` label.
    reuse:
        Questions per context (Q).
    limit:
        Contexts.
    offset:
        Rows (key-value) or questions (NQ-open) skipped first.
    device, max_tokens, max_new_tokens:
        As for :class:`eval.kv_compression.KVSuite`.
    distractors:
        NQ-open: gold passages of other questions added to each context.
    progress:
        Show a progress bar.
    batch_size:
        Questions decoded together, in both arms: ``CompressedContext.ask_batch`` on the compressed context,
        ``Generator.generate_batch`` for the full prefills (greedy answers equal one-by-one ones in float32; in
        bfloat16 a token can differ now and then). Decoding steps cost a small model on a GPU the same for one row as for ten
        (kernel launches), so with 1 (one by one, the default) both arms are bound by decoding and reuse saves
        little there. With more than 1, a row's ``answer_s``/``full_s`` is its question's feed (its prefill) plus
        the batch's decoding until that row stopped.
    rows_per_context:
        Key-value retrieval: the records of this many consecutive rows make one context (``limit`` contexts read
        ``limit x rows_per_context`` rows), for contexts longer than one row's (75 records, about 5k tokens).
        A prefill's cost grows with the context's length faster than an answer's decoding does, so this is the
        knob that shows where reuse pays.
    dtype:
        The generator's dtype, for a model given by name (as for :class:`eval.kv_compression.KVSuite`); the
        result records the one it ran in (``dtype``).

    Returns
    -------
    dict
        ``accuracy_full``/``accuracy_reuse`` (with ``_ci95``), ``diff`` and ``diff_ci95`` (paired, reuse - full,
        over every question), ``by_index`` (per question index: accuracy of both), ``seconds_full`` (Q full
        prefills and answers, summed over contexts), ``seconds_reuse`` (one prefill + Q answers), ``speedup``
        (their ratio), the same in processor time of this process (``cpu_seconds_*``, ``cpu_speedup``: on a
        shared CPU machine, the work done whatever else runs; on a GPU it counts only the host's share),
        ``timings`` (per context: both arms' seconds, the compression's and each answer's), ``kv_bytes`` and
        ``kv_bytes_full`` (the context's cache, mean per context), ``n`` (questions), ``contexts``, the settings
        and ``predictions``.
    """
    from ragcore.context_cache import compressor_label, context_compressor

    checks = (("reuse", reuse, 1), ("limit", limit, 1), ("offset", offset, 0), ("batch_size", batch_size, 1),
              ("rows_per_context", rows_per_context, 1))  # fmt: skip
    for name, v, lo in checks:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}", param=name)
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
    ):
        raise ConfigError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}", param="max_new_tokens")
    # a bad spec or ratio fails before the model loads; "none" (None): the full cache reused (prefix caching
    # alone); a spec's own ratio or budget is used, else ``ratio``, else compress.kv.DEFAULT_AGNOSTIC_RATIO
    comp = context_compressor(compressor, ratio)
    label = "none" if comp is None else compressor_label(comp) if comp.budget is not None else comp.label
    ratio = 0.0 if comp is None else float(comp.ratio)
    path = Path(data) if data else NQ_OPEN
    if not path.exists():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    rows = read_jsonl(path)
    fmt = detect_format(rows, path)
    gen = model if isinstance(model, Generator) else Generator(model, device=device, dtype=dtype)
    gen.warm_up()
    new = max_new_tokens or DEFAULT_NEW_TOKENS[fmt]
    budget = window_limit(gen, max_tokens, new)
    if fmt == "kv_retrieval":
        n_rows = limit * rows_per_context
        if offset + n_rows > len(rows):
            raise ConfigError(
                f"{str(path)!r} has {len(rows)} rows: too few for --offset {offset} and {limit} "
                f"context{'s' if limit != 1 else ''} of {rows_per_context} rows"
            )
        contexts = kv_contexts(gen, rows[offset : offset + n_rows], reuse, budget, offset, rows_per_context)
    elif rows_per_context != 1:
        raise ConfigError("rows_per_context is for key-value retrieval data only", param="rows_per_context")
    else:
        contexts = nq_contexts(gen, path, reuse, limit, offset, distractors, budget)
    cfg = GenerationConfig(max_new_tokens=new)
    preds: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    for c in tqdm(contexts, desc=f"reuse {label} {ratio}", disable=not progress):
        t0, c0 = time.perf_counter(), time.process_time()
        ctx = gen.prefill_context(c.passages, "none" if comp is None else comp, c.system)
        qs = [question for question, _ in c.questions]
        if batch_size == 1:
            answers = [ctx.ask(question, cfg) for question in qs]
        else:
            answers = [a for s in range(0, len(qs), batch_size) for a in ctx.ask_batch(qs[s : s + batch_size], cfg)]
        t1, c1 = time.perf_counter(), time.process_time()
        prompts = [gen.prompt(question, c.passages, c.system) for question in qs]
        if batch_size == 1:
            fulls = [gen.generate(p, config=cfg) for p in prompts]
        else:
            fulls = [
                f for s in range(0, len(qs), batch_size) for f in gen.generate_batch(prompts[s : s + batch_size], cfg)
            ]
        t2, c2 = time.perf_counter(), time.process_time()
        a0 = answers[0]
        full_bytes = a0.stats["kv_bytes_full"] * ctx.context_tokens // a0.prompt_tokens
        timings.append({"context": c.id, "tokens": ctx.context_tokens, "seconds_reuse": t1 - t0,
                        "seconds_full": t2 - t1, "cpu_seconds_reuse": c1 - c0, "cpu_seconds_full": c2 - c1,
                        "compress_s": ctx.report["prefill_s"], "answer_s": [a.prefill_s + a.decode_s for a in answers],
                        "full_s": [f.prefill_s + f.decode_s for f in fulls], "kv_bytes": ctx.kv_bytes,
                        "kv_bytes_full": full_bytes})  # fmt: skip
        logger.info(
            "context %s (%d tokens): one prefill + %d answers %.1f s (compression %.1f s), %d full prefills %.1f s",
            c.id, ctx.context_tokens, len(answers), t1 - t0, ctx.report["prefill_s"], len(fulls), t2 - t1,
        )  # fmt: skip
        for j, ((question, gold), a, f) in enumerate(zip(c.questions, answers, fulls)):
            preds.append({"context": c.id, "index": j, "question": question, "answers": gold,
                          "full": f.text, "reuse": a.text, "accuracy_full": score_answer(fmt, f.text, gold),
                          "accuracy_reuse": score_answer(fmt, a.text, gold)})  # fmt: skip
    head = {"suite": "kv-reuse", "data": str(path), "format": fmt, "model": gen.model_name, "compressor": label,
            "ratio": float(ratio), "query_aware": False, "reuse": reuse, "offset": offset,
            "batch_size": batch_size, "rows_per_context": rows_per_context, "dtype": dtype_name(gen)}  # fmt: skip
    return {**head, **summarise(preds, timings, reuse), "max_new_tokens": new, "predictions": preds}


def summarise(preds: list[dict[str, Any]], timings: list[dict[str, Any]], reuse: int) -> dict[str, Any]:
    """The aggregates of :func:`run_reuse`'s result from its per-question ``preds`` (in context order, ``reuse``
    per context) and per-context ``timings``: accuracies with intervals, the paired difference, accuracy per
    question index, the seconds of both arms and their ratios, and the mean KV bytes and context tokens."""
    full_acc = [p["accuracy_full"] for p in preds]
    reuse_acc = [p["accuracy_reuse"] for p in preds]
    n_ctx = len(timings)
    if not n_ctx or len(preds) != n_ctx * reuse:
        raise ConfigError(f"{len(preds)} answers do not make {n_ctx} contexts of {reuse} questions")
    diff, diff_ci = mean_ci([r - f for r, f in zip(reuse_acc, full_acc)])
    af, af_ci = mean_ci(full_acc)
    ar, ar_ci = mean_ci(reuse_acc)
    by_index = [
        {
            "index": j,
            "accuracy_full": sum(full_acc[i] for i in range(j, len(full_acc), reuse)) / n_ctx,
            "accuracy_reuse": sum(reuse_acc[i] for i in range(j, len(reuse_acc), reuse)) / n_ctx,
        }
        for j in range(reuse)
    ]

    def total(key: str) -> float:
        return sum(x[key] for x in timings)

    t_full, t_reuse = total("seconds_full"), total("seconds_reuse")
    cpu_full, cpu_reuse = total("cpu_seconds_full"), total("cpu_seconds_reuse")
    return {
        "contexts": n_ctx,
        "n": len(full_acc),
        "accuracy_full": af,
        "accuracy_full_ci95": af_ci,
        "accuracy_reuse": ar,
        "accuracy_reuse_ci95": ar_ci,
        "diff": diff,
        "diff_ci95": diff_ci,
        "by_index": by_index,
        "seconds_full": t_full,
        "seconds_reuse": t_reuse,
        "speedup": t_full / t_reuse if t_reuse > 0 else 0.0,
        "cpu_seconds_full": cpu_full,
        "cpu_seconds_reuse": cpu_reuse,
        "cpu_speedup": cpu_full / cpu_reuse if cpu_reuse > 0 else 0.0,
        "timings": timings,
        "kv_bytes": total("kv_bytes") / n_ctx,
        "kv_bytes_full": total("kv_bytes_full") / n_ctx,
        "mean_context_tokens": total("tokens") / n_ctx,
    }


def merge_reuse(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`run_reuse` results of the same settings on different contexts (runs of a few contexts
    each, e.g. ``--limit 1 --offset i``) as one: their answers and timings joined, the aggregates recomputed.
    Raises ``ConfigError`` when the settings differ, a context appears twice, or a result predates the
    per-context timings."""
    if not results:
        raise ConfigError("merge_reuse needs at least one result")
    same = ("suite", "data", "format", "model", "compressor", "ratio", "reuse", "max_new_tokens", "batch_size",
            "rows_per_context")  # fmt: skip
    first = results[0]
    seen: set[str] = set()

    def setting(r: dict[str, Any], key: str) -> Any:
        # results from before the batches decoded one by one, or before contexts of several rows
        return r.get(key, 1 if key in ("batch_size", "rows_per_context") else None)

    for r in results:
        # the dtype: compared where both recorded it (results from before it was recorded are not)
        keys = (*same, "dtype") if "dtype" in r and "dtype" in first else same
        for key in keys:
            if setting(r, key) != setting(first, key):
                raise ConfigError(
                    f"cannot merge reuse results with {key} {setting(r, key)!r} and {setting(first, key)!r}"
                )
        if "timings" not in r:
            raise ConfigError("a reuse result without per-context timings (written before them) cannot be merged")
        ids = {t["context"] for t in r["timings"]}
        if ids & seen:
            raise ConfigError(f"contexts {sorted(ids & seen)!r} appear in more than one result")
        seen |= ids
    preds = [p for r in results for p in r["predictions"]]
    timings = [t for r in results for t in r["timings"]]
    head = {k: setting(first, k) for k in (*same, "query_aware")}
    head["offset"] = min(r["offset"] for r in results)
    if any("dtype" in r for r in results):
        head["dtype"] = next(r["dtype"] for r in results if "dtype" in r)
    return {**head, **summarise(preds, timings, first["reuse"]), "predictions": preds}
