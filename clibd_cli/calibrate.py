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

:func:`calibrate_index` is the `clibd calibrate` workflow for any caller: it refits an index folder's
stored thresholds (barcodes from the reference itself or labelled queries, or photo queries from
labelled photos) under the folder's write lock.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clibd_cli.assign import DEFAULT_TAU, LeadRule, assign_batch
from clibd_cli.errors import ClibdError
from clibd_cli.index import ReferenceIndex
from clibd_cli.rivals import RIVAL_RANKS, RIVALS, RIVALS_ALIGNED, Rivals, lead_over
from clibd_cli.search import exact_knn
from clibd_cli.sequences import RANKS
from clibd_cli.workflow import Listener, Notes, Progress, ReadOptions, as_notes, no_progress

if TYPE_CHECKING:
    from clibd_cli.assign import Assignment
    from clibd_cli.bundle import ModelBundle
    from clibd_cli.match import ShortReads, VerifiedHits
    from clibd_cli.verifier import Verifier

DEFAULT_PRECISION = 0.95
DEFAULT_NOVEL_SHARE = 0.25
MIN_CALLS = 20
MIN_WRONG = 5
NEVER = 1.01  # a cosine threshold no hit can reach
UNCALIBRATED_BELOW = -1.0  # thresholds under this (clibd_cli.classify.UNCALIBRATED) mean "not calibrated"
WILSON_Z = 1.0  # one-sided ~84 % upper confidence limit on a calibration set's wrong-call rate
OPEN_SET_SAMPLE = 1000  # taxa per leave-out level (barcodes)
SPREAD_PAIRS = 30  # member pairs aligned per taxon to find its spread (taxon_spreads)
# Short reads (metabarcoding amplicons, degraded DNA): thresholds fitted on 100, 150 and 200 bp stretches of
# the calibration queries serve, above species, queries whose top hit overlaps fewer than 125, 175 and 300
# columns (:func:`calibrate_barcode_part`): each read is called with the set of the window nearest its
# overlap.  (A 313 bp Leray read keeps the whole-barcode thresholds: its wrong calls were already within the
# limits.)  Overlaps under 100 columns support no call (clibd_cli.match.MIN_CALL_OVERLAP).
SHORT_READ_WINDOWS = (100, 150, 200)
SHORT_READ_OVERLAP = 300


@dataclass
class Calibration:
    """Thresholds and how they were obtained (stored in index.json)."""

    thresholds: dict[str, float]
    report: dict
    leads: dict[str, LeadRule] = field(default_factory=dict)
    """Barcodes (open set): per rank, the lower threshold a call far enough ahead of any other taxon needs."""
    short_reads: tuple[ShortReads, ...] = ()
    """Barcodes: the thresholds (and lead rules) for short reads fitted with these, as stored, shortest overlap
    first (:func:`calibrate_barcode_part`)."""


def describe_threshold(threshold: float, *, short: bool = False) -> str:
    """A threshold as a person reads it.  The numbers that stand for a rule (:data:`NEVER`: no threshold
    reaches the target precision; -2: photo thresholds never calibrated, every rank called) read as words;
    ``short`` leaves out the reason in brackets (a table cell whose caption gives it)."""
    if threshold >= NEVER:
        return "never" if short else "never (no threshold reaches the target precision)"
    if threshold < UNCALIBRATED_BELOW:
        return "not calibrated" if short else "not calibrated (every rank is called)"
    return f"{threshold:.3f}"


def applied_thresholds(info: Mapping[str, Any], row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The threshold set a row of a `match` or `classify` output was called with, from the run's ``info``:
    classify's set for the row's reference modality (``against``), match's short-read set where the top
    hit overlapped fewer columns than it applies below; {} when the info has none.  Values as recorded."""
    table = info.get("thresholds")
    if not isinstance(table, Mapping):
        return {}
    against = row.get("against")
    if against and isinstance(table.get(against), Mapping):
        table = table[against]
    short = _short_read_set(info, row)
    return short["thresholds"] if short is not None else table


def applied_lead_rules(info: Mapping[str, Any], row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The lead rules (rank → {"lead", "threshold"}) a `match` row was called with, from the run's ``info``
    (short reads: the short-read set's); {} when none."""
    short = _short_read_set(info, row)
    rules = short.get("leads") if short is not None else info.get("leads")
    return rules if isinstance(rules, Mapping) else {}


def _short_read_set(info: Mapping[str, Any], row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``info``'s short-read set that applied to ``row``: of those whose bound its top hit's overlap is under,
    the lowest bound's.  ``info`` holds a list of sets (one, a mapping, in outputs written before there were
    several)."""
    short = info.get("short_read_thresholds")
    sets = [short] if isinstance(short, Mapping) else short if isinstance(short, list) else []
    overlap = _finite(row.get("overlap"))
    if overlap is None:
        return None
    bounded = [(below, s) for s in sets if isinstance(s, Mapping) and isinstance(s.get("thresholds"), Mapping)
               and (below := _finite(s.get("below_overlap"))) is not None]
    return next((s for below, s in sorted(bounded, key=lambda pair: pair[0]) if overlap < below), None)


def _finite(value: Any) -> float | None:
    """A cell (number or CSV text) as a finite float, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


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


def _nested(thresholds: dict[str, float], report: dict) -> Calibration:
    """Thresholds made monotone (order ≤ family ≤ genus ≤ species) so calls nest, rounded for index.json."""
    for higher, lower in zip(reversed(RANKS[:-1]), reversed(RANKS[1:]), strict=True):
        thresholds[higher] = min(thresholds[higher], thresholds[lower])
    return Calibration({rank: round(v, 6) for rank, v in thresholds.items()}, report)


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
    return _nested(thresholds, report)


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


# ---------------------------------------------------------------------------------------------
# Barcodes: open-set thresholds per rank on alignment identity

LEVELS = ("record", "species", "genus", "family", "order")
# The pair of calibration sets each rank's threshold is fitted on: queries whose taxon at that rank is
# in the reference (first) and queries whose whole taxon at that rank was left out (second).
# Leads over any other taxon at a rank (identity, fraction) that calibration tries for a lower threshold.
LEADS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05)
RANK_SETS = {"species": ("record", "species"), "genus": ("species", "genus"), "family": ("genus", "family"),
             "order": ("family", "order")}


