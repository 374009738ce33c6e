"""Evaluation suites: ``retrieval`` and ``qa`` (closed-book, oracle passage, top-k retrieved)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval import metrics
from eval.datasets import NQ_OPEN, QADataset, QAExample, load_nq_open
from eval.stats import mean_ci
from ragcore.errors import ConfigError, IndexNotFoundError
from ragcore.generator import GenerationConfig, Generator
from ragcore.models import cache_dir
from ragcore.types import Chunk, ScoredChunk
from retrieval.hybrid import MODES, HybridRetriever

logger = logging.getLogger(__name__)

SETTINGS = ("closed", "oracle", "top5", "top10")


def _take(ds: QADataset, limit: int | None) -> list:
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}", param="limit")
    return ds.examples[:limit] if limit else ds.examples


def corpus_retriever(ds: QADataset, data_path: Path, progress: bool = True, **kwargs: Any) -> HybridRetriever:
    """A hybrid index over the dataset's corpus, built once and cached under the cache directory."""
    digest = hashlib.sha256(data_path.read_bytes()).hexdigest()[:16]
    path = cache_dir() / "eval-index" / f"{data_path.name}-{digest}"
    try:
        return HybridRetriever.load(path, **kwargs)
    except IndexNotFoundError:
        pass
    logger.info("indexing %d passages of %s (cached at %s)", len(ds.corpus), data_path.name, path)
    r = HybridRetriever(progress=progress, **kwargs)
    r.add(ds.corpus)
    r.save(path)
    return r


def passage_source(
    ds: QADataset, data_path: Path, retrieved: str | Path | None = None, progress: bool = True
) -> Callable[[QAExample, int], list[Chunk | ScoredChunk]]:
    """``f(example, k)`` -> the top ``k`` passages: from the hybrid retriever over the dataset's corpus, or
    from a file of retrieved ids written by ``eval_retrieval(dump=...)`` (no embedder needed)."""
    if retrieved is None:
        retr = corpus_retriever(ds, data_path, progress)
        return lambda ex, k: retr.search(ex.question, k)
    fixed = json.loads(Path(retrieved).read_text())
    by_id = ds.by_id()

    def lookup(ex: QAExample, k: int) -> list[Chunk | ScoredChunk]:
        if ex.id not in fixed:
            raise ConfigError(f"question {ex.id!r} is missing from the retrieved file {str(retrieved)!r}")
        return [by_id[i] for i in fixed[ex.id][:k]]

    return lookup


def eval_retrieval(
    data: str | Path | None = None,
    limit: int | None = None,
    ks: tuple[int, ...] = (1, 5, 20),
    progress: bool = True,
    dump: str | Path | None = None,
    **retriever_kwargs: Any,
) -> dict[str, dict[str, float]]:
    """Recall@k, MRR and nDCG@10 of BM25, dense and hybrid retrieval over the dataset's own corpus.

    ``dump``: also write the hybrid top-20 chunk ids of every question as JSON (``{example id: [chunk id]}``),
    which ``eval_qa(retrieved=...)`` reads to evaluate generators on fixed retrieval results elsewhere.
    """
    ds = load_nq_open(data)
    data_path = Path(data) if data else NQ_OPEN
    r = corpus_retriever(ds, data_path, progress, **retriever_kwargs)
    r.warm_up()
    exs = _take(ds, limit)
    depth = max(max(ks), 10)
    out: dict[str, dict[str, float]] = {}
    dumped: dict[str, list[str]] = {}
    for mode in MODES[1:] + MODES[:1]:  # bm25, dense, hybrid
        t0 = time.perf_counter()
        sums: dict[str, float] = {f"recall@{k}": 0.0 for k in ks} | {"mrr": 0.0, "ndcg@10": 0.0}
        batch = 64
        for s in tqdm(range(0, len(exs), batch), desc=f"retrieval {mode}", disable=not progress):
            part = exs[s : s + batch]
            for ex, res in zip(part, r.search_many([e.question for e in part], depth, mode)):
                ranked = [x.chunk.id for x in res]
                if mode == "hybrid":
                    dumped[ex.id] = ranked[:20]
                for k in ks:
                    sums[f"recall@{k}"] += metrics.recall_at(ranked, ex.gold_ids, k)
                sums["mrr"] += metrics.mrr(ranked, ex.gold_ids)
                sums["ndcg@10"] += metrics.ndcg_at(ranked, ex.gold_ids, 10)
        out[mode] = {k: v / len(exs) for k, v in sums.items()}
        out[mode]["n"] = len(exs)
        out[mode]["queries_per_s"] = len(exs) / (time.perf_counter() - t0)
    if dump:
        Path(dump).write_text(json.dumps(dumped))
    return out


def eval_qa(
    setting: str = "top5",
    model: str = "smollm2-135m",
    data: str | Path | None = None,
    limit: int | None = None,
    device: str | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
    retrieved: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy, EM and F1 of a generator, closed-book, with the oracle passage, or with the top k retrieved.

    ``retrieved``: a file written by ``eval_retrieval(dump=...)``; the top k come from it instead of a retriever.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"unknown QA setting {setting!r}; options: {', '.join(SETTINGS)}")
    ds = load_nq_open(data)
    exs = _take(ds, limit)
    gen = Generator(model, device=device)
    gen.warm_up()
    by_id = ds.by_id()
    top = None
    if setting.startswith("top"):
        top = passage_source(ds, Path(data) if data else NQ_OPEN, retrieved, progress)
    k = int(setting[3:]) if setting.startswith("top") else 0
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    acc, em, f1, prompt_tok, secs = [], [], [], 0, 0.0
    rows = []
    for ex in tqdm(exs, desc=f"qa {setting} {model}", disable=not progress):
        if setting == "closed":
            passages = []
        elif setting == "oracle":
            passages = [by_id[i] for i in sorted(ex.gold_ids)]
        else:
            passages = top(ex, k)
        g = gen.generate(ex.question, passages, cfg)
        acc.append(metrics.accuracy(g.text, ex.answers))
        em.append(metrics.exact_match(g.text, ex.answers))
        f1.append(metrics.token_f1(g.text, ex.answers))
        prompt_tok += g.prompt_tokens
        secs += g.prefill_s + g.decode_s
        rows.append({"id": ex.id, "prediction": g.text, "answers": ex.answers, "accuracy": acc[-1]})
    a, ci = mean_ci(acc)
    return {
        "setting": setting,
        "model": model,
        "device": str(gen.model.device),
        "accuracy": a,
        "accuracy_ci95": ci,
        "em": sum(em) / len(em),
        "f1": sum(f1) / len(f1),
        "n": len(exs),
        "mean_prompt_tokens": prompt_tok / len(exs),
        "seconds_per_question": secs / len(exs),
        "predictions": rows,
    }
