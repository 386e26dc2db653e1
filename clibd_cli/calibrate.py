"""Fit per-rank thresholds that reach a target precision, including on species absent from the reference.

Thresholds are only honest if the calibration queries look like field data, where some specimens
belong to species nobody has barcoded yet.  With labelled queries (which should include such
species) their calls are scored directly.  Without them, the reference calibrates itself by
leave-species-out: part of a seeded sample of reference records is searched with only itself
removed (its species is still present), the rest with every record of its species removed (its
species is absent, as for a new species in the field).  The share of such "absent" queries,
``novel_share``, is an assumption about the field: 0.25 (a quarter of specimens belong to species
missing from the reference) by default.  Precision depends on it: a higher share gives stricter
species thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clibd_cli.assign import DEFAULT_TAU, assign_batch
from clibd_cli.index import ReferenceIndex, exact_knn
from clibd_cli.sequences import RANKS

DEFAULT_PRECISION = 0.95
DEFAULT_NOVEL_SHARE = 0.25
MIN_CALLS = 20
MIN_WRONG = 5
NEVER = 1.01  # a cosine threshold no hit can reach


@dataclass
class Calibration:
    """Thresholds and how they were obtained (stored in index.json)."""

    thresholds: dict[str, float]
    report: dict


def threshold_for_precision(scores: np.ndarray, correct: np.ndarray, target: float,
                            min_calls: int = MIN_CALLS) -> tuple[float, float, float]:
    """Lowest score threshold whose calls reach `target` precision, with ≥ `min_calls` calls.

    Returns (threshold, precision, coverage); threshold is :data:`NEVER` when no cut reaches it.
    """
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(np.float64)
    precision = np.cumsum(c) / np.arange(1, len(c) + 1)
    # Only cut between distinct scores: every query with score ≥ threshold is called.
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = (precision >= target) & last_of_value & (np.arange(1, len(c) + 1) >= min_calls)
    if not ok.any():
        return NEVER, float("nan"), 0.0
    j = int(np.flatnonzero(ok)[-1])
    return float(s[j]), float(precision[j]), float((j + 1) / len(c))


def fit_thresholds(scores: dict[str, np.ndarray], correct: dict[str, np.ndarray], target: float,
                   defaults: dict[str, float] | None = None) -> Calibration:
    """Per-rank thresholds, made monotone (order ≤ family ≤ genus ≤ species) so calls nest.

    A rank whose calibration calls are (almost) never wrong, e.g. genus in a reference of one genus,
    says nothing about where wrong calls begin: there the encoder's default threshold (measured on a
    diverse reference) is kept as a floor instead of trusting a threshold fitted without negatives.
    """
    defaults = defaults or {}
    thresholds: dict[str, float] = {}
    report: dict = {"target_precision": target, "ranks": {}}
    for rank in RANKS:
        t, p, cov = threshold_for_precision(scores[rank], correct[rank], target)
        wrong = int(((scores[rank] > 0) & ~correct[rank]).sum())
        entry = {"threshold": t, "precision": p, "coverage": cov, "wrong_calls_seen": wrong}
        if wrong < MIN_WRONG and rank in defaults:
            t = max(t, defaults[rank]) if t < NEVER else defaults[rank]
            entry.update(threshold=t, note="too few wrong calls to calibrate; encoder default used as floor")
        thresholds[rank] = t
        report["ranks"][rank] = entry
    for higher, lower in zip(reversed(RANKS[:-1]), reversed(RANKS[1:]), strict=True):
        thresholds[higher] = min(thresholds[higher], thresholds[lower])
    return Calibration({rank: round(v, 6) for rank, v in thresholds.items()}, report)


def score_queries(similarities: np.ndarray, hit_taxonomy: dict[str, np.ndarray],
                  truth: dict[str, Sequence[str]], tau: float = DEFAULT_TAU,
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-rank score and correctness of the winning label for each query."""
    assignments = assign_batch(similarities, hit_taxonomy, {}, tau)
    scores = {rank: np.array([a.calls[rank].score for a in assignments]) for rank in RANKS}
    return scores, correct_calls(assignments, truth)