def _leave_out_sample(codes: dict[str, np.ndarray], level: str, sample: int, rng: np.random.Generator) -> np.ndarray:
    """One record from each of up to ``sample`` taxa drawn at random: large clades do not dominate."""
    rank = "species" if level == "record" else level
    code = codes[rank]
    taxa = np.unique(code[code >= 0])
    if level != "record" and len(taxa) < 2:  # leaving out the only taxon tells nothing
        return np.empty(0, dtype=np.int64)
    chosen = rng.choice(taxa, size=min(sample, len(taxa)), replace=False)
    order = np.argsort(code, kind="stable")
    start, stop = np.searchsorted(code[order], chosen), np.searchsorted(code[order], chosen, side="right")
    return np.array([order[rng.integers(a, b)] for a, b in zip(start, stop, strict=True)], dtype=np.int64)


def _left_out(codes: dict[str, np.ndarray], level: str, row: int) -> np.ndarray:
    """The record rows a leave-out query of ``level`` removes: itself, or every record of its taxon there."""
    return np.array([row]) if level == "record" else np.flatnonzero(codes[level] == codes[level][row])


def leave_out_hits(index: ReferenceIndex, rows: np.ndarray, level: str, *, k: int = 10, candidates: int | None = None,
                   aligned: int | None = None, chunk: int = 64, windows: Sequence[int | None] = (None,),
                   seed: int = 0, verifier: Verifier | None = None) -> list[list]:
    """Verified hits of reference records queried with their own record (or whole taxon) removed, one list
    per entry of ``windows``.

    Exact search over the distinct vectors, chunk by chunk, so memory stays O(references): a vector
    is skipped when every record behind it is left out, and left-out records never become hits.
    A window of ``None`` aligns the whole barcode; a number cuts each query to a stretch of that many bases
    at a random place (``seed``), as a short read of its region.  Every window shares one search (its
    candidates are those of the whole barcode), so short-read thresholds cost only their alignments.  A
    chunk's alignments run on ``verifier`` (:class:`clibd_cli.verifier.Verifier`; in line without one)
    while the next chunk is searched.
    """
    from clibd_cli.match import DEFAULT_ALIGNED, DEFAULT_CANDIDATES, ranked_hits
    from clibd_cli.verifier import Verifier

    cuts = [np.random.default_rng(seed) for _ in windows]
    aligned = DEFAULT_ALIGNED if aligned is None else aligned
    verifier = verifier or Verifier(index, threads=1)
    candidates = DEFAULT_CANDIDATES if candidates is None else candidates
    codes = index.lineage_codes()
    vectors, inputs, vector_of = index.vectors(), index.vector_inputs(), index.labels.vector
    per_vector = np.bincount(vector_of, minlength=len(vectors))
    out: list[list] = [[] for _ in windows]

    def search(block_rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]]:
        """Per row: what it leaves out, its candidates and their cosines, its query per window."""
        scores = vectors[vector_of[block_rows]] @ vectors.T
        found = []
        for i, row in enumerate(block_rows):
            left_out = _left_out(codes, level, row)
            remaining = per_vector - np.bincount(vector_of[left_out], minlength=len(vectors))
            s = np.where(remaining > 0, scores[i], -np.inf)
            top = np.argpartition(-s, min(candidates, len(s) - 1))[:candidates]
            top = top[np.argsort(-s[top], kind="stable")]
            top = top[np.isfinite(s[top])]
            whole, queries = inputs[vector_of[row]], []
            for window, cut in zip(windows, cuts, strict=True):
                query = whole
                if window is not None and len(whole) > window:
                    first = int(cut.integers(0, len(whole) - window + 1))
                    query = whole[first : first + window]
                queries.append(query)
            found.append((left_out, top, s[top], queries))
        return found

    def rank_hits(searched, verified) -> None:
        alignments = iter(verified())
        for left_out, top, cosines, queries in searched:
            excluded = np.zeros(len(vector_of), dtype=bool)
            excluded[left_out] = True
            for hits, query in zip(out, queries, strict=True):
                found = ranked_hits(next(alignments), index, top, cosines, k,
                                    keep=lambda members, excluded=excluded: ~excluded[members])
                found.query = query
                hits.append(found)

    pending = None
    for start in range(0, len(rows), chunk):
        searched = search(rows[start : start + chunk])
        verified = verifier.submit([(query, top) for _, top, _, queries in searched for query in queries], aligned)
        if pending is not None:
            rank_hits(*pending)
        pending = searched, verified
    if pending is not None:
        rank_hits(*pending)
    return out


