"""Statistics of evaluation results: means with normal-approximation 95% intervals, and paired differences.

Two runs over the same questions are compared question by question (a paired difference): the interval of the
mean difference is much narrower than the two runs' own intervals suggest, since both runs get most questions
equally right or wrong. Pure Python; no third-party imports (the kvpress peer uses it in its own environment).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Z95 = 1.96  # two-sided 95% quantile of the standard normal


def mean_ci(xs: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation confidence interval.

    Parameters
    ----------
    xs : sequence of float
        Per-question values (e.g. 0/1 accuracy, or paired differences).
    z : float
        Normal quantile of the interval (1.96: 95%).

    Returns
    -------
    (float, float)
        The mean and ``z`` times its standard error (sample variance, ``n - 1``); ``(0, 0)`` for no values and a
        zero half-width for one.
    """
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return m, z * math.sqrt(var / n)


def pool(parts: Sequence[tuple[float, float, int]], z: float = Z95) -> tuple[float, float, int]:
    """The :func:`mean_ci` of the union of disjoint samples, from each sample's ``(mean, half-width, n)``.

    Exact (not an approximation): each part's sample variance is recovered from its half-width, and the pooled
    variance adds the spread of the part means. Used to merge shards of one suite run in several processes.

    Returns
    -------
    (float, float, int)
        The pooled mean, its half-width at ``z`` and the total ``n``; ``(0, 0, 0)`` when every part is empty.
    """
    parts = [(m, h, n) for m, h, n in parts if n > 0]
    total = sum(n for _, _, n in parts)
    if total == 0:
        return 0.0, 0.0, 0
    mean = sum(m * n for m, _, n in parts) / total
    if total == 1:
        return mean, 0.0, 1
    ss = sum((n - 1) * (h / z) ** 2 * n + n * (m - mean) ** 2 for m, h, n in parts)  # (h/z)^2 * n = sample variance
    return mean, z * math.sqrt(ss / (total - 1) / total), total


def cluster_mean_ci(xs: Sequence[float], clusters: Sequence[object], z: float = Z95) -> tuple[float, float]:
    """Mean of ``xs`` and the half-width of its interval when items of one cluster are not independent (several
    shuffles of one PoisonedRAG target): the cluster-robust (sandwich) standard error of the ratio estimator
    sum(x) / n over the clusters' sums. Equals :func:`mean_ci` when every cluster holds one item (and there are
    at least two); NaN for the half-width with fewer than two clusters.

    Parameters
    ----------
    xs : sequence of float
        Per-item values.
    clusters : sequence
        Per item, the cluster it belongs to (any hashable label), as long as ``xs``.

    Raises
    ------
    ValueError
        ``clusters`` is not as long as ``xs``.
    """
    if len(xs) != len(clusters):
        raise ValueError(f"one cluster per value: {len(xs)} values against {len(clusters)} clusters")
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    m = sum(xs) / n
    sums: dict[object, float] = {}
    for x, c in zip(xs, clusters):
        sums[c] = sums.get(c, 0.0) + (x - m)
    k = len(sums)
    if k < 2:  # one cluster: its spread says nothing about the clusters' (undefined, not zero)
        return m, float("nan")
    return m, z * math.sqrt(k / (k - 1) * sum(e * e for e in sums.values())) / n


def paired_diffs(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Per item, ``xs[i] - ys[i]``.

    Raises
    ------
    ValueError
        ``xs`` and ``ys`` differ in length (they must score the same items in the same order).
    """
    if len(xs) != len(ys):
        raise ValueError(f"paired values need the same items: {len(xs)} against {len(ys)}")
    return [x - y for x, y in zip(xs, ys)]


def matched_diffs(run: Mapping[str, Any], base: Mapping[str, Any], key: str = "accuracy") -> list[float]:
    """Per question both runs answered, ``run``'s ``key`` minus ``base``'s, in ``run``'s order.

    Parameters
    ----------
    run, base : mapping
        Suite results with ``"predictions"``: a list of ``{"id": ..., key: float}`` (the JSON of
        ``ragcore eval kv`` and of every run of a matrix).
    key : str
        The per-question score compared.
    """
    ref = {p["id"]: p[key] for p in base["predictions"]}
    return [p[key] - ref[p["id"]] for p in run["predictions"] if p["id"] in ref]


def paired_difference(run: Mapping[str, Any], base: Mapping[str, Any], key: str = "accuracy") -> tuple[float, float]:
    """The change of ``run`` against ``base`` on the questions both answered, and the half-width of its paired
    95% interval (:func:`matched_diffs` through :func:`mean_ci`)."""
    return mean_ci(matched_diffs(run, base, key))
