"""Alignment verification: identity and overlap against an independent Biopython alignment."""

from __future__ import annotations

import numpy as np
import pytest
from Bio import Align
from conftest import mutate, random_sequence, shared_path

from clibd_cli.align import GAP_EXTEND, GAP_OPEN, MATCH, MISMATCH, align_many, reverse_complement, verify
from clibd_cli.sequences import read_sequences


def biopython_identity(query: str, target: str) -> tuple[float, int]:
    """Overlap alignment (free end gaps) in the same scoring; identity over the columns where both have bases,
    those with an N in either apart."""
    aligner = Align.PairwiseAligner(mode="global", match_score=MATCH, mismatch_score=MISMATCH,
                                    open_gap_score=-GAP_OPEN, extend_gap_score=-GAP_EXTEND)
    aligner.end_gap_score = 0
    alignment = aligner.align(query, target)[0]
    top, bottom = alignment[0], alignment[1]
    both = [i for i in range(len(top)) if top[i] != "-" and bottom[i] != "-"]
    columns = range(both[0], both[-1] + 1)
    read = [i for i in columns if "N" not in (top[i], bottom[i])]
    matches = sum(top[i] == bottom[i] for i in read)
    return matches / len(read), len(read)


def test_identity_of_constructed_pairs():
    rng = np.random.default_rng(3)
    base = random_sequence(rng, 600)
    (same,) = align_many(base, [base])
    assert same.identity == 1.0 and same.overlap == 600
    changed = list(base)
    for site in range(10, 600, 20):  # 30 substitutions, none at the ends
        changed[site] = "A" if base[site] != "A" else "C"
    (substituted,) = align_many(base, ["".join(changed)])
    assert substituted.overlap == 600 and substituted.identity == pytest.approx(570 / 600)
    fragment = base[-313:]  # the Leray fragment sits inside the full barcode without end penalties
    (inside,) = align_many(fragment, [base])
    assert inside.identity == 1.0 and inside.overlap == 313
    deleted = base[:300] + base[303:]  # a codon deletion: one internal gap of 3 columns
    (gapped,) = align_many(deleted, [base])
    assert gapped.overlap == 600 and gapped.identity == pytest.approx(597 / 600)
    shuffled = "".join(rng.permutation(list(base)))
    (unrelated,) = align_many(shuffled, [base])  # unrelated sequences: a high identity over a sliver only
    assert unrelated.identity < 0.8 or unrelated.coverage < 0.1
    assert reverse_complement("AACGTN") == "NACGTT"


def test_a_run_of_n_counts_neither_as_match_nor_as_mismatch():
    """BOLD fills a gap in a read with Ns: 200 of them in a barcode 99 % identical over its read bases once made
    it 67 % identical and unidentified.  Identity is over the bases both read, on the diagonal path, in Opal
    and in Biopython alike; the overlap counts those bases."""
    rng = np.random.default_rng(8)
    base = random_sequence(rng, 658)
    changed = list(base)
    for site in (30, 90, 150, 500, 600):
        changed[site] = "A" if base[site] != "A" else "C"
    gapped = "".join(changed[:250]) + "N" * 200 + "".join(changed[450:])
    expected = (458 - 5) / 458
    (aligned,) = align_many(gapped, [base])
    (quick,) = verify(gapped, [base], full=0)
    for found in (aligned, quick):
        assert found is not None
        assert found.identity == pytest.approx(expected) and found.overlap == 458 and found.unknown == 200
        assert found.coverage == pytest.approx(458 / 658)  # a hit (over half), of what both read
    (mostly_unread,) = align_many(base[:250] + "N" * 380 + base[630:], [base])
    assert mostly_unread.identity == 1.0 and mostly_unread.coverage < 0.5  # identical, but over 278 of 658 bases
    assert biopython_identity(gapped, base) == (pytest.approx(expected), 458)
    assert biopython_identity(base, gapped) == (pytest.approx(expected), 458)  # an N in the reference alike


def test_fast_path_agrees_with_alignment():
    """verify() skips alignment along one diagonal only where that is the alignment; indels are aligned."""
    rng = np.random.default_rng(5)
    base = random_sequence(rng, 650)
    targets = [mutate(base, 0.01, rng), mutate(base, 0.02, rng)[40:], base[:200] + base[203:],
               mutate(base, 0.15, rng), random_sequence(rng, 650)]
    fast, full = verify(base, targets, full=10, margin=1.0), align_many(base, targets)
    for quick, aligned in zip(fast, full, strict=True):
        assert quick is not None
        assert abs(quick.identity - aligned.identity) <= 0.003 and abs(quick.overlap - aligned.overlap) <= 2
    near = verify(base, targets)  # with 99 % hits verified, targets far below them are not aligned
    assert near[:3] == fast[:3] and near[3] is None and near[4] is None
    limited = verify(base, targets, full=1, margin=1.0)  # only the best of the non-obvious targets gets aligned
    assert limited[2] is not None and limited[3] is None and limited[4] is None
    assert limited[0] == fast[0] and limited[1] == fast[1]  # the diagonal ones needed no alignment