def allowed_wrong(n: int, rate: float, z: float = WILSON_Z) -> int:
    """Most wrong calls among ``n`` queries whose Wilson upper bound on the wrong-call rate stays ≤ ``rate``.

    A point estimate from a few dozen calibration taxa is noisy (24 queries allow one wrong call, and the
    next 24 may hold three): bounding the rate's upper confidence limit keeps small references honest
    and costs large ones little (300 queries: 11 wrong calls allowed instead of 15).
    """
    def upper(m: int) -> float:
        p, zz = m / n, z * z
        return (p + zz / (2 * n) + z * np.sqrt(p * (1 - p) / n + zz / (4 * n * n))) / (1 + zz / n)

    m = 0
    while m < n and upper(m + 1) <= rate:
        m += 1
    return m if upper(m) <= rate else 0


def false_call_threshold(scores: np.ndarray, correct: np.ndarray, rate: float) -> float:
    """Lowest threshold at which the queries' wrong calls (scores ≥ it and wrong) stay within ``rate``
    (:func:`allowed_wrong`)."""
    wrong = np.sort(scores[~correct & np.isfinite(scores) & (scores > 0)])[::-1]
    allowed = allowed_wrong(len(scores), rate) if len(scores) else 0
    if len(wrong) <= allowed:
        return 0.0
    return float(np.nextafter(wrong[allowed], np.inf))


def taxon_spreads(index: ReferenceIndex, pairs: int = SPREAD_PAIRS, seed: int = 0,
                  threads: int | None = None) -> dict[str, dict[str, float]]:
    """Per rank of :data:`clibd_cli.assign.SPREAD_RANKS`, per taxon with members of two or more taxa one rank
    below (a genus with two species, a family with two genera), the lowest alignment identity among ``pairs``
    pairs of its records drawn from two different such members (seeded): how far apart its own species (or
    genera) stand in this reference.

    A genus whose species differ by up to 15 % can take a missing species 92 % identical to its nearest
    member; a genus whose species all lie within 5 % of each other says less about a query 92 % from it.
    Lead rules may require a call to reach this spread (:class:`clibd_cli.assign.LeadRule`); calibration
    decides, per rank, whether that serves.  A taxon known from one member shows no spread and gets none.
    The pairs are drawn first, then aligned on ``threads`` threads (default: all cores), so the result does
    not depend on them.
    """
    from clibd_cli.align import align_many
    from clibd_cli.assign import SPREAD_RANKS
    from clibd_cli.match import MIN_COVERAGE

    rng = np.random.default_rng(seed)
    codes = index.lineage_codes()
    inputs, vector_of = index.vector_inputs(), index.labels.vector
    drawn: list[tuple[str, str, int, int]] = []  # (rank, taxon, record, record)
    for rank in SPREAD_RANKS:
        parent, child = codes[rank], codes[RANKS[RANKS.index(rank) + 1]]
        rows = np.flatnonzero((parent >= 0) & (child >= 0))
        rows = rows[np.lexsort((child[rows], parent[rows]))]  # by taxon, then by member
        starts = np.flatnonzero(np.r_[True, parent[rows][1:] != parent[rows][:-1]]) if len(rows) else rows
        for first, stop in zip(starts.tolist(), np.r_[starts[1:], len(rows)].tolist(), strict=True):
            members = rows[first:stop]
            _, bounds = np.unique(child[members], return_index=True)
            if len(bounds) < 2:
                continue
            bounds = np.r_[bounds, len(members)]
            name = index.lineage_name(int(members[0]), rank)
            for _ in range(pairs):
                i, j = rng.choice(len(bounds) - 1, size=2, replace=False)
                drawn.append((rank, name, int(members[rng.integers(bounds[i], bounds[i + 1])]),
                              int(members[rng.integers(bounds[j], bounds[j + 1])])))

    def identity(pair: tuple[int, int]) -> float | None:
        (alignment,) = align_many(inputs[pair[0]], [inputs[pair[1]]])
        return alignment.identity if alignment.coverage >= MIN_COVERAGE else None

    # Records sharing a barcode give the same alignment: each pair of barcodes is aligned once (a genus of two
    # single-record species draws one pair thirty times).
    barcodes = list(dict.fromkeys((int(vector_of[x]), int(vector_of[y])) for _, _, x, y in drawn))
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        found = dict(zip(barcodes, pool.map(identity, barcodes), strict=True))
    out: dict[str, dict[str, float]] = {rank: {} for rank in SPREAD_RANKS}
    for rank, name, x, y in drawn:
        value = found[int(vector_of[x]), int(vector_of[y])]
        if value is not None:
            out[rank][name] = min(value, out[rank].get(name, value))
    return out


