"""Identify query barcodes against a reference index: propose by k-mer search, verify by alignment, assign.

This is the library behind `clibd match`; it yields rows and never prints, so the app decides where
they go and a caller (a notebook, a pipeline) can use it directly.

Two stages.  The embedding index (k-mer profile or a model's DNA encoder) proposes ``candidates``
distinct reference barcodes per query, on both strands; the strand whose best cosine is higher is
kept (``reverse_complement`` when it is the other one).  Each candidate is then aligned to the query
(:mod:`clibd_cli.align`), and the per-rank calls are made on percent identity over the aligned
overlap, the distance every barcoding lab reasons in, instead of on the k-mer cosine, which tracks
identity only above ~95 %.  Reads shorter than :data:`FRAGMENT_LENGTH` also get the references that
share the most exact 12-mers with them (:mod:`clibd_cli.anchors`): a composition profile of a 200 bp
read misses its species among the nearest profiles ~5 % of the time on real BOLD data.  So do queries
longer than :data:`LONG_LENGTH`, first cut to the stretch their best word-sharing reference covers
(:func:`barcode_region`): other sequence around a barcode dilutes its profile.  Identity is
computed over the overlap only, so a fragment and a full barcode are compared fairly; a query whose top
hit overlaps fewer than 300 columns is called with the index's short-read thresholds, fitted on 200 bp
stretches (identity over few columns scatters more, :func:`clibd_cli.calibrate.calibrate_barcode_part`).

:class:`MatchRun` is the whole `clibd match` workflow (query files streamed, the index opened or a
reference file embedded, thresholds chosen, the record a resumable output keeps) for any caller;
:func:`identify` is the core it drives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from clibd_cli import __version__
from clibd_cli.align import Alignment, base_codes, diagonals, reverse_complement, ungapped_many
from clibd_cli.assign import (
    DEFAULT_TAU,
    SPREAD_RANKS,
    Assignment,
    LeadRule,
    RankCall,
    assign_batch,
    batch_rank_calls,
    decide,
)
from clibd_cli.encoders import Encoder
from clibd_cli.errors import ClibdError
from clibd_cli.index import ReferenceIndex
from clibd_cli.rivals import RIVAL_RANKS, WORD_POOL, Rivals
from clibd_cli.sequences import RANKS, SequenceRecord, SequenceStream
from clibd_cli.verifier import Verifier, verify_vectors
from clibd_cli.workflow import Listener, Notes, ReadOptions, as_notes, paths_of

if TYPE_CHECKING:
    from clibd_cli.bundle import ModelBundle
    from clibd_cli.references import OpenIndex

DEFAULT_NEIGHBOURS = 10
# 64, not 32: the 32 nearest profiles of a species missing from the reference are often haplotypes of one
# close species, and the verified candidates are also the rivals a lead rule measures (assign_verified).
# Held-out case of benchmarks/dna_vs_vsearch.py, absent species given their right order: 70.4 % with 32,
# 88.7 % with 64 (order threshold 87.9 % in both: closer references are found).
DEFAULT_CANDIDATES = 64
# Calls identical to 10 on 600 real held-out queries, 37 % faster.  3 changed 1 of 12,000 real calls but
# let 5 queries of a missing synthetic genus get a genus call (test_missing_genus_stops_above_genus).
DEFAULT_ALIGNED = 5
IDENTITY_TAU = 0.01  # a hit one identity point below the best weighs e^-1 of it
MIN_CALL_OVERLAP = 100  # bp: a shorter overlap supports no call, at any rank
MIN_COVERAGE = 0.5  # a hit must cover this share of the shorter sequence to count at all
FRAGMENT_LENGTH = 500  # bp: shorter queries also get candidates by shared exact 12-mers
LONG_LENGTH = 800  # bp: and so do longer ones (a whole COI gene, a barcode inside a longer read), cut first
# bp: a longer query (a contig, a chromosome) is an error row: no barcode or amplicon read is as long, and a
# 20 Mb one took two minutes and 1.5 GB to come out no_match, holding up the rows behind it.
MAX_QUERY_LENGTH = 100_000
REGION_MARGIN = 50  # bp kept either side of the stretch a long query's best word-sharing reference covers
FRAGMENT_CANDIDATES = 16
VOTE_CELLS = 4_000_000  # queries × columns² assigned at once (assign_verified)
LOW_OVERLAP_SHARE = 0.75  # the top hit covers less than this share of the query: flag low_overlap
LOOKUP_COST = 4  # a barcode read from SQLite by rowid costs about as much as encoding this many (identify)
REPEATS_KEPT = 10_000  # distinct sequences whose calls a run keeps for repeats (~8 KB each: 80 MB at most)
THRESHOLD_SOURCES = ("calibrated", "conventional")
SCORE = "alignment identity over the overlap (fraction)"
FLAGS = ("reverse_complement", "low_overlap", "short", "ambiguous", "multiple_bins", "shared_bin",
         "single_reference", "conflict")


class ShortReads(NamedTuple):
    """The calls of queries whose top hit overlaps fewer than ``below_overlap`` columns (and no fewer than the
    next shorter set's ``below_overlap``), fitted on ``window`` bp stretches."""

    thresholds: dict[str, float]
    below_overlap: int
    leads: Mapping[str, LeadRule] | None = None
    window: int | None = None


def _short_read_sets(given: ShortReads | tuple | Sequence[ShortReads] | None) -> tuple[ShortReads, ...]:
    """Short-read threshold sets, shortest overlap first, from one set (a :class:`ShortReads` or its plain
    tuple), several, or none."""
    if not given:
        return ()
    sets = [given] if isinstance(given[0], Mapping) else list(given)
    return tuple(sorted((ShortReads(*s) for s in sets), key=lambda s: s.below_overlap))


def _set_for(overlap: int, sets: Sequence[ShortReads]) -> int | None:
    """Which of ``sets`` (shortest first) a top hit overlapping ``overlap`` columns is called with: the first
    whose bound it is under; None (the whole-barcode thresholds) when it reaches them all."""
    return next((i for i, s in enumerate(sets) if overlap < s.below_overlap), None)


@dataclass
class MatchOptions:
    """Search and assignment settings for one run."""

    neighbours: int = DEFAULT_NEIGHBOURS
    top_k: int = 0
    exact: bool | None = None
    batch_size: int = 1024
    threads: int | None = None
    tau: float = DEFAULT_TAU
    candidates: int = DEFAULT_CANDIDATES
    aligned: int = DEFAULT_ALIGNED
    both_strands: bool = True


@dataclass
class MatchResult:
    """One query's assignment as an output row, and its top hits as long-table rows.

    ``sequence`` and ``marker`` are the query barcode (normalised) and the marker its file names: not
    columns of the row, which stays the same in every format, but what Darwin Core output
    (:mod:`clibd_cli.darwincore`) publishes as ``DNA_sequence`` and ``target_gene``.
    """

    row: dict
    hits: list[dict]
    sequence: str = ""
    marker: str = ""


@dataclass
class VerifiedHits:
    """One query's verified references, ranked by alignment identity.

    ``records`` … ``cosine``: the first k records (0-based rows), what the hits table lists.  ``taxa`` …
    ``votes``: every verified candidate as the taxa behind it (:meth:`ReferenceIndex.taxa`: one record per
    lineage, with how many records of that lineage share the barcode), in the same order.  A call is voted
    by the leading taxa (``votes`` > 0: the first k records' worth, shared in proportion where a barcode, or
    several at one identity, stand for more records than the vote has room for), and its lead is measured
    against all of them (:attr:`clibd_cli.assign.RankCall.lead`).
    """

    records: np.ndarray
    identity: np.ndarray  # fraction, per record
    overlap: np.ndarray
    cosine: np.ndarray
    reverse: bool = False
    taxa: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    taxon_identity: np.ndarray = field(default_factory=lambda: np.empty(0))
    taxon_overlap: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    taxon_records: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    votes: np.ndarray = field(default_factory=lambda: np.empty(0))
    query: str = ""
    """The sequence aligned: the query on the strand it was identified on (or the stretch of it calibration
    aligned)."""

    @property
    def voters(self) -> int:
        """How many of the leading taxa vote."""
        return int(np.count_nonzero(self.votes))


def _votes(identity: np.ndarray, overlap: np.ndarray, records: np.ndarray, k: int) -> np.ndarray:
    """Each taxon's share of a vote of k records, taxa in ranked order: whole while there is room, and where a
    group of equal (identity, overlap) stands for more records than are left, the room is shared in proportion
    to their records, so which of them came first does not decide a tie."""
    votes = np.zeros(len(records))
    used, start = 0.0, 0
    while start < len(records) and used < k:
        stop = start + 1
        while stop < len(records) and identity[stop] == identity[start] and overlap[stop] == overlap[start]:
            stop += 1
        total = float(records[start:stop].sum())
        take = min(total, k - used)
        votes[start:stop] = records[start:stop] * (take / total)
        used += take
        start = stop
    return votes


def verified_hits(query: str, index: ReferenceIndex, vectors: np.ndarray, cosines: np.ndarray, k: int,
                  aligned: int = DEFAULT_ALIGNED, keep: Callable[[np.ndarray], np.ndarray] | None = None,
                  ) -> VerifiedHits:
    """Align ``query`` to candidate vectors, rank by (identity, overlap), expand to the first k records and to
    the taxa behind every candidate.

    ``keep`` filters record rows (leave-one-out calibration removes the query's own taxon).
    """
    valid = vectors >= 0
    vectors, cosines = vectors[valid], cosines[valid]
    found = verify_vectors(index, query, vectors, aligned)
    return ranked_hits(found, index, vectors, cosines, k, keep)


def ranked_hits(found: Sequence[Alignment | None], index: ReferenceIndex, vectors: np.ndarray, cosines: np.ndarray,
                k: int, keep: Callable[[np.ndarray], np.ndarray] | None = None) -> VerifiedHits:
    """:func:`verified_hits` from the alignments of candidate vectors (valid ones only) that :func:`verify` found."""
    rows, identity, overlap, cosine = [], [], [], []
    taxa, counts, sizes = [], [], []
    order = sorted((i for i, a in enumerate(found) if a is not None and a.coverage >= MIN_COVERAGE),
                   key=lambda i: (-found[i].identity, -found[i].overlap, -cosines[i]))
    for i in order:
        if len(rows) < k:
            members = index.members(int(vectors[i]))
            if keep is not None:
                members = members[keep(members)]
            for record in members[: k - len(rows)]:
                rows.append(record)
                identity.append(found[i].identity)
                overlap.append(found[i].overlap)
                cosine.append(cosines[i])
        standing, records = index.taxa(int(vectors[i]), keep)
        taxa.append(standing)
        counts.append(records)
        sizes.append(len(standing))
    taxon_identity = np.repeat([found[i].identity for i in order], sizes)
    taxon_overlap = np.repeat(np.array([found[i].overlap for i in order], dtype=np.int64), sizes)
    taxon_records = np.concatenate(counts).astype(np.int64) if counts else np.empty(0, dtype=np.int64)
    return VerifiedHits(np.array(rows, dtype=np.int64), np.array(identity), np.array(overlap, dtype=np.int64),
                        np.array(cosine, dtype=np.float64),
                        taxa=np.concatenate(taxa).astype(np.int64) if taxa else np.empty(0, dtype=np.int64),
                        taxon_identity=taxon_identity, taxon_overlap=taxon_overlap, taxon_records=taxon_records,
                        votes=_votes(taxon_identity, taxon_overlap, taxon_records, k))


def assign_verified(hits: Sequence[VerifiedHits], index: ReferenceIndex, thresholds: dict[str, float], k: int,
                    tau: float = IDENTITY_TAU, leads: Mapping[str, LeadRule] | None = None,
                    rivals: Rivals | None = None, embeddings: Sequence[np.ndarray] = (),
                    word_pools: Sequence[np.ndarray | None] = ()) -> list[Assignment]:
    """Per-rank calls on identity, voted by each query's leading taxa (:class:`VerifiedHits`); a call's
    ``best_hit`` is a column of ``taxa``.  Hits whose overlap is under :data:`MIN_CALL_OVERLAP` abstain at every rank.

    Each rank's winner also gets its lead over every other taxon at that rank among the verified
    candidates (:attr:`clibd_cli.assign.RankCall.lead`), for the ranks' lead rules (``leads``, calibrated by
    :func:`clibd_cli.calibrate.calibrate_open_set`).  The taxa that vote are often one haplotype, which hides
    a second genus 0.2 points further away.  With ``rivals`` (and the queries' ``embeddings``), a lead that
    would make a call on its own is measured against the nearest references of other taxa too
    (:mod:`clibd_cli.rivals`), as calibration measured it; a fragment's are also looked for among its
    ``word_pools`` (the references sharing the most words with it, :class:`_Proposal`; none given: none looked at).
    """
    width = max((h.voters for h in hits), default=0) or 1
    step = max(1, VOTE_CELLS // width**2)  # the vote compares every pair of columns: bounded memory
    if len(hits) > step:
        return [a for start in range(0, len(hits), step)
                for a in assign_verified(hits[start : start + step], index, thresholds, k, tau, leads, rivals,
                                         embeddings[start : start + step], word_pools[start : start + step])]
    n = len(hits)
    sims = np.full((n, width), -np.inf)
    labels = np.full((n, width), -1, dtype=np.int64)
    votes = np.zeros((n, width))
    records = np.zeros((n, width), dtype=np.int64)
    short = np.zeros((n, width), dtype=bool)
    for i, h in enumerate(hits):
        m = h.voters
        sims[i, :m] = h.taxon_identity[:m]
        labels[i, :m] = h.taxa[:m] + 1
        votes[i, :m] = h.votes[:m]
        records[i, :m] = h.taxon_records[:m]
        short[i, :m] = h.taxon_overlap[:m] < MIN_CALL_OVERLAP
    taxonomy = index.taxonomy_of(labels)
    codes = index.lineage_codes_of(labels)
    for rank in RANKS:
        taxonomy[rank] = np.where(short, "", taxonomy[rank])
        codes[rank] = np.where(short, -1, codes[rank])
    every = index.lineage_codes()
    spreads = {rank: index.spreads(rank) for rank in SPREAD_RANKS}
    out = []
    for i, (h, calls) in enumerate(zip(hits, batch_rank_calls(sims, taxonomy, tau, codes, votes, records),
                                       strict=True)):
        for rank, call in calls.items():
            if call.best_hit < 0:
                continue
            rival = np.where(h.taxon_overlap < MIN_CALL_OVERLAP, -1, every[rank][h.taxa])
            other = (rival >= 0) & (rival != codes[rank][i, call.best_hit])
            if other.any():
                call.lead = float(sims[i, call.best_hit] - h.taxon_identity[other].max())
            if rank in spreads and 0 <= codes[rank][i, call.best_hit] < len(spreads[rank]):
                call.spread = float(spreads[rank][codes[rank][i, call.best_hit]])
        if rivals is not None:
            _measure_deciding_lead(h, calls, thresholds, leads or {}, rivals, embeddings[i],
                                   word_pools[i] if word_pools else None)
        out.append(decide(sims[i], calls, thresholds, leads))
    return out


def _measure_deciding_lead(hits: VerifiedHits, calls: dict[str, RankCall], thresholds: dict[str, float],
                           leads: Mapping[str, LeadRule], rivals: Rivals, embedding: np.ndarray,
                           words: np.ndarray | None) -> None:
    """Measure against the nearest references of other taxa the one lead that would make the call: that of the
    lowest rank passing by its lead rule alone, none below it passing at all (the call is the lowest rank that
    passes, :func:`clibd_cli.assign.decide`).  Where rivals undo it, the next rank up is looked at."""
    for rank in reversed(RANKS):
        call, rule = calls[rank], leads.get(rank)
        if not call.label:
            continue
        if call.score >= thresholds.get(rank, 1.0):
            return
        if rule is not None and rule.makes(call):
            if rank in RIVAL_RANKS:
                call.lead = rivals.lead(hits, call, rank, embedding, words)
            if rule.makes(call):
                return


def _flags(query: SequenceRecord, hits: VerifiedHits, assignment: Assignment, index: ReferenceIndex,
           thresholds: dict[str, float]) -> list[str]:
    flags = set(f for f in query.flags if f != "empty")
    if hits.reverse and len(hits.records):  # a strand is only "chosen" when something aligned on it
        flags.add("reverse_complement")
    if len(hits.records):
        read = len(query.sequence) - query.sequence.count("N")  # the overlap counts no column with an N
        if hits.overlap[0] < max(MIN_CALL_OVERLAP, LOW_OVERLAP_SHARE * read) and hits.overlap[0] < read:
            flags.add("low_overlap")
        close = hits.taxa[hits.taxon_identity >= thresholds.get("species", 1.0)]
        bins = {b for b in index.labels.bin[close] if b}
        if len(bins) > 1:
            flags.add("multiple_bins")
        if len({s for s in index.labels.ranks["species"][close] if s}) > 1:
            flags.add("conflict")
        top_bin = index.labels.bin[hits.records[0]]
        if top_bin and index.species_per_bin().get(top_bin, 0) > 1:
            flags.add("shared_bin")
    if assignment.status != "no_match" and assignment.support == 1:
        flags.add("single_reference")
    return [f for f in FLAGS if f in flags]


def _error_row(query: SequenceRecord, reason: str) -> dict:
    return {"query_id": query.id, "status": "error", "rank": "", **dict.fromkeys(RANKS, ""),
            "top_hit_id": "", "flags": ",".join(f for f in query.flags if f != "empty"), "error": reason}


def identify(queries: Iterable[SequenceRecord], index: ReferenceIndex, encoder: Encoder,
             thresholds: dict[str, float], options: MatchOptions = MatchOptions(),
             progress: Callable[[int], None] | None = None,
             short_reads: ShortReads | tuple | Sequence[ShortReads] | None = None,
             leads: Mapping[str, LeadRule] | None = None) -> Iterator[MatchResult]:
    """Yield a :class:`MatchResult` per query, in input order, batch by batch (errors included).

    ``short_reads``: one or more (thresholds, below_overlap[, leads]) sets for queries whose top verified hit
    overlaps fewer columns (:meth:`ReferenceIndex.short_read_thresholds`; a query takes the set with the
    lowest bound above its overlap); the others are called with ``thresholds`` and ``leads`` (the ranks' lead
    rules, :class:`clibd_cli.assign.LeadRule`).

    ``queries`` may be a stream (:class:`clibd_cli.sequences.SequenceStream`): two batches are held, the one
    being verified and called (in :class:`Verifier`'s processes) and the next one, proposed meanwhile.  A
    sequence seen earlier in the run (among the last :data:`REPEATS_KEPT` distinct ones) is neither searched
    nor aligned again: its calls are reused.  Specimens of one species often share a haplotype (a third of the
    queries of benchmarks/dna_vs_vsearch.py repeat an earlier one), and amplicon reads repeat far more;
    identical sequences get identical calls either way.
    """
    index.check_encoder(encoder)
    short_reads = _short_read_sets(short_reads)
    seen: OrderedDict[str, _Called] = OrderedDict()  # the last REPEATS_KEPT distinct sequences' calls
    last: dict[str, _Called] = {}  # the batch finished last (repeats in the next one may be in flight)
    stream = iter(queries)
    rules = _Rules(thresholds, leads, short_reads, options.neighbours, Rivals(index))
    head: list[SequenceRecord] | None
    head, failed = _next_batch(stream, options.batch_size)
    # A run that fits in one batch and whose candidates are few beside the reference's barcodes reads theirs
    # from SQLite instead of encoding every one (7 s for a million; a lookup costs LOOKUP_COST encodings).
    index.look_up_inputs = failed is None and len(head) < options.batch_size and \
        len(head) * options.candidates * LOOKUP_COST <= index.spec.counts.vectors
    _before_fork(index, rules)
    with Verifier(index, options.threads, context=rules) as verifier:
        ahead: _Batch | None = None
        while True:
            if head is not None:
                batch, head = head, None
            else:
                batch, failed = _next_batch(stream, options.batch_size)
            job = None
            if batch:
                reused = {q.sequence: seen[q.sequence] for q in batch if q.sequence in seen}
                flying = ahead.fresh if ahead is not None else {}
                fresh = {q.sequence: q for q in batch if not _problem(q) and q.sequence not in reused and
                         q.sequence not in flying}
                proposals = _propose(list(fresh.values()), index, encoder, options, words=True)
                job = _Batch(batch, reused, fresh, verifier.map(_call, proposals, options.aligned))
            if ahead is not None:
                last = ahead.finish(last)
                yield from (_row(query, last, options.top_k, index) for query in ahead.queries)
                for sequence, c in last.items():  # most recently seen last, so the oldest go first
                    seen[sequence] = c
                    seen.move_to_end(sequence)
                while len(seen) > REPEATS_KEPT:
                    seen.popitem(last=False)
                if progress is not None:
                    progress(len(ahead.queries))
            if failed is not None:
                raise failed
            if job is None:
                break
            ahead = job


def _next_batch(stream: Iterator[SequenceRecord], size: int) -> tuple[list[SequenceRecord], Exception | None]:
    """The next ``size`` queries, or (none, the error) at a bad record: the batch in flight is still written, then
    the run stops."""
    try:
        return list(islice(stream, size)), None
    except Exception as error:
        return [], error


def _problem(query: SequenceRecord) -> str:
    """Why ``query`` cannot be identified, for its error row ("" when it can)."""
    if not query.sequence:
        return "no sequence (empty after removing gaps and ambiguous ends)"
    if len(query.sequence) > MAX_QUERY_LENGTH:
        return (f"{len(query.sequence):,} bp, longer than any barcode or amplicon read ({MAX_QUERY_LENGTH:,} bp at "
                "most): cut it to the barcode region")
    return ""


def _row(query: SequenceRecord, called: Mapping[str, _Called], top_k: int, index: ReferenceIndex) -> MatchResult:
    problem = _problem(query)
    if problem:
        return MatchResult(_error_row(query, problem), [], marker=query.marker)
    c = called[query.sequence]
    return _result(query, c.hits, c.assignment, index, c.thresholds, top_k)


@dataclass
class _Batch:
    """A batch of queries on its way: the calls it reuses, and its fresh sequences' calls being made."""

    queries: list[SequenceRecord]
    reused: dict[str, _Called]
    fresh: dict[str, SequenceRecord]
    called: Callable[[], list[_Called]]

    def finish(self, previous: Mapping[str, _Called]) -> dict[str, _Called]:
        """Every sequence's calls: reused, from the batch before (``previous``), or made for this batch."""
        called = dict(self.reused)
        for sequence in {q.sequence for q in self.queries} - called.keys() - self.fresh.keys():
            if sequence in previous:
                called[sequence] = previous[sequence]
        called.update(zip(self.fresh, self.called(), strict=True))
        return called


def _call(index: ReferenceIndex, rules: _Rules, proposals: Sequence[_Proposal], aligned: int) -> list[_Called]:
    """Verify and call proposals (a :class:`Verifier` job: in its processes, which also search for the rivals of
    the calls that a lead decides, so the process proposing the next batch has only that to do)."""
    found = [verify_vectors(index, p.sequence, p.vectors, aligned) for p in proposals]
    hits = [_hits(p, f, index, rules.k) for p, f in zip(proposals, found, strict=True)]
    calls = _assign(hits, proposals, index, rules)
    return [_Called(h, assignment, used) for h, (assignment, used) in zip(hits, calls, strict=True)]


def _before_fork(index: ReferenceIndex, rules: _Rules) -> None:
    """Build what calling reads of the index before :class:`Verifier` forks (beside the records' taxa and lineage
    codes, which it builds itself), so that its processes share one copy instead of each building its own."""
    if not index.size:
        return
    for rank in SPREAD_RANKS:
        index.spreads(rank)
    if rules.rivals is not None and rules.leads:
        for rank in RIVAL_RANKS:
            rules.rivals.bounds(rank)


class _Rules(NamedTuple):
    """How a run calls: ``thresholds`` and ``leads`` (:func:`identify`), the ``short_reads`` sets (shortest
    first), ``k`` voting records, and what measures a deciding lead against other taxa
    (:class:`clibd_cli.rivals.Rivals`)."""

    thresholds: dict[str, float]
    leads: Mapping[str, LeadRule] | None
    short_reads: tuple[ShortReads, ...]
    k: int
    rivals: Rivals | None


class _Proposal(NamedTuple):
    """A query's candidates: the sequence on the chosen strand, candidate vectors (found ones only), their cosines,
    the strand, and where the search for a call's rivals starts: the sequence's embedding and, for a fragment, the
    :data:`clibd_cli.rivals.WORD_POOL` references sharing the most words with it (taken here, where the large word
    table is: the processes that call never build their own)."""

    sequence: str
    vectors: np.ndarray
    cosines: np.ndarray
    reverse: bool
    embedding: np.ndarray
    words: np.ndarray | None = None


def _jobs(proposals: Sequence[_Proposal]) -> list[tuple[str, np.ndarray]]:
    """What verification needs of each proposal: the sequence and its candidate vectors."""
    return [(p.sequence, p.vectors) for p in proposals]


def _hits(proposal: _Proposal, found: list[Alignment | None], index: ReferenceIndex, k: int) -> VerifiedHits:
    hits = ranked_hits(found, index, proposal.vectors, proposal.cosines, k)
    hits.reverse, hits.query = proposal.reverse, proposal.sequence
    return hits


def verify_queries(queries: Sequence[SequenceRecord], index: ReferenceIndex, encoder: Encoder,
                   options: MatchOptions = MatchOptions(), verifier: Verifier | None = None) -> list[VerifiedHits]:
    """Each query's verified hits, on the strand it was identified on: the evidence :func:`identify` calls
    from, for callers that assign it under thresholds of their own (calibration, threshold trade-offs).
    Queries must have a sequence; alignments run on ``verifier`` when given, else in line."""
    proposals = _propose(queries, index, encoder, options)
    found = (verifier or Verifier(index, threads=1)).submit(_jobs(proposals), options.aligned)()
    return [_hits(p, f, index, options.neighbours) for p, f in zip(proposals, found, strict=True)]


class _Called(NamedTuple):
    """A distinct query sequence's verified hits and calls, reused for its repeats."""

    hits: VerifiedHits
    assignment: Assignment
    thresholds: dict[str, float]


def _assign(hits: list[VerifiedHits], proposals: Sequence[_Proposal], index: ReferenceIndex, rules: _Rules,
            ) -> list[tuple[Assignment, dict[str, float]]]:
    """Each query's assignment and the thresholds it was called with: ``rules.thresholds`` and ``rules.leads``, or
    for a top hit overlapping fewer columns than a short-read set's ``below_overlap``, the first such set's."""
    chosen_set = [_set_for(int(h.overlap[0]), rules.short_reads) if len(h.records) else None for h in hits]
    out: list[tuple[Assignment, dict[str, float]] | None] = [None] * len(hits)
    sets = [(None, rules.thresholds, rules.leads)] + \
        [(i, s.thresholds, s.leads) for i, s in enumerate(rules.short_reads)]
    for which, used, leads in sets:
        rows = [i for i, c in enumerate(chosen_set) if c == which]
        if rows:
            chosen = assign_verified([hits[i] for i in rows], index, used, rules.k, leads=leads, rivals=rules.rivals,
                                     embeddings=[proposals[i].embedding for i in rows],
                                     word_pools=[proposals[i].words for i in rows])
            for i, a in zip(rows, chosen, strict=True):
                out[i] = (a, used)
    return out  # type: ignore[return-value]


def _propose(queries: Sequence[SequenceRecord], index: ReferenceIndex, encoder: Encoder, options: MatchOptions,
             words: bool = False) -> list[_Proposal]:
    """Per query: (sequence on the chosen strand, candidate vectors, their cosines, reverse-complemented?, embedding,
    with ``words`` a fragment's pool of references sharing words, for its rivals).

    Fragments (shorter than :data:`FRAGMENT_LENGTH`) also get the references sharing the most exact
    12-mers with them (:mod:`clibd_cli.anchors`): a 200 bp read's composition profile misses its own
    species among the nearest profiles ~5 % of the time; shared words do not.  A query longer than
    :data:`LONG_LENGTH` is cut to its :func:`barcode_region` first, and gets them too where it stays that long.
    """
    if not queries:
        return []
    forward = [barcode_region(q.sequence, index) if len(q.sequence) > LONG_LENGTH else q.sequence for q in queries]
    embedded = encoder.encode(forward)
    vectors, cosines = index.search_vectors(embedded, options.candidates, exact=options.exact,
                                            threads=options.threads)
    out = [(seq, v, c, False, e) for seq, v, c, e in zip(forward, vectors, cosines, embedded, strict=True)]
    if options.both_strands:
        reverse = [reverse_complement(s) for s in forward]
        r_embedded = encoder.encode(reverse)
        r_vectors, r_cosines = index.search_vectors(r_embedded, options.candidates, exact=options.exact,
                                                    threads=options.threads)
        for i, (seq, v, c, e) in enumerate(zip(reverse, r_vectors, r_cosines, r_embedded, strict=True)):
            if c[0] > out[i][2][0]:
                out[i] = (seq, v, c, True, e)
    proposed = []
    for seq, v, c, reverse_, e in out:
        pool = None
        if not FRAGMENT_LENGTH <= len(seq) <= LONG_LENGTH:
            sizes = (FRAGMENT_CANDIDATES, WORD_POOL) if words else (FRAGMENT_CANDIDATES,)
            extra, *pools = index.anchors().most_shared(seq, *sizes)
            pool = pools[0] if pools else None
            extra = extra[~np.isin(extra, v)]
            if len(extra):
                v = np.r_[v, extra]
                c = np.r_[c, index.vectors_of(extra) @ e]
        valid = v >= 0  # (a search finds fewer than asked for in a small index)
        proposed.append(_Proposal(seq, v[valid], c[valid], reverse_, e, pool))
    return proposed


def barcode_region(sequence: str, index: ReferenceIndex) -> str:
    """The stretch of ``sequence`` that the reference sharing the most words with it covers, along their best
    diagonal, with :data:`REGION_MARGIN` either side (as ``sequence`` reads: the reference may match the other
    strand); all of ``sequence`` where no reference matches it along a diagonal by :data:`MIN_CALL_OVERLAP`
    bases.

    Sequence beyond the barcode region (the rest of the COI gene, a mitogenome, a long read's adapters) dilutes
    a query's composition profile, and the references it should find fall out of its nearest profiles: 94 real
    barcodes of species in the reference, with 500 bp of random sequence either side, were named right 61 times,
    with 4,000 bp never (94 times either way once cut).  Cut to this stretch, a long query is searched and
    aligned as the barcode it holds; its row's ``low_overlap`` still says that the call covers only part of it.
    """
    best, region = MIN_CALL_OVERLAP - 1, sequence
    for reverse in (False, True):
        strand = reverse_complement(sequence) if reverse else sequence
        top = index.anchors().candidates(strand, 1)
        if not len(top):
            continue
        target, query = index.input_codes(top)[0], base_codes(strand)
        shift = diagonals(query, [target])[0]
        found = ungapped_many(query, [target], [shift])[0]
        if found is None or found.matches <= best:
            continue
        cut = strand[max(0, -shift - REGION_MARGIN) : max(0, len(target) - shift + REGION_MARGIN)]
        best, region = found.matches, reverse_complement(cut) if reverse else cut
    return region


def _result(query: SequenceRecord, hits: VerifiedHits, assignment: Assignment, index: ReferenceIndex,
            thresholds: dict[str, float], top_k: int) -> MatchResult:
    ids, bins = index.labels.record_id[hits.records], index.labels.bin[hits.records]
    voters = hits.taxa[: hits.voters]  # the columns the assignment's hit indices point at
    row = result_row(query.id, assignment, index.labels.record_id[voters], index.labels.bin[voters],
                     _flags(query, hits, assignment, index, thresholds))
    has = len(hits.records) > 0
    row["identity"] = round(100 * float(hits.identity[0]), 2) if has else float("nan")
    row["overlap"] = int(hits.overlap[0]) if has else ""
    row["top_hit_similarity"] = float(hits.cosine[0]) if has else float("nan")
    for rank in RANKS:
        best = assignment.calls[rank].best_hit if rank in assignment.calls else -1
        row[f"{rank}_identity"] = round(100 * float(hits.taxon_identity[best]), 2) if best >= 0 and \
            assignment.labels[rank] else float("nan")
    taxonomy = {rank: index.labels.ranks[rank][hits.records] for rank in RANKS}
    out_hits = [{"query_id": query.id, "hit_rank": j + 1, "hit_id": ids[j], "similarity": float(hits.cosine[j]),
                 "identity": round(100 * float(hits.identity[j]), 2), "overlap": int(hits.overlap[j]),
                 **{rank: taxonomy[rank][j] for rank in RANKS}, "bin": bins[j]}
                for j in range(min(top_k, len(hits.records)))]
    return MatchResult(row, out_hits, query.sequence, query.marker)


def result_row(query_id: str, assignment: Assignment, hit_ids: np.ndarray, hit_bins: np.ndarray,
               flags: Sequence[str] = ()) -> dict:
    """The output row (columns as :data:`clibd_cli.report.COLUMNS`)."""
    top = assignment.top_hit
    row = {"query_id": query_id, "status": assignment.status, "rank": assignment.rank,
           **assignment.labels, **{f"{rank}_score": assignment.scores[rank] for rank in RANKS},
           "top_hit_id": hit_ids[top] if top >= 0 else "",
           "top_hit_similarity": assignment.top_similarity,
           "bin": "", "support": assignment.support, "flags": ",".join(flags)}
    if assignment.status == "assigned":
        best = assignment.calls["species"].best_hit
        row["bin"] = hit_bins[best] if best >= 0 else ""
    return row


def assign_vectors(query_ids: Sequence[str], vectors: np.ndarray, index: ReferenceIndex,
                   thresholds: dict[str, float], options: MatchOptions = MatchOptions(),
                   empty: np.ndarray | None = None) -> list[tuple[MatchResult, Assignment]]:
    """Search and assign a batch of query embeddings (any modality the index's space accepts).

    ``empty`` marks queries with nothing to compare (no sequence): they get no hits.
    """
    found = index.search(vectors, max(options.neighbours, options.top_k), exact=options.exact,
                         threads=options.threads)
    taxonomy = index.taxonomy_of(found.labels)
    safe = np.where(found.labels > 0, found.labels - 1, 0)
    ids = np.where(found.labels > 0, index.labels.record_id[safe], "")
    bins = np.where(found.labels > 0, index.labels.bin[safe], "")
    k = options.neighbours
    sims_k = found.similarities[:, :k].copy()
    if empty is not None:
        sims_k[empty] = -np.inf
    codes = {rank: c[:, :k] for rank, c in index.lineage_codes_of(found.labels).items()}
    assignments = assign_batch(sims_k, {rank: taxonomy[rank][:, :k] for rank in RANKS}, thresholds,
                               options.tau, codes=codes)
    out = []
    for i, (query_id, assignment) in enumerate(zip(query_ids, assignments, strict=True)):
        sims = found.similarities[i]
        hits = [{"query_id": query_id, "hit_rank": j + 1, "hit_id": ids[i][j],
                 "similarity": float(sims[j]), **{rank: taxonomy[rank][i][j] for rank in RANKS},
                 "bin": bins[i][j]}
                for j in range(min(options.top_k, len(sims))) if np.isfinite(sims[j])]
        out.append((MatchResult(result_row(query_id, assignment, ids[i][:k], bins[i][:k]), hits), assignment))
    return out


# ---------------------------------------------------------------------------------------------
# The workflow


@dataclass
class MatchRun:
    """One identification run, prepared: queries streaming, the index open, thresholds fixed.

    Made by :meth:`open`; :meth:`results` yields a :class:`MatchResult` per query (one batch in memory,
    whatever the size of the query files), :meth:`finish` adds the notes only a finished stream can give.
    :attr:`info` is what an output file records about the run, :attr:`identity` the part of it that a
    resumed output must share (:class:`clibd_cli.runs.RunOutput`).
    """

    stream: SequenceStream
    opened: OpenIndex
    thresholds: dict[str, float]
    thresholds_from: str
    overrides: dict[str, float]
    options: MatchOptions
    notes: Notes
    _pending: Iterator[SequenceRecord] = field(repr=False)
    short_reads: tuple[ShortReads, ...] = ()
    """The index's thresholds (and lead rules) for queries whose top hit overlaps less, shortest first."""
    leads: dict[str, LeadRule] = field(default_factory=dict)
    """The index's lead rules (calibrated with its thresholds; none with the conventional cut-offs or for a
    rank whose threshold is overridden)."""

    @classmethod
    def open(cls, queries: str | Path | Iterable[str | Path], index: str | Path | OpenIndex, *,
             options: MatchOptions | None = None, thresholds: str = "calibrated",
             overrides: dict[str, float] | None = None, kmer: int | None = None,
             model: str | Path | ModelBundle | None = None, device: str = "auto", int8: bool = False,
             reading: ReadOptions = ReadOptions(), notify: Notes | Listener | None = None) -> MatchRun:
        """Open query files (FASTA, BOLD/BIOSCAN TSV/CSV, Parquet; ``-`` for standard input) and the index.

        ``index``: an index folder, a reference file (embedded into a temporary index calibrated on
        itself) or an :class:`~clibd_cli.references.OpenIndex` already open.  ``thresholds``:
        ``calibrated`` (the index's) or ``conventional`` (identity 97/95/90/85 %); ``overrides`` set single
        ranks.  ``model``: a bundle whose DNA encoder proposes candidates (default: the k-mer profile).
        An unreadable query file fails here, before any output exists.
        """
        from clibd_cli.align import CONVENTIONAL
        from clibd_cli.models import load_model
        from clibd_cli.references import OpenIndex, open_index
        from clibd_cli.sequences import QCConfig

        if thresholds not in THRESHOLD_SOURCES:
            raise ClibdError(f"--thresholds {thresholds!r}: use calibrated or conventional.")
        notes, overrides = as_notes(notify), dict(overrides or {})
        stream = SequenceStream(paths_of(queries), id_column=reading.id_column,
                                sequence_column=reading.sequence_column, qc=QCConfig(min_length=reading.min_length),
                                skip_empty=False, marker=reading.marker)
        records = iter(stream)
        first = list(islice(records, 1))
        if isinstance(index, OpenIndex):
            opened = index
        else:
            bundle = load_model(model, device, int8)
            opened = open_index(index, kmer=kmer, bundle=bundle, reading=reading, notes=notes)
        base = dict(CONVENTIONAL) if thresholds == "conventional" else opened.index.thresholds
        provenance = "conventional identity cut-offs" if thresholds == "conventional" else \
            opened.index.manifest.get("calibration", {}).get("method", "")
        short = opened.index.short_read_thresholds() if thresholds == "calibrated" else ()
        # never looser than the main set, which `clibd calibrate --queries` may have raised since
        short_reads = tuple(ShortReads({**{rank: max(value, base[rank]) for rank, value in s.thresholds.items()},
                                        **overrides}, s.below_overlap, _without(s.leads, overrides), s.window)
                            for s in short)
        leads = _without(opened.index.leads, overrides) if thresholds == "calibrated" else {}
        return cls(stream, opened, {**base, **overrides}, provenance, overrides, options or MatchOptions(), notes,
                   chain(first, records), short_reads, leads)

    @property
    def info(self) -> dict[str, Any]:
        """The run as an output file records it (encoder, index, thresholds and where they come from…)."""
        index, options = self.opened.index, self.options
        return {"clibd_version": __version__, "encoder": index.encoder_description,
                "encoder_fingerprint": self.opened.encoder.fingerprint, "index_fingerprint": index.fingerprint,
                "index": str(self.opened.path), "thresholds": self.thresholds,
                "thresholds_from": self.thresholds_from, "overrides": self.overrides, "score": SCORE,
                "neighbours": options.neighbours, "candidates": options.candidates,
                "search": index.search_description(),
                **({"leads": _leads_info(self.leads)} if self.leads else {}),
                **({"short_read_thresholds": [_short_reads_info(s) for s in self.short_reads]}
                   if self.short_reads else {})}

    @property
    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its --resume (or their calls would not be comparable)."""
        info = self.info
        return {k: info[k] for k in ("encoder_fingerprint", "index_fingerprint", "thresholds", "leads", "neighbours",
                                     "candidates", "short_read_thresholds") if k in info}

    def results(self, skip: Iterable[str] = (), progress: Callable[[int], None] | None = None,
                ) -> Iterator[MatchResult]:
        """A :class:`MatchResult` per query not in ``skip`` (ids already done), in input order."""
        skip = set(skip)
        todo = (q for q in self._pending if q.id not in skip)
        return identify(todo, self.opened.index, self.opened.encoder, self.thresholds, self.options,
                        progress=progress, short_reads=self.short_reads, leads=self.leads)

    def finish(self) -> Notes:
        """Add what the exhausted query stream left out (rows of other markers) to the notes; all notes."""
        stream = self.stream
        if stream.skipped_marker:
            others = ", ".join(f"{name} {count:,}" for name, count in stream.other_markers.items())
            self.notes.note(f"{stream.skipped_marker:,} query rows of other markers ({others}) were left out; "
                            f"kept {stream.marker}. Choose with --marker.")
        return self.notes


def _without(leads: Mapping[str, LeadRule] | None, overrides: Mapping[str, float]) -> dict[str, LeadRule]:
    """The lead rules of the ranks whose threshold the user did not set: ``--threshold genus=0.95`` means 0.95."""
    return {rank: rule for rank, rule in (leads or {}).items() if rank not in overrides}


def _short_reads_info(short: ShortReads) -> dict[str, Any]:
    """A short-read set as an output's ``info`` records it."""
    return {"thresholds": short.thresholds, "below_overlap": short.below_overlap,
            **({"window": short.window} if short.window else {}),
            **({"leads": _leads_info(short.leads)} if short.leads else {})}


def _leads_info(leads: Mapping[str, LeadRule]) -> dict[str, dict[str, float]]:
    """Lead rules as an output's ``info`` records them."""
    return {rank: rule.as_info() for rank, rule in leads.items()}
