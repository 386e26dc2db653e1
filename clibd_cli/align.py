"""Verify candidate references by pairwise alignment: percent identity over the aligned overlap.

k-mer profiles find the right neighbourhood, but their cosine tracks sequence identity only above
~95 %: below it (a species missing from the reference, a fragment, noise) a composition profile can
sit closer to a beetle than to the mosquito's own genus.  Every barcoding lab reasons in identity,
so the calls are made on it: each candidate is aligned to the query with Opal's SIMD aligner
(pyopal, binary wheels for Linux, macOS and Windows) in *overlap* mode, where end gaps on both
sequences are free, so a 313 bp Leray fragment aligns inside a full 658 bp barcode and a full query
over a fragment reference without penalty.

Identity follows VSEARCH's default definition (``--iddef 2``): identical columns divided by the
alignment columns between the first and the last column where both sequences have a base, internal
gaps included, end overhangs excluded, except that a column where either sequence has an ``N`` counts
neither way: identity is over the bases both sequences read.  ``overlap`` is the number of those columns.
BOLD and GenBank records fill a gap in the read with Ns (200 in a row is common): counted as mismatches,
as they once were here, they put a barcode 99 % identical over its 450 read bases at 67 % and left it
unidentified; VSEARCH counts them as matches (100 %), which claims bases nobody read.  Scores are
BLASTN's defaults (match 2, mismatch -3, gap open 5, extend 2); measured against Biopython's
``PairwiseAligner`` in the same scoring and mode, the identities agree exactly on real barcodes (same
species, same genus, other family, 313 bp and 200 bp fragments; tests/test_align.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

MATCH, MISMATCH, GAP_OPEN, GAP_EXTEND = 2, -3, 5, 2
# The identity cut-offs barcoding labs customarily report (species / genus / family / order), as fractions.
CONVENTIONAL = {"order": 0.85, "family": 0.90, "genus": 0.95, "species": 0.97}
ALPHABET = "ACGTN"
_CIGAR = re.compile(r"(\d+)([MIDNSHP=X])")
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
_local = threading.local()


class Alignment(NamedTuple):
    """One query-target alignment: identity as a fraction (0–1) and the overlap in columns.

    ``coverage`` is the overlap as a share of the shorter sequence.  With free end gaps, two unrelated
    sequences align best as a few bases overhanging each other's ends (100 % identity over 2 columns):
    identity means nothing without coverage, so calls use only hits that cover most of the shorter one.
    Columns with an N (``unknown``) are not part of the overlap, so a reference that read a third of the
    query's stretch is not a hit however identical that third is, and does not outrank one that read it all.
    """

    identity: float
    overlap: int
    matches: int
    coverage: float = 1.0
    unknown: int = 0


@lru_cache(maxsize=1)
def _aligner():
    import pyopal
    import scoring_matrices

    matrix = [[0 if "N" in (a, b) else (MATCH if a == b else MISMATCH) for b in ALPHABET] for a in ALPHABET]
    return pyopal.Aligner(scoring_matrices.ScoringMatrix(matrix, alphabet=ALPHABET), gap_open=GAP_OPEN,
                          gap_extend=GAP_EXTEND)


def reverse_complement(sequence: str) -> str:
    """The other strand of a normalised sequence (A, C, G, T, N)."""
    return sequence.translate(_COMPLEMENT)[::-1]


def align_many(query: str, targets: Sequence[str]) -> list[Alignment]:
    """Align ``query`` to every target (overlap mode); results in target order."""
    if not query or not targets:
        return [Alignment(0.0, 0, 0) for _ in targets]
    import pyopal

    aligner = _aligner()
    database = pyopal.Database(list(targets), alphabet=aligner.alphabet)
    q = np.frombuffer(query.encode(), dtype=np.uint8)
    out: list[Alignment | None] = [None] * len(targets)
    for result in aligner.align(query, database, mode="full", algorithm="ov"):
        t = np.frombuffer(targets[result.target_index].encode(), dtype=np.uint8)
        found = _stats(result.cigar(), q, t, result.query_start, result.target_start)
        out[result.target_index] = _covering(found, len(q), len(t))
    return [a if a is not None else Alignment(0.0, 0, 0, 0.0) for a in out]


def _covering(alignment: Alignment, query_length: int, target_length: int) -> Alignment:
    shorter = max(1, min(query_length, target_length))
    return alignment._replace(coverage=alignment.overlap / shorter)


def _stats(cigar: str, q: np.ndarray, t: np.ndarray, qi: int, ti: int) -> Alignment:
    """Identity and overlap from a SAM CIGAR (I = query only, D = target only), end overhangs trimmed, columns
    with an N apart."""
    ops = [(op if op not in "=X" else "M", int(n)) for n, op in _CIGAR.findall(cigar)]
    start, end = 0, len(ops)
    while start < end and ops[start][0] != "M":
        if ops[start][0] == "I":
            qi += ops[start][1]
        elif ops[start][0] == "D":
            ti += ops[start][1]
        start += 1
    while end > start and ops[end - 1][0] != "M":
        end -= 1
    columns = matches = unknown = 0
    n_code = ord("N")
    for op, n in ops[start:end]:
        if op == "M":
            a, b = q[qi : qi + n], t[ti : ti + n]
            read = (a != n_code) & (b != n_code)
            matches += int(((a == b) & read).sum())
            unknown += n - int(read.sum())
            qi += n
            ti += n
        elif op == "I":
            qi += n
        elif op == "D":
            ti += n
        else:
            continue
        columns += n
    read = columns - unknown
    return Alignment(matches / read if read else 0.0, read, matches, unknown=unknown)


# ---------------------------------------------------------------------------------------------
# Many candidates per query: an ungapped fast path, full alignment where it matters

ANCHOR_K = 10  # 4^10 table entries (4 MB); a random 10-mer hit is rare in a 658 bp query
FAST_IDENTITY = 0.90  # measured: full-overlap diagonals ≥ 86 % are within 0.45 point of the alignment (99 %)
NEAR_IDENTITY = 0.97  # once a hit this close is verified, far candidates need no alignment
ALIGN_BATCH = 4
FAST_END_SLACK = 12  # a diagonal segment this much shorter than the possible overlap hides an indel


_LOOKUP = np.full(256, 4, dtype=np.uint8)
_LOOKUP[np.frombuffer(b"ACGT", dtype=np.uint8)] = np.arange(4, dtype=np.uint8)


def base_codes(sequence: str) -> np.ndarray:
    """Bases as 0-3 (N = 4)."""
    return _LOOKUP[np.frombuffer(sequence.encode(), dtype=np.uint8)]


def bases_of(codes: np.ndarray) -> str:
    """The sequence behind :func:`base_codes` (a normalised sequence holds A, C, G, T and N only)."""
    return _LETTERS[codes].tobytes().decode("ascii")


_LETTERS = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)


def _kmers(codes: np.ndarray, k: int = ANCHOR_K) -> np.ndarray:
    """Integer code of every k-mer starting at each position (-1 where it holds an N); int32 up to k = 15.

    Built by doubling (:func:`_doubled`): a handful of array passes instead of k.
    """
    dtype = np.int32 if k <= 15 else np.int64
    if len(codes) < k:
        return np.empty(0, dtype=dtype)
    value = _doubled((codes & 3).astype(dtype), k, lambda a, b, width: (a << (2 * width)) | b)
    unknown = codes == 4
    if unknown.any():  # (most barcodes hold no N: no second pass)
        value[_doubled(unknown, k, lambda a, b, width: a | b)] = -1
    return value


def _doubled(single: np.ndarray, k: int, join: Callable[[np.ndarray, np.ndarray, int], np.ndarray]) -> np.ndarray:
    """``join`` applied over every window of k: windows of 1, 2, 4, 8… joined two by two, then the largest
    that fit joined up to k (a handful of array passes instead of k).  ``join(a, b, width)`` puts window
    ``b`` of ``width`` after ``a``."""
    parts = {1: single}
    width = 1
    while 2 * width <= k:
        part = parts[width]
        parts[2 * width] = join(part[:-width], part[width:], width)
        width *= 2
    value, done = parts[width], width
    for size in sorted(parts, reverse=True):  # the rest of k, largest part first
        if done + size <= k:
            value = join(value[: len(value) - size], parts[size][done:], size)
            done += size
    return value[: len(single) - k + 1]


def _anchor_table() -> np.ndarray:
    """A per-thread table k-mer code → query position (-1 = not in the query), reused across queries.

    One entry more than there are k-mers: a k-mer holding an N (code -1) reads the last one, always -1.
    """
    table = getattr(_local, "table", None)
    if table is None:
        table = _local.table = np.full(4**ANCHOR_K + 1, -1, dtype=np.int32)
    return table


def diagonals(query: np.ndarray, targets: Sequence[np.ndarray], k: int = ANCHOR_K) -> list[int | None]:
    """Per target, the shift (target position − query position) that most shared k-mers agree on.

    Only k-mers that occur once in the query anchor (repeats say nothing about position); a target
    without a shared k-mer gets None.  The query's k-mers go into a direct lookup table, so all
    targets' k-mers are looked up in one gather.
    """
    out: list[int | None] = [None] * len(targets)
    values, first, counts = np.unique(_kmers(query, k), return_index=True, return_counts=True)
    keep = (counts == 1) & (values >= 0)
    values, first = values[keep], first[keep]
    longest = max((len(t) for t in targets), default=0)
    if not len(values) or longest < k:
        return out
    # the targets end to end, k - 1 N between two, so that no k-mer spans two of them
    lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=len(targets))
    starts = np.r_[0, np.cumsum(lengths + k - 1)[:-1]]
    joined = np.full(int(starts[-1] + lengths[-1]), 4, dtype=np.uint8)
    for start, target in zip(starts.tolist(), targets, strict=True):
        joined[start : start + len(target)] = target
    table = _anchor_table() if k == ANCHOR_K else np.full(4**k + 1, -1, dtype=np.int32)
    table[values] = first
    try:
        anchor = np.take(table, _kmers(joined, k))
    finally:
        table[values] = -1
    found = np.flatnonzero(anchor >= 0)
    if not len(found):
        return out
    # votes per (target, diagonal) counted in a dense table (a few dozen targets × ~1,300 diagonals), not
    # sorted; per target, the diagonal with the most votes (argmax: the first, i.e. smallest shift, on a tie)
    owner = np.repeat(np.arange(len(targets), dtype=np.int64), lengths + k - 1)[found]
    shift = found - starts[owner] - anchor[found]
    offset = int(shift.min())
    span = int(shift.max()) - offset + 1
    votes = np.bincount(owner * span + (shift - offset), minlength=len(targets) * span).reshape(len(targets), span)
    best = votes.argmax(axis=1)
    for t in np.flatnonzero(votes[np.arange(len(targets)), best] > 0).tolist():
        out[t] = int(best[t]) + offset
    return out


# Column score by (target base, query base), the target base 5 where the diagonal leaves the target
_SCORES = np.array([[0 if 5 in (a, b) or 4 in (a, b) else (MATCH if a == b else MISMATCH) for b in range(5)]
                    for a in range(6)], dtype=np.int8).ravel()


def ungapped_many(query: np.ndarray, targets: Sequence[np.ndarray], shifts: Sequence[int | None],
                  ) -> list[Alignment | None]:
    """The best-scoring stretch of each target's diagonal, as overlap alignment scores it (None: no shift).

    With free end gaps a terminal mismatch scores less than leaving the end unaligned, so along one
    diagonal the alignment is its maximum-scoring segment: identity and overlap over that segment.
    All targets at once: each one's diagonal laid under the query as a row of one matrix, 5 where it
    leaves the target.  Columns there score 0, so the best segment (the first maximum, begun after the
    last minimum before it) never includes them.
    """
    rows = [i for i, shift in enumerate(shifts) if shift is not None]
    out: list[Alignment | None] = [None] * len(targets)
    n = len(query)
    if not rows or not n:
        return out
    under = np.full((len(rows), n), 5, dtype=np.uint8)
    for r, i in enumerate(rows):
        shift, target = shifts[i], targets[i]
        lo, hi = max(0, -shift), min(n, len(target) - shift)
        if hi > lo:
            under[r, lo:hi] = target[lo + shift : hi + shift]
    score = _SCORES[under * 5 + query[None, :]]
    total = np.zeros((len(rows), n + 1), dtype=np.int32)
    np.cumsum(score, axis=1, dtype=np.int32, out=total[:, 1:])
    low = np.minimum.accumulate(total, axis=1)
    stop = np.argmax(total - low, axis=1)
    each = np.arange(len(rows))
    at_low = (total == low[each, stop][:, None]) & (np.arange(n + 1)[None, :] <= stop[:, None])
    begin = n - np.argmax(at_low[:, ::-1], axis=1)
    # score = 2 matches - 3 mismatches over columns without an N: matches follow from score and columns
    columns = stop - begin
    matches = (total[each, stop] - total[each, begin] - MISMATCH * columns) // (MATCH - MISMATCH)
    blank = np.zeros(len(rows), dtype=np.int64)
    unknown = np.flatnonzero((under == 4).any(axis=1)) if not (query == 4).any() else each
    if len(unknown):  # an N scores 0 and is neither match nor mismatch: count both
        these = np.arange(len(unknown))
        for kind, counts in ((MATCH, matches), (0, blank)):
            running = np.zeros((len(unknown), n + 1), dtype=np.int32)
            np.cumsum(score[unknown] == kind, axis=1, dtype=np.int32, out=running[:, 1:])
            counts[unknown] = running[these, stop[unknown]] - running[these, begin[unknown]]
    for r, i in enumerate(rows):
        c, u = max(int(columns[r]), 0), int(blank[r])
        out[i] = Alignment(int(matches[r]) / (c - u) if c > u else 0.0, c - u, int(matches[r]), unknown=u)
    return out


def diagonal_overlap(query_length: int, target_length: int, shift: int | None) -> int:
    """Columns where both sequences have a base along the diagonal ``shift`` (target position − query position).

    The whole overlap two staggered barcodes allow (one begins earlier, the other ends later) is less than the
    shorter one's length: a diagonal that spans it holds no indel just as one spanning a contained sequence does.
    """
    if shift is None:
        return 0
    return max(0, min(query_length, target_length - shift) - max(0, -shift))


class _Spelled(Sequence[str]):
    """Targets as sequences, spelled from their base codes when one is asked for."""

    def __init__(self, codes: Sequence[np.ndarray]) -> None:
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):  # type: ignore[override]
        return bases_of(self.codes[i])


def verify(query: str, targets: Sequence[str] | None, full: int = 10, margin: float = 0.03,
           codes: Sequence[np.ndarray] | None = None) -> list[Alignment | None]:
    """Identity of ``query`` to each target: from one diagonal where that is the alignment, else aligned.

    A target that matches the query along one diagonal at ≥ :data:`FAST_IDENTITY`, over (nearly) the
    whole overlap the two sequences allow, needs no alignment: COI is coding, indels are rare, and on
    real BOLD pairs such diagonals give the optimal overlap alignment's identity for 87 % of them and
    are within 0.45 point of it for 99 % (35,156 pairs of the held-out queries of
    benchmarks/dna_vs_vsearch.py against Opal; tests/test_align.py checks against Biopython).  The
    others (indels, distant or unrelated sequences) are aligned with Opal (overlap mode, all in one call)
    and taken in the order of their diagonal identity, four at a time, at most ``full`` of them; once a
    hit at ≥ :data:`NEAR_IDENTITY` is verified, only while that estimate is within ``margin`` of the
    best: a hit three points below it weighs e^-3 of it in the vote.  Targets left out are ``None`` (not
    verified).  ``codes``: the targets' :func:`base_codes`, when the caller has them already (``targets``
    may then be None: the few that are aligned are spelled from their codes).
    """
    q = base_codes(query)
    if targets is None:
        targets = _Spelled(codes)
    elif codes is None:
        codes = [base_codes(t) for t in targets]
    shifts = diagonals(q, codes)
    fast = [_covering(a, len(q), len(t)) if a is not None else None
            for a, t in zip(ungapped_many(q, codes, shifts), codes, strict=True)]
    out: list[Alignment | None] = [a if a is not None and a.identity >= FAST_IDENTITY and
                                   a.overlap + a.unknown >= diagonal_overlap(len(q), len(t), shift) - FAST_END_SLACK
                                   else None
                                   for a, t, shift in zip(fast, codes, shifts, strict=True)]
    # A diagonal segment over most of the overlap estimates the identity (an indel splits the diagonal,
    # the larger part survives); a sliver (a chance anchor in an unrelated sequence) estimates nothing.
    estimate = {i: (fast[i].identity * (1.0 if fast[i].coverage >= 0.5 else fast[i].coverage)
                    if fast[i] is not None else 0.0) for i, a in enumerate(out) if a is None}
    pending = sorted(estimate, key=lambda i: -estimate[i])
    best = max((a.identity for a in out if a is not None and a.coverage >= 0.5), default=0.0)
    # The batches of ALIGN_BATCH can only take a prefix of ``pending`` (sorted by estimate), at most ``full`` long,
    # whose estimates pass the first batch's floor (the floor only rises).  That prefix is aligned in one Opal call,
    # whose score pass costs about as much for one target as for five (its SIMD lanes hold targets), not in one call
    # per batch; each batch then keeps those of its targets that pass the floor its predecessors raised (a prefix of
    # it, the rest aligned for nothing), and a batch cut short ends them.
    floor = best - margin if best >= NEAR_IDENTITY else -1.0
    chosen = [i for i in pending[:full] if estimate[i] >= floor]
    aligned = align_many(query, [targets[i] for i in chosen]) if chosen else []
    for start in range(0, len(chosen), ALIGN_BATCH):
        floor = best - margin if best >= NEAR_IDENTITY else -1.0
        batch = [(i, a) for i, a in zip(chosen[start : start + ALIGN_BATCH], aligned[start : start + ALIGN_BATCH],
                                        strict=True) if estimate[i] >= floor]
        for i, alignment in batch:
            out[i] = alignment
            if alignment.coverage >= 0.5:
                best = max(best, alignment.identity)
        if len(batch) < ALIGN_BATCH:
            break
    return out