def calibrate_open_set(index: ReferenceIndex, *, target: float = DEFAULT_PRECISION, sample: int = OPEN_SET_SAMPLE,
                       seed: int = 0, k: int = 10, candidates: int | None = None,
                       floors: dict[str, float] | None = None, window: int | None = None) -> Calibration:
    """Identity thresholds per rank, each fitted where that rank's decision is made.

    Each rank is fitted on two sets: queries whose taxon at that rank is in the reference and queries
    whose whole taxon was left out.  Species: leave-one-out and leave-species-out; genus:
    leave-species-out and leave-genus-out (a query whose whole genus is missing must stop at family);
    family: leave-genus-out and leave-family-out; order: leave-family-out and leave-order-out.  The
    threshold is the lowest at which at most ``1 - target`` of the queries of *each* set get a wrong call
    at that rank.  A bound per set, not a precision over their mixture: a mixture's precision depends on
    an assumed share of missing taxa, and a precision among few calls is at the mercy of a handful of
    contaminated references (a parasitoid's barcode filed under its host, identical at 99.5 %: measured
    on bold_insect_coi_dev, three such records made family calls "unreachable" at 95 % precision).
    Queries are one record per taxon drawn at random, so large clades do not dominate; up to ``sample``
    taxa per level, every taxon of most references: with 300 of the 736 species of a real BOLD reference,
    the species threshold moved between 97.9 and 98.5 % with the seed, with all of them it stayed at 97.4 %.
    A rank with too few wrong calls to locate its threshold (or a reference of one taxon at that level)
    keeps the ``floors`` value (conventional identity cut-offs by default).  ``window``: the queries are
    cut to stretches of that many bases (thresholds for short reads, :data:`SHORT_READ_WINDOWS`).
    """
    return calibrate_open_sets(index, target=target, sample=sample, seed=seed, k=k, candidates=candidates,
                               floors=floors, windows=(window,))[0]


def calibrate_open_sets(index: ReferenceIndex, *, target: float = DEFAULT_PRECISION, sample: int = OPEN_SET_SAMPLE,
                        seed: int = 0, k: int = 10, candidates: int | None = None,
                        floors: dict[str, float] | None = None,
                        windows: Sequence[int | None] = (None,), threads: int | None = None) -> list[Calibration]:
    """:func:`calibrate_open_set` for each of ``windows`` (None: whole barcodes) from one leave-out search:
    the same queries, the same candidates, only the stretch aligned differs.  Alignments run on ``threads``
    verification processes (:class:`clibd_cli.verifier.Verifier`; default: one per core)."""
    from clibd_cli.align import CONVENTIONAL
    from clibd_cli.match import DEFAULT_CANDIDATES, IDENTITY_TAU, assign_verified
    from clibd_cli.verifier import Verifier

    floors = dict(CONVENTIONAL if floors is None else floors)
    candidates = DEFAULT_CANDIDATES if candidates is None else candidates
    rng = np.random.default_rng(seed)
    codes = index.lineage_codes()
    if int((codes["species"] >= 0).sum()) < 2 * MIN_CALLS:
        raise ValueError("too few labelled references to calibrate")
    calls: list[dict[str, _Scored]] = [{} for _ in windows]
    counts = {}
    rivals = Rivals(index)
    with Verifier(index, threads) as verifier:
        for level in LEVELS:
            rows = _leave_out_sample(codes, level, sample, rng)
            counts[level] = len(rows)
            truth = {rank: index.labels.ranks[rank][rows] for rank in RANKS}
            per_window = leave_out_hits(index, rows, level, k=k, candidates=candidates, windows=windows,
                                        seed=seed + 7, verifier=verifier)
            assignments = [assign_verified(hits, index, {}, k, IDENTITY_TAU) for hits in per_window]
            _measure_leads(rivals, verifier, rows, level, per_window, assignments)
            for window_assignments, window_calls in zip(assignments, calls, strict=True):
                window_calls[level] = _Scored.of(window_assignments, truth)
    return [_open_set_thresholds(window_calls, counts, target, floors, window, k, candidates, seed)
            for window, window_calls in zip(windows, calls, strict=True)]


def _measure_leads(rivals: Rivals, verifier: Verifier, rows: np.ndarray, level: str,
                   hits: Sequence[Sequence[VerifiedHits]], assignments: Sequence[Sequence[Assignment]],
                   chunk: int = 64) -> None:
    """Measure the calls' leads at the ranks fitted on this level's queries against the nearest references of other
    taxa too, the left-out records excluded (:mod:`clibd_cli.rivals`), as `clibd match` measures a lead that
    decides a call.  ``hits`` and ``assignments``: per window, per query of ``rows``.  Every window's stretch is
    aligned to the rivals its whole barcode's profile finds (as to its candidates, :func:`leave_out_hits`)."""
    ranks = [rank for rank in RIVAL_RANKS if level in RANK_SETS[rank]]
    if not ranks:
        return
    codes, vectors, vector_of = rivals.index.lineage_codes(), rivals.index.vectors(), rivals.index.labels.vector
    jobs, measured = [], []
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        scores = vectors[vector_of[block]] @ vectors.T  # exact, as the leave-out search is
        for i, row in enumerate(block.tolist(), start):
            left_out, nearest = _left_out(codes, level, row), {}
            for window_hits, window_assignments in zip(hits, assignments, strict=True):
                h = window_hits[i]
                for rank in ranks:
                    call = window_assignments[i].calls[rank]
                    if call.best_hit < 0:
                        continue
                    code = rivals.code(h, call, rank)
                    if (rank, code) not in nearest:
                        s = np.where(rivals.allowed(rank, code, left_out).mask(), scores[i - start], -np.inf)
                        top = np.argpartition(-s, min(RIVALS, len(s)) - 1)[:RIVALS]
                        nearest[rank, code] = top[np.isfinite(s[top])]
                    jobs.append((h.query, nearest[rank, code]))
                    measured.append((h, call))
    for (h, call), found in zip(measured, verifier.submit(jobs, RIVALS_ALIGNED)(), strict=True):
        call.lead = lead_over(h, call, found)


