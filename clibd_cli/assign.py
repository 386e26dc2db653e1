"""From k nearest references to a per-rank identification.  Pure numpy, no I/O.

At each rank, hits vote for their full lineage (``order|family|genus`` for genus, so homonyms in
different families never pool) with weights ``exp((s_i - s_1) / tau)``: the closest hits dominate,
and a distant 10th neighbour cannot outvote a near-identical first one.  The winning lineage's
score is ``best similarity within the lineage × its share of the vote``: equal to the cosine when
all hits agree, lower when they disagree, so one calibrated threshold per rank controls both
"too far" and "ambiguous".  The call is the lowest rank whose score passes its threshold; ranks
above it come from the same lineage, so a call is always taxonomically consistent.

Statuses:
* ``assigned``: species called;
* ``novel_candidate``: no species called because even the closest reference is below the species
  threshold, yet a genus or family is called: likely a species missing from the reference;
* ``rolled_up``: called at a higher rank only (species ambiguous among close references, or only
  the order is called);
* ``no_match``: nothing passes any threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clibd_cli.sequences import RANKS

DEFAULT_TAU = 0.02
STATUSES = ("assigned", "rolled_up", "novel_candidate", "no_match")


@dataclass
class RankCall:
    """The winning label at one rank, its score and how many hits back it."""

    label: str
    lineage: tuple[str, ...]
    score: float
    support: int
    best_hit: int  # column of the best hit in this lineage, -1 if none


@dataclass
class Assignment:
    """One query's identification."""

    status: str
    rank: str
    labels: dict[str, str]
    scores: dict[str, float]
    support: int
    top_hit: int  # column of the top hit, -1 if none
    top_similarity: float
    calls: dict[str, RankCall] = field(default_factory=dict)


def rank_calls(similarities: np.ndarray, taxonomy: dict[str, list[str]], tau: float = DEFAULT_TAU,
               ) -> dict[str, RankCall]:
    """Winning lineage per rank for one query's hits (sorted by decreasing similarity).

    `taxonomy[rank][j]` is hit j's label at `rank` ('' = unknown: that hit abstains at that rank).
    """
    valid = np.isfinite(similarities)
    calls: dict[str, RankCall] = {}
    if not valid.any():
        return {rank: RankCall("", (), 0.0, 0, -1) for rank in RANKS}
    sims = similarities[valid]
    weights = np.exp((sims - sims.max()) / tau)
    columns = np.flatnonzero(valid)
    lineages = [tuple(taxonomy[rank][j] for rank in RANKS) for j in columns]
    for depth, rank in enumerate(RANKS):
        votes: dict[tuple[str, ...], list] = {}
        total = 0.0
        for i, lineage in enumerate(lineages):
            if not lineage[depth]:
                continue
            key = lineage[: depth + 1]
            total += weights[i]
            entry = votes.setdefault(key, [0.0, -np.inf, 0, -1])
            entry[0] += weights[i]
            entry[2] += 1
            if sims[i] > entry[1]:
                entry[1], entry[3] = sims[i], columns[i]
        if not votes:
            calls[rank] = RankCall("", (), 0.0, 0, -1)
            continue
        key, (vote, best, support, best_hit) = max(votes.items(), key=lambda kv: (kv[1][0], kv[1][1]))
        calls[rank] = RankCall(key[-1], key, float(best * vote / total), support, int(best_hit))
    return calls


def assign(similarities: np.ndarray, taxonomy: dict[str, list[str]], thresholds: dict[str, float],
           tau: float = DEFAULT_TAU) -> Assignment:
    """Identify one query from its hits; see the module docstring for the rules."""
    calls = rank_calls(similarities, taxonomy, tau)
    finite = np.isfinite(similarities)
    top_similarity = float(similarities[0]) if finite.size and finite[0] else float("nan")
    top_hit = 0 if finite.size and finite[0] else -1
    scores = {rank: calls[rank].score for rank in RANKS}
    called = next((rank for rank in reversed(RANKS)
                   if calls[rank].label and calls[rank].score >= thresholds.get(rank, 1.0)), "")
    labels = dict.fromkeys(RANKS, "")
    if not called:
        return Assignment("no_match", "", labels, scores, 0, top_hit, top_similarity, calls)
    lineage = calls[called].lineage
    labels.update(zip(RANKS, lineage, strict=False))
    if called == "species":
        status = "assigned"
    elif called in ("genus", "family") and top_similarity < thresholds.get("species", 1.0):
        status = "novel_candidate"
    else:
        status = "rolled_up"
    return Assignment(status, called, labels, scores, calls[called].support, top_hit, top_similarity, calls)


def assign_batch(similarities: np.ndarray, taxonomy: dict[str, np.ndarray], thresholds: dict[str, float],
                 tau: float = DEFAULT_TAU) -> list[Assignment]:
    """:func:`assign` for each row of a [n_queries, k] similarity matrix."""
    return [assign(similarities[i], {rank: taxonomy[rank][i] for rank in RANKS}, thresholds, tau)
            for i in range(len(similarities))]
