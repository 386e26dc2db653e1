"""The paper's retrieval metrics in pure numpy, shared by training validation, `calibrate` and `evaluate`.

A query is classified at each rank by the labels of its nearest keys (cosine).  Top-k accuracy
counts a query as correct when its true label is among the labels of its k nearest keys.  *Micro*
accuracy is the fraction of queries; *macro* is the mean per-class recall over the classes present
among the queries, so rare species weigh as much as common ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from clibd_cli.sequences import RANKS

DEFAULT_KS = (1, 3, 5)


def nearest_keys(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices [n_queries, k] of the k nearest keys by inner product (cosine on normalised vectors)."""
    from clibd_cli.search import exact_knn

    return exact_knn(queries, keys, min(k, len(keys)))[0]


def micro_macro(correct: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    """(micro, macro) accuracy of boolean `correct` with per-query true `labels`."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        return float("nan"), float("nan")
    labels = np.asarray(labels, dtype=object)
    classes, inverse = np.unique(labels.astype(str), return_inverse=True)
    per_class = np.bincount(inverse, weights=correct, minlength=len(classes)) / np.bincount(inverse)
    return float(correct.mean()), float(per_class.mean())


def topk_accuracy(neighbours: np.ndarray, query_labels: Mapping[str, Sequence[str]],
                  key_labels: Mapping[str, Sequence[str]], ks: Sequence[int] = DEFAULT_KS,
                  ranks: Sequence[str] = RANKS) -> dict[str, dict[str, float]]:
    """Micro/macro top-k accuracy per rank from precomputed neighbour indices.

    Queries whose label at a rank is unknown ('') are left out at that rank.
    Returns ``{rank: {"micro_top1": …, "macro_top1": …, …, "n": count}}``.
    """
    result: dict[str, dict[str, float]] = {}
    for rank in ranks:
        truth = np.asarray(query_labels[rank], dtype=object)
        known = truth != ""
        predicted = np.asarray(key_labels[rank], dtype=object)[neighbours[known]]
        metrics: dict[str, float] = {"n": int(known.sum())}
        for k in ks:
            hit = (predicted[:, :k] == truth[known][:, None]).any(axis=1)
            metrics[f"micro_top{k}"], metrics[f"macro_top{k}"] = micro_macro(hit, truth[known])
        result[rank] = metrics
    return result


def knn_accuracy(queries: np.ndarray, keys: np.ndarray, query_labels: Mapping[str, Sequence[str]],
                 key_labels: Mapping[str, Sequence[str]], ks: Sequence[int] = DEFAULT_KS,
                 ranks: Sequence[str] = RANKS) -> dict[str, dict[str, float]]:
    """Exact cosine kNN of queries against keys, then :func:`topk_accuracy`."""
    neighbours = nearest_keys(queries, keys, max(ks))
    return topk_accuracy(neighbours, query_labels, key_labels, ks, ranks)


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of seen and unseen accuracy, as the paper reports (0 if either is 0)."""
    if not (a > 0 and b > 0):
        return 0.0
    return 2 * a * b / (a + b)
