"""How far a call leads: the nearest references of *other* taxa, searched for beyond the candidates.

A lead rule (:class:`clibd_cli.assign.LeadRule`) calls a family or genus below its threshold when the winner's
best hit is far enough above the best hit of any other taxon at that rank.  Measured among a query's candidates
alone, that lead is often unknown: the 64 nearest profiles of a query from a large genus may all belong to that
genus, and so may those of a query whose own genus is missing from the reference and whose nearest genus is
large.  Both showed an "infinite" lead.  Leaving species and genera out of real BOLD references (the calibration
sets of :func:`clibd_cli.calibrate.calibrate_open_set`), between 88 and 90 % identity 69 % of the queries of
missing genera led by ≥ 2 points among their candidates, against 16 % once the nearest references of other
genera were searched for and aligned; for queries of genera present, 51 % kept such a lead.

So wherever a lead can decide a call, the :data:`RIVALS` nearest reference barcodes (by profile) that hold a record
of another taxon at that rank are found (:meth:`ReferenceIndex.search_allowed`) and aligned, and the lead is
measured against the closest of them as well.  A fragment's profile says little about the barcodes it lies in, so
its rivals are also looked for among the references sharing the most words with it, as its candidates are
(:mod:`clibd_cli.anchors`): by profile alone, 86 Leray reads of one missing species of the benchmark's split case
were called Crambidae at 90.7 % while a barcode of another family lay 91.5 % from them.  Calibration measures every
lead this way (exactly, its left-out records excluded), :func:`clibd_cli.match.assign_verified` only the one lead that
would make a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from clibd_cli.verifier import verify_vectors

if TYPE_CHECKING:
    from clibd_cli.assign import RankCall
    from clibd_cli.index import ReferenceIndex
    from clibd_cli.match import VerifiedHits

RIVAL_RANKS = ("family", "genus")
RIVALS = 16  # nearest barcodes of other taxa found per lead measured
RIVALS_ALIGNED = 5  # of them aligned in full, the closest by their diagonal first (as candidates are)
WORD_POOL = 64  # a fragment's references sharing the most words, among which its rivals are looked for too
RIVAL_EF = 64  # graph search breadth: 99.9 % of the exact nearest 16 on real BOLD, 4x faster than 128


class OtherTaxon:
    """Which distinct reference vectors hold a record of a taxon other than ``code`` at a rank (and not left out):
    a filter for :meth:`ReferenceIndex.search_allowed`, per vector (graph search) or as a mask (exact scan).

    ``low`` / ``high``: per vector, the lowest and highest lineage code among its labelled records (-1: none).
    ``recheck``: vectors holding left-out records, with whether they still qualify without them."""

    def __init__(self, low: np.ndarray, high: np.ndarray, code: int, recheck: dict[int, bool] | None = None) -> None:
        self.low, self.high, self.code, self.recheck = low, high, code, recheck or {}

    def __call__(self, vector: int) -> bool:
        if vector in self.recheck:
            return self.recheck[vector]
        low = self.low[vector]
        return bool(low >= 0 and (low != self.code or self.high[vector] != self.code))

    def mask(self) -> np.ndarray:
        ok = (self.low >= 0) & ((self.low != self.code) | (self.high != self.code))
        for vector, allowed in self.recheck.items():
            ok[vector] = allowed
        return ok


class Rivals:
    """Finds and aligns the nearest references of other taxa than a call's (see the module docstring)."""

    def __init__(self, index: ReferenceIndex) -> None:
        self.index = index
        self._bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def bounds(self, rank: str) -> tuple[np.ndarray, np.ndarray]:
        """Per distinct vector, the lowest and highest lineage code at ``rank`` of its labelled records (-1, -1
        where none is labelled); computed on first use."""
        if rank not in self._bounds:
            codes, vector_of = self.index.lineage_codes()[rank], self.index.labels.vector
            labelled = codes >= 0
            n = self.index.spec.counts.vectors
            low = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
            high = np.full(n, -1, dtype=np.int64)
            np.minimum.at(low, vector_of[labelled], codes[labelled])
            np.maximum.at(high, vector_of[labelled], codes[labelled])
            low[high < 0] = -1
            self._bounds[rank] = (low, high)
        return self._bounds[rank]

    def code(self, hits: VerifiedHits, call: RankCall, rank: str) -> int:
        """The lineage code at ``rank`` (:meth:`ReferenceIndex.lineage_codes`) of a call on ``hits``."""
        return int(self.index.lineage_codes()[rank][hits.taxa[call.best_hit]])

    def allowed(self, rank: str, code: int, left_out: np.ndarray | None = None) -> OtherTaxon:
        """The distinct vectors holding a record of a taxon other than ``code`` at ``rank``, not counting the record
        rows ``left_out`` (leave-out calibration)."""
        low, high = self.bounds(rank)
        recheck = None
        if left_out is not None and len(left_out):
            codes, vector_of = self.index.lineage_codes()[rank], self.index.labels.vector
            gone = np.zeros(len(vector_of), dtype=bool)
            gone[left_out] = True
            recheck = {}
            for v in np.unique(vector_of[left_out]).tolist():
                members = self.index.members(v)
                kept = codes[members[~gone[members]]]
                recheck[v] = bool(((kept >= 0) & (kept != code)).any())
        return OtherTaxon(low, high, code, recheck)

    def nearest(self, vector: np.ndarray, rank: str, code: int, words: np.ndarray | None = None) -> np.ndarray:
        """The :data:`RIVALS` distinct reference vectors nearest ``vector`` (a query's embedding) that hold a record
        of a taxon other than ``code`` at ``rank`` (:meth:`ReferenceIndex.search_allowed`); for a fragment also the
        first :data:`RIVALS` such vectors among ``words``, the :data:`WORD_POOL` references sharing the most words
        with it."""
        allowed = self.allowed(rank, code)
        found = self.index.search_allowed(vector, RIVALS, allowed, ef=RIVAL_EF)
        if words is not None:
            words = words[[allowed(v) for v in words.tolist()]][:RIVALS] if len(words) else words
            found = np.union1d(found, words)
        return found

    def lead(self, hits: VerifiedHits, call: RankCall, rank: str, vector: np.ndarray,
             words: np.ndarray | None = None) -> float:
        """``call``'s lead at ``rank`` over every other taxon: among the candidates (``call.lead``) and among the
        nearest references of other taxa (the query's embedding ``vector``, a fragment's ``words``: :meth:`nearest`)."""
        rivals = self.nearest(vector, rank, self.code(hits, call, rank), words)
        found = verify_vectors(self.index, hits.query, rivals, RIVALS_ALIGNED) if len(rivals) else []
        return lead_over(hits, call, found)


def lead_over(hits: VerifiedHits, call: RankCall, found: Sequence) -> float:
    """``call``'s lead among the candidates, or over the best of the rivals' alignments ``found`` where that is
    smaller (alignments that cover too little of the shorter sequence do not count)."""
    from clibd_cli.match import MIN_COVERAGE

    rival = max((a.identity for a in found if a is not None and a.coverage >= MIN_COVERAGE), default=0.0)
    return min(call.lead, float(hits.taxon_identity[call.best_hit]) - rival)