@dataclass
class _Scored:
    """One calibration set's calls, per rank: the winner's score, its lead, and whether it is right."""

    scores: dict[str, np.ndarray]
    leads: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]
    spreads: dict[str, np.ndarray]

    @classmethod
    def of(cls, assignments, truth: dict[str, Sequence[str]]) -> _Scored:
        return cls({rank: np.array([a.calls[rank].score for a in assignments]) for rank in RANKS},
                   {rank: np.array([a.calls[rank].lead for a in assignments]) for rank in RANKS},
                   correct_calls(assignments, truth),
                   {rank: np.array([a.calls[rank].spread for a in assignments]) for rank in RANKS})

    def ahead(self, rank: str, lead: float, within_spread: bool) -> np.ndarray:
        """Which queries' winners at ``rank`` lead by ``lead`` (and reach their taxon's spread, if asked)."""
        ahead = self.leads[rank] >= lead
        return ahead & (self.scores[rank] >= self.spreads[rank]) if within_spread else ahead

    def called(self, rank: str, threshold: float, rule: LeadRule | None) -> np.ndarray:
        """Which queries get a call at ``rank`` (as :func:`clibd_cli.assign.decide` makes it)."""
        s = self.scores[rank]
        called = s >= threshold
        if rule is not None:
            called |= self.ahead(rank, rule.lead, rule.within_spread) & (s >= rule.threshold)
        return called


def _lead_rule(p: _Scored, a: _Scored, rank: str, rate: float, above: float | None,
               ) -> tuple[float, LeadRule | None]:
    """The rank's threshold, and the lower one (if any) at which a call that leads every other taxon by one of
    :data:`LEADS` is made as well: the pair that names the most taxa right in ``p`` (taxon present) while the
    wrong calls of *both* together stay within ``rate`` in each set (:func:`allowed_wrong`).

    A call far ahead of every other taxon is safer than one that barely wins: on the real BOLD references of
    benchmarks/dna_vs_vsearch.py, leaving genera out, most wrong genus calls at 91-94 % identity had another
    genus within half a point.  The lower threshold never goes below ``above``, the threshold of the rank
    above (a genus is never called where its family would not be).
    """
    sets = [(x.scores[rank], x.correct[rank]) for x in (p, a)]
    plain = max(false_call_threshold(s, c, rate) for s, c in sets)
    if above is None or plain >= NEVER:
        return plain, None
    s_p, c_p = sets[0]
    best = (float(np.sum(c_p & (s_p >= plain))), plain, None)
    wrong = [~c & np.isfinite(s) & (s > 0) for s, c in sets]
    allowed = [allowed_wrong(len(s), rate) if len(s) else 0 for s, _ in sets]
    # Raising the plain threshold past a wrong call frees room for the lead rule's: try each such step.
    steps = np.unique(np.concatenate([s[w & (s >= plain)] for (s, _), w in zip(sets, wrong, strict=True)]))
    for t in np.r_[plain, np.nextafter(steps, np.inf)]:
        used = [int((w & (s >= t)).sum()) for (s, _), w in zip(sets, wrong, strict=True)]
        for lead, within in itertools.product(LEADS, (False, True)):
            low = max(above, 0.0)
            for x, (s, _), w, n_used, n_allowed in zip((p, a), sets, wrong, used, allowed, strict=True):
                extra = np.sort(s[w & x.ahead(rank, lead, within) & (s < t)])[::-1]
                room = n_allowed - n_used
                if len(extra) > room:
                    low = max(low, float(np.nextafter(extra[room], np.inf)))
            if low >= t:
                continue
            right = float(np.sum(c_p & ((s_p >= t) | (p.ahead(rank, lead, within) & (s_p >= low)))))
            if right > best[0]:
                best = (right, float(t), LeadRule(lead, low, within))
    return best[1], best[2]