def test_a_querys_alignments_are_one_opal_call_and_the_batches_still_decide(monkeypatch):
    """The targets a query may align go to Opal in one call; what the batches of four keep is unchanged: once the
    first batch verifies a 99.5 % hit, a fifth target estimated some 8 points below it is turned away (None, though it
    was aligned), and one within the margin is kept, with the identity it gets aligned alone."""
    import clibd_cli.align as align

    rng = np.random.default_rng(21)
    base = random_sequence(rng, 650)

    def with_indel(at: int, rate: float = 0.0) -> str:  # an indel splits the diagonal: the fast path cannot
        return mutate(base[:at] + base[at + 3 :], rate, rng)  # verify it (its longer part estimates the identity)

    calls = []

    def counted(query, targets):
        calls.append(len(targets))
        return align_many(query, targets)

    monkeypatch.setattr(align, "align_many", counted)
    close = [with_indel(at) for at in (230, 250, 270, 290)]  # 99.5 %, estimated 100 %
    for fifth, kept in ((with_indel(260, 0.08), False), (with_indel(260, 0.015), True)):
        calls.clear()
        found = verify(base, [*close, fifth], full=5)
        assert calls == [5]  # one call, the fifth included
        assert [a.identity for a in found[:4]] == [align_many(base, [t])[0].identity for t in close]
        assert min(a.identity for a in found[:4]) >= 0.97
        assert (found[4] == align_many(base, [fifth])[0]) if kept else found[4] is None
    calls.clear()
    assert sum(a is not None for a in verify(base, close, full=2)) == 2 and calls == [2]  # at most ``full``


def test_staggered_barcodes_need_no_alignment():
    """Two barcodes that overlap staggered (one starts earlier, the other ends later) match along one diagonal
    over the whole overlap they allow, shorter than either: that diagonal is their alignment, found without one."""
    from clibd_cli.align import diagonal_overlap

    assert diagonal_overlap(560, 560, 90) == 470 and diagonal_overlap(560, 560, -90) == 470
    assert diagonal_overlap(313, 658, 345) == 313 and diagonal_overlap(658, 313, -345) == 313
    assert diagonal_overlap(100, 100, 150) == 0 and diagonal_overlap(100, 100, None) == 0
    rng = np.random.default_rng(8)
    base = random_sequence(rng, 650)
    query, targets = base[:560], [mutate(base[90:], 0.01, rng), mutate(base, 0.02, rng)[:480]]
    quick = verify(query, targets, full=0)  # nothing may be aligned
    for found, aligned in zip(quick, align_many(query, targets), strict=True):
        assert found is not None and found.overlap < 560
        assert abs(found.identity - aligned.identity) <= 0.003 and abs(found.overlap - aligned.overlap) <= 2
    shifted = base[:300] + base[303:560]  # an indel is still aligned: its diagonal spans half the overlap
    assert verify(shifted, targets[:1], full=0) == [None]


def test_identity_matches_biopython_on_real_barcodes():
    data = shared_path("bold_insect_coi_dev.tsv.gz")
    if not data.exists():
        pytest.skip(f"{data} not available (real BOLD barcodes)")
    records = read_sequences([data]).records
    rng = np.random.default_rng(11)
    by_species: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_species.setdefault(r.label("species"), []).append(i)
    differences = []
    for i in rng.choice(len(records), 25, replace=False):
        query = records[i].sequence
        targets = [records[j].sequence for j in rng.choice(by_species[records[i].label("species")], 2)] + \
                  [records[j].sequence for j in rng.choice(len(records), 2)]
        for q in (query, query[-313:], query[:200]):
            for target, found in zip(targets, verify(q, targets, full=10, margin=1.0), strict=True):
                if found.coverage < 0.5:  # not homologous over most of the shorter one: never used in calls
                    continue
                identity, overlap = biopython_identity(q, target)
                differences.append((abs(found.identity - identity), abs(found.overlap - overlap)))
    differences = np.array(differences)
    assert len(differences) >= 200
    # Co-optimal alignments of distant pairs may place a gap differently: tiny differences only.
    assert np.mean(differences[:, 0] <= 0.005) >= 0.97 and differences[:, 0].max() <= 0.03
    assert np.median(differences[:, 1]) == 0


def test_kmer_codes_and_diagonal_segments_match_direct_counting():
    """The vectorised k-mer codes and best diagonal segments, against one-position-at-a-time definitions."""
    from clibd_cli.align import _kmers, base_codes, diagonals, ungapped_many

    rng = np.random.default_rng(11)
    for k in (1, 3, 10, 12, 16):
        codes = base_codes("".join(rng.choice(list("ACGTN"), 300, p=[0.24, 0.24, 0.24, 0.24, 0.04])))
        expected = [-1 if 4 in codes[i : i + k] else int("".join(str(c) for c in codes[i : i + k]), 4)
                    for i in range(len(codes) - k + 1)]
        assert _kmers(codes, k).tolist() == expected
    query = mutate(random_sequence(rng, 400), 0.05, rng)
    q = base_codes(query[:150] + "N" + query[151:])
    targets = [base_codes(t) for t in (query[40:], "GG" + query[:200] + "N" * 3 + query[203:330],
                                       query[100:] + random_sequence(rng, 80), random_sequence(rng, 500))]
    shifts = diagonals(q, targets)
    assert shifts[:3] == [-40, 2, -100]
    for target, shift, found in zip(targets, shifts, ungapped_many(q, targets, shifts), strict=True):
        if shift is None:
            assert found is None
            continue
        columns = [(q[i], target[i + shift]) for i in range(len(q)) if 0 <= i + shift < len(target)]
        scores = [0 if 4 in pair else (MATCH if pair[0] == pair[1] else MISMATCH) for pair in columns]
        best = max((sum(scores[b:e]), -(e - b), b) for b in range(len(scores)) for e in range(b, len(scores) + 1))
        b, e = best[2], best[2] - best[1]
        matches = sum(a == t and a != 4 for a, t in columns[b:e])
        unknown = sum(4 in pair for pair in columns[b:e])
        assert (found.overlap, found.matches, found.unknown) == (e - b - unknown, matches, unknown)
        assert found.identity == pytest.approx(matches / (e - b - unknown))