def correct_calls(assignments, truth: dict[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Per rank, whether each query's winning label (called or not) is its true label."""
    return {rank: np.array([bool(a.calls[rank].label) and a.calls[rank].label == truth[rank][i]
                            for i, a in enumerate(assignments)], dtype=bool) for rank in RANKS}


def calibrate_leave_species_out(index: ReferenceIndex, *, target: float = DEFAULT_PRECISION, k: int = 10,
                                sample: int = 1000, seed: int = 0, tau: float = DEFAULT_TAU,
                                novel_share: float = DEFAULT_NOVEL_SHARE) -> Calibration:
    """Self-calibration from the reference alone (see the module docstring)."""
    return calibrate_held_out(index, index.vectors(), index.labels.record_id, index.labels.ranks, target=target,
                              k=k, sample=sample, seed=seed, tau=tau, novel_share=novel_share,
                              query_rows=index.labels.vector)


def calibrate_held_out(index: ReferenceIndex, query_vectors: np.ndarray, query_ids: Sequence[str],
                       truth: dict[str, Sequence[str]], *, target: float = DEFAULT_PRECISION, k: int = 10,
                       sample: int = 1000, seed: int = 0, tau: float = DEFAULT_TAU,
                       novel_share: float = DEFAULT_NOVEL_SHARE, query_rows: np.ndarray | None = None,
                       ) -> Calibration:
    """Leave-species-out with labelled query vectors, which may be of another modality than the index.

    A query never sees the reference records of its own specimen (same record id: itself in the same
    modality, its own barcode for a photo): in the field a specimen is not in the library yet.  Of a
    seeded sample, ``novel_share`` also lose every record of their species.  Photos of reference
    specimens calibrate photo → barcode thresholds this way, on the scale of cross-modal cosines.
    ``query_rows`` maps query i to its row of ``query_vectors`` (records sharing one vector).
    """
    species = np.asarray(truth["species"], dtype=object)
    labelled = np.flatnonzero(species != "")
    if len(labelled) < 2 * MIN_CALLS or index.size < 2:
        raise ValueError("too few labelled references to calibrate")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(labelled, size=min(sample, len(labelled)), replace=False)
    absent = np.zeros(len(chosen), dtype=bool)
    absent[: round(len(chosen) * novel_share)] = True
    ids = np.asarray(query_ids, dtype=object)[chosen]
    reference_species = index.labels.ranks["species"]
    exclude = ids[:, None] == index.labels.record_id[None, :]
    exclude[absent] |= species[chosen[absent]][:, None] == reference_species[None, :]
    rows = chosen if query_rows is None else np.asarray(query_rows)[chosen]
    neighbours, sims = exact_knn(np.asarray(query_vectors)[rows], index.vectors(), min(k, index.size - 1),
                                 exclude=exclude, columns=index.labels.vector)
    sims[~np.isfinite(sims)] = -np.inf
    hit_taxonomy = index.taxonomy_of(np.where(np.isfinite(sims), neighbours + 1, -1))
    chosen_truth = {rank: np.asarray(truth[rank], dtype=object)[chosen] for rank in RANKS}
    scores, correct = score_queries(sims, hit_taxonomy, chosen_truth, tau)
    calibration = fit_thresholds(scores, correct, target, index.encoder_defaults())
    calibration.report.update({"method": "leave-species-out", "queries": len(chosen),
                               "absent_species_queries": int(absent.sum()), "novel_share": novel_share, "k": k,
                               "seed": seed})
    return calibration


def calibrate_with_queries(index: ReferenceIndex, query_vectors: np.ndarray, truth: dict[str, Sequence[str]],
                           *, target: float = DEFAULT_PRECISION, k: int = 10, exact: bool | None = None,
                           tau: float = DEFAULT_TAU) -> Calibration:
    """Calibration from labelled queries (which should include species absent from the reference)."""
    result = index.search(query_vectors, k, exact=exact)
    scores, correct = score_queries(result.similarities, index.taxonomy_of(result.labels), truth, tau)
    known = set(index.labels.ranks["species"])
    calibration = fit_thresholds(scores, correct, target, index.encoder_defaults())
    calibration.report.update({"method": "labelled queries", "queries": len(query_vectors),
                               "absent_species_queries": int(sum(s not in known for s in truth["species"])),
                               "k": k})
    return calibration