def _open_set_thresholds(calls: dict[str, _Scored], counts: dict[str, int], target: float,
                         floors: dict[str, float], window: int | None, k: int, candidates: int,
                         seed: int) -> Calibration:
    """Each rank's threshold, and lead rule, from its two leave-out sets' scored calls (see
    :func:`calibrate_open_set` and :func:`_lead_rule`)."""
    thresholds: dict[str, float] = {}
    leads: dict[str, LeadRule] = {}
    report: dict = {"target_precision": target, "ranks": {}}
    for rank in RANKS:
        present, absent = RANK_SETS[rank]
        n_p, n_a = counts[present], counts[absent]
        entry: dict = {"fitted_on": [present, absent], "queries": [n_p, n_a]}
        wrong, rule = 0, None
        if n_p and n_a:
            p, a = calls[present], calls[absent]
            c_p, c_a = p.correct[rank], a.correct[rank]
            wrong = int(((p.scores[rank] > 0) & ~c_p).sum() + ((a.scores[rank] > 0) & ~c_a).sum())
            above = thresholds.get(RANKS[RANKS.index(rank) - 1]) if rank != RANKS[0] else None
            t, rule = _lead_rule(p, a, rank, 1.0 - target, above)
            called = p.called(rank, t, rule)
            entry.update(threshold=t, right_present=float(np.mean(called & c_p)),
                         false_calls_present=float(np.mean(called & ~c_p)),
                         false_calls_absent=float(np.mean(a.called(rank, t, rule) & ~c_a)), wrong_calls_seen=wrong)
            if rule is not None:
                entry["lead_rule"] = rule.as_info()
        else:
            t = NEVER
            entry.update(threshold=t, wrong_calls_seen=0)
        if (wrong < MIN_WRONG or not (n_p and n_a)) and rank in floors:
            t = max(t, floors[rank]) if t < NEVER else floors[rank]
            rule = None
            entry.pop("lead_rule", None)
            entry.update(threshold=t, note="too few wrong calls (or taxa) to calibrate; conventional cut-off used")
        thresholds[rank] = t
        if rule is not None:
            leads[rank] = rule
        report["ranks"][rank] = entry
    method = "open-set leave-taxon-out (alignment identity)"
    if window is not None:
        method += f" on {window} bp stretches"
    report.update({"method": method, "queries": sum(counts.values()), "k": k, "candidates": candidates,
                   "seed": seed, "score": "identity", **({"window": window} if window is not None else {})})
    calibration = _nested(thresholds, report)
    calibration.leads = leads
    return calibration


def calibrate_dna_with_queries(index: ReferenceIndex, queries, encoder, *, target: float = DEFAULT_PRECISION,
                               k: int = 10) -> Calibration:
    """Identity thresholds from labelled barcodes (ideally including species absent from the reference),
    identified exactly as `clibd match` does: candidates on both strands, verified by alignment.

    Each rank's threshold is placed as :func:`calibrate_open_set` places it: the lowest at which at most
    ``1 - target`` of the queries whose taxon at that rank is in the reference, and of those whose taxon is
    not, get a wrong call there -- a bound per set, not a precision over their mixture.  A lab's checks are
    mostly of species the reference holds, and among them a precision of 95 % is reached at any identity:
    200 such queries, 6 of them of missing species, once put every rank's threshold at 67 % and named a
    beetle's genus wrongly at 86 %.  A rank with fewer than :data:`MIN_CALLS` queries of taxa missing from
    the reference cannot place its threshold from them, so the index's current one stays its floor (fitted
    on the reference, or the conventional cut-off); so does the conventional cut-off where the queries made
    fewer than :data:`MIN_WRONG` wrong calls.  The index's lead rules are dropped (these queries did not
    measure them) and its short-read thresholds made no looser than the new ones (:func:`_tightened`).
    """
    from clibd_cli.align import CONVENTIONAL
    from clibd_cli.match import MatchOptions, assign_verified, verify_queries

    usable = [q for q in queries if q.sequence]
    hits = verify_queries(usable, index, encoder, MatchOptions(neighbours=k))
    assignments = assign_verified(hits, index, {}, k)
    truth = {rank: [q.label(rank) for q in usable] for rank in RANKS}
    scores = {rank: np.array([a.calls[rank].score for a in assignments]) for rank in RANKS}
    correct = correct_calls(assignments, truth)
    current, rate = index.thresholds, 1.0 - target
    thresholds: dict[str, float] = {}
    report: dict = {"target_precision": target, "ranks": {}}
    known = {rank: set(index.labels.ranks[rank]) for rank in RANKS}
    for rank in RANKS:
        labelled = np.array([bool(label) for label in truth[rank]], dtype=bool)
        missing = labelled & np.array([label not in known[rank] for label in truth[rank]], dtype=bool)
        present = labelled & ~missing
        s, c = scores[rank], correct[rank]
        t = max(false_call_threshold(s[rows], c[rows], rate) for rows in (present, missing))
        wrong = int(((s > 0) & ~c & labelled).sum())
        entry = {"queries": [int(present.sum()), int(missing.sum())], "threshold": t, "wrong_calls_seen": wrong}
        floors = []
        if wrong < MIN_WRONG and rank in CONVENTIONAL:
            floors.append((CONVENTIONAL[rank], "too few wrong calls to calibrate; conventional cut-off used"))
        if missing.sum() < MIN_CALLS:
            floors.append((current[rank], f"only {int(missing.sum())} queries whose {rank} is missing from the "
                                          f"reference (fewer than {MIN_CALLS}); the index's threshold kept"))
        floor, why = max(floors, default=(0.0, ""))
        if floor > t:
            t = floor
            entry["note"] = why
        called = s >= t
        entry.update(threshold=t, right_present=_share(called & c, present),
                     false_calls_present=_share(called & ~c, present), false_calls_absent=_share(called, missing))
        thresholds[rank] = t
        report["ranks"][rank] = entry
    calibration = _nested(thresholds, report)
    calibration.report.update({"method": "labelled queries (alignment identity)", "queries": len(usable),
                               "absent_species_queries": sum(label not in known["species"]
                                                             for label in truth["species"]),
                               "k": k, "score": "identity"})
    calibration.short_reads = _tightened(index.short_read_thresholds(), calibration)
    return calibration


