"""From k nearest references to a per-rank identification.  Pure numpy, no I/O.

At each rank, hits vote for their full lineage (``order|family|genus`` for genus, so homonyms in
different families never pool) with weights ``exp((s_i - s_1) / tau)``: the closest hits dominate,
and a distant 10th neighbour cannot outvote a near-identical first one.  The winning lineage's
score is ``best similarity within the lineage - DISSENT_PENALTY × (share of the vote against it)``:
equal to the cosine when all hits agree, lower when close hits disagree, so one calibrated threshold
per rank controls both "too far" and "ambiguous".  (A product ``best × share`` was measured too: it
ranks a 0.99 hit with 20 % dissent below a lone 0.93 hit of a species missing from the reference,
and cost 0.3 points of species accuracy on real BOLD data at the same rate of wrong names.)  The
call is the lowest rank whose score passes its threshold; ranks above it come from the same
lineage, so a call is always taxonomically consistent.  A barcode call may also be made below its
threshold by a *lead rule*: from a lower threshold when the winner's best hit is far enough above the best
verified candidate, and the nearest reference, of any other taxon at that rank (:attr:`RankCall.lead`,
:class:`LeadRule`, :func:`clibd_cli.match.assign_verified`, :mod:`clibd_cli.rivals`), which the ten voting
records, often copies of one haplotype, cannot show; a rule may also require the winner to lie within its
taxon's spread in the reference (:attr:`RankCall.spread`: no farther from the genus than its own species are
from each other).  For
barcodes a column is a taxon behind a reference barcode, voting with its share of the ten records
(:func:`clibd_cli.match.verified_hits`): records of several taxa sharing one barcode all vote, in proportion,
whichever of them the file lists first.

Statuses:
* ``assigned``: species called;
* ``novel_candidate``: no species called because even the closest reference is below the species
  threshold, yet a genus or family is called: likely a species missing from the reference;
* ``rolled_up``: called at a higher rank only (species ambiguous among close references, or only
  the order is called);
* ``no_match``: nothing passes any threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from clibd_cli.sequences import RANKS

DEFAULT_TAU = 0.02
DISSENT_PENALTY = 0.2  # measured on bold_insect_coi_dev: 0.1-0.3 within 0.05 points
STATUSES = ("assigned", "rolled_up", "novel_candidate", "no_match")
SPREAD_RANKS = ("family", "genus")  # ranks whose taxa have a spread (RankCall.spread)


class LeadRule(NamedTuple):
    """A second way to call a rank: from ``threshold`` (below the rank's own) when the winner leads every
    other taxon at that rank by at least ``lead`` (identity, fraction).  Fitted by
    :func:`clibd_cli.calibrate.calibrate_open_set`."""

    lead: float
    threshold: float
    within_spread: bool = False
    """Only where the winner's score also reaches its taxon's spread in the reference (:attr:`RankCall.spread`):
    a query no farther from the taxon than the taxon's own members are from each other."""

    def makes(self, call: RankCall) -> bool:
        """Whether this rule calls ``call`` (whatever the rank's own threshold says)."""
        return call.lead >= self.lead and call.score >= self.threshold and \
            (not self.within_spread or call.score >= call.spread)

    def as_info(self, digits: int | None = None) -> dict:
        """As index.json and an output's ``info`` hold it (``within_spread`` only where set, as older readers
        expect), rounded to ``digits`` if given."""
        lead, threshold = (float(self.lead), float(self.threshold)) if digits is None else \
            (round(float(self.lead), digits), round(float(self.threshold), digits))
        return {"lead": lead, "threshold": threshold, **({"within_spread": True} if self.within_spread else {})}


@dataclass
class RankCall:
    """The winning label at one rank, its score and how many hits back it."""

    label: str
    lineage: tuple[str, ...]
    score: float
    support: int
    best_hit: int  # column of the best hit in this lineage, -1 if none
    lead: float = float("inf")
    """How far the lineage's best hit is above the best hit of any other lineage at this rank, among every
    verified candidate (barcodes, :func:`clibd_cli.match.assign_verified`) and, where a lead rule would make the
    call, among the nearest references of other taxa beyond them (:mod:`clibd_cli.rivals`); infinite when none
    is known."""
    spread: float = float("inf")
    """The lowest identity between members of the winning taxon that belong to different taxa one rank below
    (species of a genus, genera of a family), sampled in the reference (:meth:`ReferenceIndex.spreads`);
    infinite when unknown (a genus of one species shows no spread)."""


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


def lineage_codes(taxonomy: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An integer per (item, rank) naming its lineage down to that rank; -1 where that rank is unknown.

    Comparing integers instead of label tuples makes batch assignment a few numpy operations, and
    lineages (not bare names) keep homonyms in different families apart.  Codes number the lineages in
    the order of their label tuples.  Built rank by rank from (parent lineage, label) pairs of integers:
    joining the labels into one fixed-width string per item took 0.9 GB for a million references.
    """
    codes: dict[str, np.ndarray] = {}
    parent: np.ndarray | None = None
    for rank in RANKS:
        labels = np.asarray(taxonomy[rank], dtype=object)
        flat = labels.ravel()
        if flat.size == 0:
            codes[rank] = np.zeros(labels.shape, dtype=np.int64)
            continue
        names, label = np.unique(flat, return_inverse=True)  # sorted names; "" (unknown) first
        key = label.astype(np.int64) if parent is None else parent * len(names) + label
        _, prefix = np.unique(key, return_inverse=True)
        parent = prefix.astype(np.int64).ravel()
        code = parent.reshape(labels.shape).copy()
        code[labels == ""] = -1
        codes[rank] = code
    return codes


def _batch_calls(similarities: np.ndarray, codes: dict[str, np.ndarray], tau: float,
                 votes: np.ndarray | None = None, records: np.ndarray | None = None,
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per rank: (winning hit column or -1, score, support, best hit column) for a [n, k] batch.

    ``votes``: how many votes each column casts (default 1), ``records``: how many records it stands for in
    the support (default 1); see :func:`batch_rank_calls`."""
    sims = np.asarray(similarities, dtype=np.float64)
    valid = np.isfinite(sims)
    safe = np.where(valid, sims, -np.inf)
    top = np.where(valid.any(axis=1), safe.max(axis=1, initial=-np.inf), 0.0)
    weights = np.where(valid, np.exp((np.where(valid, sims, 0.0) - top[:, None]) / tau), 0.0)
    if votes is not None:
        weights = weights * votes
    records = np.ones(sims.shape, dtype=np.int64) if records is None else records
    rows = np.arange(len(sims))
    out = {}
    for rank in RANKS:
        code = codes[rank]
        voting = valid & (code >= 0)
        same = (code[:, :, None] == code[:, None, :]) & voting[:, :, None] & voting[:, None, :]
        vote = (same * weights[:, None, :]).sum(axis=2)
        best = np.where(same, safe[:, None, :], -np.inf).max(axis=2, initial=-np.inf)
        total = (weights * voting).sum(axis=1)
        leading = voting & (vote >= vote.max(axis=1, initial=0.0)[:, None] * (1 - 1e-9))
        winner = np.where(leading, best, -np.inf).argmax(axis=1)
        has = voting.any(axis=1)
        share = np.divide(vote[rows, winner], total, out=np.zeros(len(sims)), where=total > 0)
        score = np.where(has, best[rows, winner] - DISSENT_PENALTY * (1.0 - share), 0.0)
        members = same[rows, winner]
        out[rank] = (np.where(has, winner, -1), score, (members * records).sum(axis=1),
                     np.where(has, members.argmax(axis=1), -1))
    return out


def assign_batch(similarities: np.ndarray, taxonomy: dict[str, np.ndarray], thresholds: dict[str, float],
                 tau: float = DEFAULT_TAU, codes: dict[str, np.ndarray] | None = None) -> list[Assignment]:
    """Identify each row of a [n_queries, k] similarity matrix (hits sorted by decreasing similarity).

    `taxonomy[rank][i][j]` is hit j's label for query i ('' = unknown: that hit abstains at that
    rank); `codes` may pass precomputed :func:`lineage_codes` of the same hits.
    """
    similarities = np.atleast_2d(np.asarray(similarities, dtype=np.float64))
    return [decide(sims, calls, thresholds)
            for sims, calls in zip(similarities, batch_rank_calls(similarities, taxonomy, tau, codes), strict=True)]


def batch_rank_calls(similarities: np.ndarray, taxonomy: dict[str, np.ndarray], tau: float = DEFAULT_TAU,
                     codes: dict[str, np.ndarray] | None = None, votes: np.ndarray | None = None,
                     records: np.ndarray | None = None) -> list[dict[str, RankCall]]:
    """The winning lineage per rank of each row of a [n_queries, k] similarity matrix, before any threshold
    (:func:`decide` makes the call); arguments as :func:`assign_batch`.

    A column may stand for several records of one taxon (a barcode shared by many records): ``votes`` [n, k]
    is its share of the vote (default 1), ``records`` [n, k] how many records it adds to the support."""
    similarities = np.atleast_2d(np.asarray(similarities, dtype=np.float64))
    taxonomy = {rank: np.asarray(taxonomy[rank], dtype=object).reshape(similarities.shape) for rank in RANKS}
    batch = _batch_calls(similarities, codes if codes is not None else lineage_codes(taxonomy), tau, votes, records)
    results = []
    for i in range(len(similarities)):
        calls = {}
        for depth, rank in enumerate(RANKS):
            winner, score, support, best_hit = (int(batch[rank][0][i]), float(batch[rank][1][i]),
                                                int(batch[rank][2][i]), int(batch[rank][3][i]))
            if winner < 0:
                calls[rank] = RankCall("", (), 0.0, 0, -1)
                continue
            lineage = tuple(taxonomy[r][i][winner] for r in RANKS[: depth + 1])
            calls[rank] = RankCall(lineage[-1], lineage, score, support, best_hit)
        results.append(calls)
    return results


def decide(sims: np.ndarray, calls: dict[str, RankCall], thresholds: dict[str, float],
           leads: Mapping[str, LeadRule] | None = None) -> Assignment:
    """Status and labels from the per-rank calls (see the module docstring); ``leads``: the ranks' lead rules."""
    leads = leads or {}

    def passes(rank: str) -> bool:
        call, rule = calls[rank], leads.get(rank)
        return bool(call.label) and (call.score >= thresholds.get(rank, 1.0) or (rule is not None and rule.makes(call)))

    species_threshold = thresholds.get("species", 1.0)
    has_top = sims.size > 0 and np.isfinite(sims[0])
    top_similarity = float(sims[0]) if has_top else float("nan")
    top_hit = 0 if has_top else -1
    scores = {rank: calls[rank].score for rank in RANKS}
    called = next((rank for rank in reversed(RANKS) if passes(rank)), "")
    labels = dict.fromkeys(RANKS, "")
    if not called:
        return Assignment("no_match", "", labels, scores, 0, top_hit, top_similarity, calls)
    labels.update(zip(RANKS, calls[called].lineage, strict=False))
    if called == "species":
        status = "assigned"
    elif called in ("genus", "family") and top_similarity < species_threshold <= 1.0:
        # A species threshold above any cosine (calibration never reached the target precision) says
        # nothing about novelty: such calls are plain roll-ups.
        status = "novel_candidate"
    else:
        status = "rolled_up"
    return Assignment(status, called, labels, scores, calls[called].support, top_hit, top_similarity, calls)


def rank_calls(similarities: np.ndarray, taxonomy: dict[str, list[str]], tau: float = DEFAULT_TAU,
               ) -> dict[str, RankCall]:
    """Winning lineage per rank for one query's hits (sorted by decreasing similarity)."""
    return assign(similarities, taxonomy, {}, tau).calls


def assign(similarities: np.ndarray, taxonomy: dict[str, list[str]], thresholds: dict[str, float],
           tau: float = DEFAULT_TAU) -> Assignment:
    """Identify one query from its hits; see the module docstring for the rules."""
    sims = np.asarray(similarities, dtype=np.float64)[None, :]
    return assign_batch(sims, {rank: [list(taxonomy[rank])] for rank in RANKS}, thresholds, tau)[0]
