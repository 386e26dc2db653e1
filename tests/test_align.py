"""Alignment verification: identity and overlap against an independent Biopython alignment."""

from __future__ import annotations

import numpy as np
import pytest
from Bio import Align
from conftest import mutate, random_sequence, shared_path

from clibd_cli.align import GAP_EXTEND, GAP_OPEN, MATCH, MISMATCH, align_many, reverse_complement, verify
from clibd_cli.sequences import read_sequences


def biopython_identity(query: str, target: str) -> tuple[float, int]:
    """Overlap alignment (free end gaps) in the same scoring; identity over the columns where both have bases."""
    aligner = Align.PairwiseAligner(mode="global", match_score=MATCH, mismatch_score=MISMATCH,
                                    open_gap_score=-GAP_OPEN, extend_gap_score=-GAP_EXTEND)
    aligner.end_gap_score = 0
    alignment = aligner.align(query, target)[0]
    top, bottom = alignment[0], alignment[1]
    both = [i for i in range(len(top)) if top[i] != "-" and bottom[i] != "-"]
    columns = range(both[0], both[-1] + 1)
    matches = sum(top[i] == bottom[i] and top[i] != "N" for i in columns)
    return matches / len(columns), len(columns)


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