def _share(hit: np.ndarray, rows: np.ndarray) -> float | None:
    """The share of ``rows`` where ``hit`` holds (None for no rows: nothing was measured)."""
    n = int(rows.sum())
    return float((hit & rows).sum() / n) if n else None


def _tightened(sets: Sequence[ShortReads], main: Calibration) -> tuple[ShortReads, ...]:
    """The short-read sets (shortest overlap first) each made no looser than the next longer one and the last than
    ``main`` (:func:`_no_looser`): as :func:`calibrate_barcode_part` fits them, and after labelled queries refit
    ``main``."""
    from clibd_cli.match import ShortReads

    longer, out = ShortReads(main.thresholds, 0, main.leads), []
    for short in reversed(sets):
        longer = _no_looser(short, longer, main)
        out.append(longer)
    return tuple(out[::-1])


# ---------------------------------------------------------------------------------------------
# The workflow: refit an index folder's thresholds


@dataclass
class CalibrateOptions:
    """Settings of :func:`calibrate_index`.  ``sample``: barcodes, taxa drawn per leave-out level (default
    :data:`OPEN_SET_SAMPLE`); photos, labelled records used (default 1000).  ``novel_share``: photos only,
    the assumed share of field specimens whose species is absent from the reference."""

    precision: float = DEFAULT_PRECISION
    sample: int | None = None
    novel_share: float = DEFAULT_NOVEL_SHARE
    neighbours: int = 10
    seed: int = 0
    reading: ReadOptions = field(default_factory=lambda: ReadOptions(min_length=0))


def calibrate_index(index: str | Path, *, queries: str | Path | None = None, images: str | Path | None = None,
                    against: str = "dna", model: str | Path | ModelBundle | None = None, device: str = "auto",
                    options: CalibrateOptions | None = None, notify: Notes | Listener | None = None,
                    progress: Progress = no_progress) -> Calibration:
    """Fit per-rank thresholds of the index folder ``index`` for a target precision and store them there.

    Barcode queries: from labelled ``queries`` (ideally including species absent from the reference), else
    from the reference itself by leaving out records, species, genera, families and orders.  With
    ``images`` (labelled photos; needs ``model``): photo queries against the ``against`` references.
    Holds the folder's write lock meanwhile (an --append running now would otherwise be lost).  Leaving
    out parts of a large reference takes minutes: ``progress`` shows the step meanwhile.
    """
    from clibd_cli.index import MANIFEST
    from clibd_cli.indexdir import writing
    from clibd_cli.models import load_model

    options, notes, index = options or CalibrateOptions(), as_notes(notify), Path(index)
    if not (index / MANIFEST).exists():
        raise ClibdError(f"{index}: not a clibd index (no {MANIFEST}). Build one with 'clibd build-index'.")
    if images is not None and model is None:
        raise ClibdError("--images needs the model bundle the index was built with: add --model BUNDLE.")
    with writing(index, notify=notes.info):
        bundle = load_model(model, device)
        if images is not None:
            with progress(f"embedding photos and calibrating them against {against}", None):
                return calibrate_photos(index, Path(images), against, bundle, options)
        with progress("calibrating barcodes", None):
            return calibrate_barcodes(index, queries, bundle, options, notes)


def calibrate_photos(index: Path, images: Path, against: str, bundle: ModelBundle,
                     options: CalibrateOptions = CalibrateOptions()) -> Calibration:
    """Photo → ``against`` thresholds from labelled photos, held out by specimen and species; stored."""
    from clibd_cli.photos import collect_photos
    from clibd_cli.references import photo_records

    part = ReferenceIndex.load(index, against)
    encoder = bundle.encoder("image")
    part.check_encoder(encoder)
    photos, _ = collect_photos([], manifest=images, id_column=options.reading.id_column,
                               image_column=options.reading.image_column)
    records = photo_records(photos, str(images))
    vectors = encoder.encode_photos([Path(r.sequence) for r in records])
    truth = {rank: [r.label(rank) for r in records] for rank in RANKS}
    try:
        calibration = calibrate_held_out(part, vectors, [r.id for r in records], truth, target=options.precision,
                                         seed=options.seed, novel_share=options.novel_share)
    except ValueError as exc:
        raise ClibdError(f"{images}: {exc}; give at least 40 labelled photos.") from exc
    calibration.report["method"] = "leave-species-out (labelled photos)"
    part.set_cross_thresholds("image", calibration.thresholds, calibration.report)
    part.save_manifest()
    return calibration


