"""Metrics: retrieval (recall@k, MRR, nDCG@10) and answers (exact match, token F1, accuracy, contains).

Intervals and paired differences of these are in ``eval.stats``. Standard library only (the kvpress peer
imports this module in its own environment).

Answer normalisation is SQuAD's: lower case, no punctuation, no articles, single spaces.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, golds: Sequence[str]) -> float:
    p = normalize(pred)
    return float(any(p == normalize(g) for g in golds))


def token_f1(pred: str, golds: Sequence[str]) -> float:
    best = 0.0
    p = normalize(pred).split()
    for g in golds:
        g = normalize(g).split()
        common = sum((Counter(p) & Counter(g)).values())
        if common:
            prec, rec = common / len(p), common / len(g)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def accuracy(pred: str, golds: Sequence[str]) -> float:
    """1 if a normalised gold answer is contained in the normalised prediction (the NQ-open 'accuracy')."""
    p = f" {normalize(pred)} "
    return float(any(normalize(g) and f" {normalize(g)} " in p for g in golds))


def contains(pred: str, answer: str) -> float:
    """1 if ``answer`` appears verbatim (case and punctuation kept) in ``pred``: the score of key-value retrieval
    and needle tasks, whose answers are exact strings (UUIDs, numbers)."""
    return float(bool(answer) and answer in pred)


def first_hit(ranked: Sequence[str], relevant: set[str]) -> int | None:
    """0-based rank of the first relevant id, or None."""
    return next((i for i, r in enumerate(ranked) if r in relevant), None)


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant ids found in the top ``k`` (with one relevant id: hit@k)."""
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def mrr(ranked: Sequence[str], relevant: set[str]) -> float:
    r = first_hit(ranked, relevant)
    return 0.0 if r is None else 1.0 / (r + 1)


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(ranked[:k]) if r in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0