def calibrate_barcode_part(part: ReferenceIndex, *, target: float = DEFAULT_PRECISION, seed: int = 0, k: int = 10,
                           sample: int = OPEN_SET_SAMPLE, threads: int | None = None) -> Calibration:
    """Fit and store a barcode part's open-set thresholds: for whole barcodes, and for short reads (stretches
    of each of :data:`SHORT_READ_WINDOWS` bp cut from the same queries, one shared leave-out search), each
    set applying to queries whose top hit's overlap is nearer its window than any other window's (the last
    up to :data:`SHORT_READ_OVERLAP` columns).  Returns the main calibration with the short-read sets in its
    ``short_reads``.  Nearest, not "no longer than": a 200 bp stretch overlaps its top hit by a few columns
    less where the alignment leaves an end out or the reference stops short, so the 200 bp set is fitted on
    such overlaps too and is the one for a 200 bp read that overlaps 195 (served by the 150 bp set, the
    200 bp reads of benchmarks/dna_vs_vsearch.py's held-out case lost right orders, 84.0 -> 79.9 %, and
    no wrong ones).

    A short-read set is never looser than the set of the next longer window, nor than the main one (a
    shorter read does not support a call a longer one at the same identity would not; a rank has a lead
    rule only where both have one, with the larger lead and the higher threshold of the two), and applies
    above species only: species keeps the main threshold and lead rule (the fitted ones stay in the report).
    Measured on the split case of benchmarks/dna_vs_vsearch.py (200 bp reads): the window-fitted species
    threshold (98.5 % against 97.4 %) cut present species named right from 98.6 to 97.7 % (VSEARCH: 99.0 %),
    while with the whole-barcode one absent species were named wrongly 2.5 % of the time (1.2 % with it),
    well within 5 %; the genus threshold (95.9 % against 94.1 %) is what brought wrong genera from 6.5 to
    2.1 %.  Reads of 100-150 bp called with the 200 bp set got wrong families and orders well above what
    whole barcodes get (benchmarks/short_windows.py); hence the shorter windows.  ``threads``: cores for
    the alignments (default: all).
    """
    from clibd_cli.match import ShortReads

    part.set_spreads(taxon_spreads(part, seed=seed, threads=threads))
    main, *fitted = calibrate_open_sets(part, target=target, seed=seed, k=k, sample=sample,
                                        windows=(None, *SHORT_READ_WINDOWS), threads=threads)
    bounds = (*((a + b) // 2 for a, b in itertools.pairwise(SHORT_READ_WINDOWS)), SHORT_READ_OVERLAP)
    sets = _tightened([ShortReads(short.thresholds, below, short.leads, window)
                       for window, below, short in zip(SHORT_READ_WINDOWS, bounds, fitted, strict=True)], main)
    part.set_thresholds(main.thresholds, main.report, main.leads)
    part.set_short_read_thresholds([(short, fit.report) for short, fit in zip(sets, fitted, strict=True)])
    main.short_reads = part.short_read_thresholds()
    return main


def _no_looser(short: ShortReads, longer: ShortReads, main: Calibration) -> ShortReads:
    """``short``'s thresholds and lead rules made no looser than ``longer``'s (the set of the next longer
    window, or the main one), species kept at ``main``'s."""
    from clibd_cli.match import ShortReads

    stricter = {rank: max(short.thresholds[rank], longer.thresholds[rank]) for rank in short.thresholds}
    stricter["species"] = main.thresholds["species"]
    base = longer.leads or {}
    rules = {rank: LeadRule(max(rule.lead, base[rank].lead), max(rule.threshold, base[rank].threshold),
                            rule.within_spread or base[rank].within_spread)
             for rank, rule in short.leads.items() if rank != "species" and rank in base}
    if "species" in main.leads:
        rules["species"] = main.leads["species"]
    rules = {rank: rule for rank, rule in rules.items() if rule.threshold < stricter[rank]}
    return ShortReads(stricter, short.below_overlap, rules, short.window)


def calibrate_barcodes(index: Path, queries: str | Path | None = None, bundle: ModelBundle | None = None,
                       options: CalibrateOptions = CalibrateOptions(), notes: Notes | None = None) -> Calibration:
    """The index's own thresholds, from labelled ``queries`` or by leaving out parts of the reference; stored."""
    from clibd_cli.references import reference_records

    part = ReferenceIndex.load(index)
    if queries is not None:
        records = reference_records([queries], options.reading, notes)
        encoder = bundle.encoder("dna") if bundle is not None else part.encoder()
        part.check_encoder(encoder)
        calibration = calibrate_dna_with_queries(part, records, encoder, target=options.precision,
                                                 k=options.neighbours)
    else:
        try:
            if part.modality == "dna":
                calibration = calibrate_barcode_part(part, target=options.precision, k=options.neighbours,
                                                     sample=options.sample or OPEN_SET_SAMPLE, seed=options.seed)
            else:
                calibration = calibrate_leave_species_out(part, target=options.precision, k=options.neighbours,
                                                          sample=options.sample or 1000, seed=options.seed,
                                                          novel_share=options.novel_share)
        except ValueError as exc:
            raise ClibdError(f"{index}: {exc}; give labelled --queries instead.") from exc
    part.set_thresholds(calibration.thresholds, calibration.report, calibration.leads)
    if queries is not None and calibration.short_reads:
        fitted = sorted(part.spec.short_read_sets, key=lambda s: s.below_overlap)
        part.set_short_read_thresholds([(short, {**stored.calibration.model_dump(), "tightened_to": "labelled queries"})
                                        for short, stored in zip(calibration.short_reads, fitted, strict=True)])
    part.save_manifest()
    return calibration
