"""Threshold fitting: precision targets, monotone thresholds, encoder floors, self-calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import to_records
from hypothesis import given, settings
from hypothesis import strategies as st

from clibd_cli.calibrate import (
    MIN_CALLS,
    NEVER,
    calibrate_dna_with_queries,
    calibrate_leave_species_out,
    fit_thresholds,
    score_queries,
    threshold_for_precision,
)
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import identify
from clibd_cli.sequences import RANKS


def brute_force_threshold(scores, correct, target, min_calls):
    """Try every distinct score as the cut, lowest first; the first that reaches `target` wins."""
    for t in sorted(set(scores.tolist())):
        called = scores >= t
        n = int(called.sum())
        precision = correct[called].sum() / n
        if n >= min_calls and precision >= target:
            return t, precision, n / len(scores)
    return NEVER, float("nan"), 0.0


def assert_monotone(thresholds):
    values = [thresholds[rank] for rank in RANKS]
    assert values == sorted(values), thresholds


def test_constructed_data_reaches_target():
    rng = np.random.default_rng(0)
    right = rng.uniform(0.6, 1.0, 300)
    wrong = rng.uniform(0.3, 0.8, 100)
    scores = np.r_[right, wrong]
    correct = np.r_[np.ones(300, bool), np.zeros(100, bool)]
    for target in (0.8, 0.9, 0.95, 0.99):
        t, precision, coverage = threshold_for_precision(scores, correct, target)
        called = scores >= t
        assert correct[called].mean() >= target
        assert precision == pytest.approx(correct[called].mean())
        assert coverage == pytest.approx(called.mean())
        # It is the lowest such cut: one distinct score lower misses the target (or nothing is lower).
        lower = scores[scores < t]
        if lower.size:
            below = scores >= lower.max()
            assert correct[below].mean() < target
        expected = brute_force_threshold(scores, correct, target, MIN_CALLS)
        assert (t, precision, coverage) == pytest.approx(expected)
    # A higher target never lowers the threshold.
    cuts = [threshold_for_precision(scores, correct, target)[0] for target in (0.8, 0.9, 0.95, 0.99)]
    assert cuts == sorted(cuts)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_matches_brute_force(data):
    n = data.draw(st.integers(1, 60))
    scores = np.array(data.draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.55, 0.7, 0.9, 0.95, 1.0]),
                                         min_size=n, max_size=n)))
    correct = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    target = data.draw(st.sampled_from([0.5, 0.75, 0.9, 0.95, 1.0]))
    min_calls = data.draw(st.integers(1, 25))
    got = threshold_for_precision(scores, correct, target, min_calls=min_calls)
    want = brute_force_threshold(scores, correct, target, min_calls)
    assert got[0] == want[0] and got[2] == pytest.approx(want[2])
    assert (math.isnan(got[1]) and math.isnan(want[1])) or got[1] == pytest.approx(want[1])


def test_ties_are_never_split():
    # Ten queries share score 0.8; five of them are wrong. A cut inside the tie would look better
    # than it is, so the only honest cuts are above or below all ten.
    scores = np.r_[np.full(20, 0.9), np.full(10, 0.8)]
    correct = np.r_[np.ones(20, bool), np.ones(5, bool), np.zeros(5, bool)]
    t, precision, coverage = threshold_for_precision(scores, correct, 0.9)
    assert t == 0.9 and precision == 1.0 and coverage == pytest.approx(20 / 30)


def test_unreachable_target_and_too_few_calls():
    scores = np.linspace(0, 1, 50)
    assert threshold_for_precision(scores, np.zeros(50, bool), 0.5)[0] == NEVER
    few = np.linspace(0.5, 1, MIN_CALLS - 1)
    t, precision, coverage = threshold_for_precision(few, np.ones(len(few), bool), 0.95)
    assert t == NEVER and math.isnan(precision) and coverage == 0.0


def _rank_data(rng, boundaries: dict[str, float], n: int = 400):
    """Per-rank scores where calls above `boundaries[rank]` are right and below it mostly wrong."""
    scores, correct = {}, {}
    for rank in RANKS:
        s = rng.uniform(0.2, 1.0, n)
        scores[rank] = s
        correct[rank] = (s >= boundaries[rank]) | (rng.random(n) < 0.1)
    return scores, correct


def test_fit_thresholds_are_monotone_even_when_ranks_disagree():
    rng = np.random.default_rng(1)
    # Deliberately inverted: order would need the highest cut on its own.
    scores, correct = _rank_data(rng, {"order": 0.9, "family": 0.8, "genus": 0.6, "species": 0.5})
    alone = {rank: threshold_for_precision(scores[rank], correct[rank], 0.95)[0] for rank in RANKS}
    assert alone["order"] > alone["species"]
    calibration = fit_thresholds(scores, correct, 0.95)
    assert_monotone(calibration.thresholds)
    assert calibration.thresholds["species"] == pytest.approx(alone["species"], abs=1e-6)
    for rank in RANKS:
        assert calibration.thresholds[rank] <= alone[rank] + 1e-6  # thresholds are stored rounded to 6 digits
        assert calibration.report["ranks"][rank]["threshold"] == alone[rank]
    assert calibration.report["target_precision"] == 0.95


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), target=st.sampled_from([0.8, 0.9, 0.95]),
       boundaries=st.lists(st.floats(0.3, 0.95), min_size=4, max_size=4))
def test_fit_thresholds_monotone_property(seed, target, boundaries):
    scores, correct = _rank_data(np.random.default_rng(seed), dict(zip(RANKS, boundaries, strict=True)), 120)
    defaults = {"order": 0.49, "family": 0.57, "genus": 0.72, "species": 0.93}
    for given_defaults in (None, defaults):
        thresholds = fit_thresholds(scores, correct, target, given_defaults).thresholds
        assert_monotone(thresholds)
        assert all(0.0 <= v <= NEVER for v in thresholds.values())


def test_encoder_default_is_a_floor_when_calls_are_never_wrong():
    scores = {rank: np.linspace(0.3, 1.0, 100) for rank in RANKS}
    correct = {rank: np.ones(100, bool) for rank in RANKS}
    defaults = {"order": 0.49, "family": 0.57, "genus": 0.72, "species": 0.93}
    without = fit_thresholds(scores, correct, 0.95).thresholds
    assert without == dict.fromkeys(RANKS, 0.3)
    floored = fit_thresholds(scores, correct, 0.95, defaults)
    assert floored.thresholds == defaults
    assert "encoder default" in floored.report["ranks"]["species"]["note"]
    # A rank that cannot be fitted at all (too few calls) falls back to the default.
    tiny = {rank: np.linspace(0.3, 1.0, 5) for rank in RANKS}
    few = fit_thresholds(tiny, {rank: np.ones(5, bool) for rank in RANKS}, 0.95, defaults)
    assert few.thresholds == defaults
    assert fit_thresholds(tiny, {rank: np.ones(5, bool) for rank in RANKS}, 0.95).thresholds == \
        dict.fromkeys(RANKS, NEVER)


def test_floor_not_applied_when_wrong_calls_are_seen():
    rng = np.random.default_rng(2)
    scores, correct = _rank_data(rng, dict.fromkeys(RANKS, 0.5))
    defaults = dict.fromkeys(RANKS, 0.99)
    fitted = fit_thresholds(scores, correct, 0.9, defaults).thresholds
    assert all(v < 0.99 for v in fitted.values())


def test_score_queries_marks_correct_labels():
    sims = np.array([[0.99, 0.98], [0.97, 0.5]], dtype=np.float32)
    lineage_a = ("Diptera", "Culicidae", "Aedes", "Aedes aegypti")
    lineage_b = ("Diptera", "Culicidae", "Culex", "Culex pipiens")
    hit_taxonomy = {rank: np.array([[lineage_a[i], lineage_a[i]], [lineage_b[i], lineage_a[i]]], dtype=object)
                    for i, rank in enumerate(RANKS)}
    truth = {rank: [lineage_a[i], lineage_a[i]] for i, rank in enumerate(RANKS)}
    scores, correct = score_queries(sims, hit_taxonomy, truth)
    assert correct["species"].tolist() == [True, False]
    assert correct["family"].tolist() == [True, True]
    assert scores["species"][0] == pytest.approx(0.99, abs=1e-6)


@pytest.fixture(scope="module")
def split_index(split_reference):
    reference, _, _ = split_reference
    return ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder(k=5))


def test_leave_species_out(split_index):
    calibration = calibrate_leave_species_out(split_index, target=0.9, seed=0)
    report = calibration.report
    assert report["method"] == "leave-species-out"
    assert report["queries"] == split_index.size == 96
    # The default novel share: a quarter of the sampled queries have their species removed.
    assert report["novel_share"] == 0.25
    assert report["absent_species_queries"] == 24
    assert_monotone(calibration.thresholds)
    # Same species ~0.95 cosine (k=5), other species of the genus far below: the species cut lies between.
    assert 0.6 < calibration.thresholds["species"] < 0.97
    again = calibrate_leave_species_out(split_index, target=0.9, seed=0)
    assert again.thresholds == calibration.thresholds
    sample = calibrate_leave_species_out(split_index, target=0.9, sample=60, seed=1)
    assert sample.report["queries"] == 60 and sample.report["absent_species_queries"] == 15
    half = calibrate_leave_species_out(split_index, target=0.9, seed=0, novel_share=0.5)
    assert half.report["novel_share"] == 0.5 and half.report["absent_species_queries"] == 48
    assert_monotone(half.thresholds)
    # More absent-species queries give more wrong species calls to avoid: a stricter species cut.
    assert half.thresholds["species"] >= calibration.thresholds["species"]
    none = calibrate_leave_species_out(split_index, target=0.9, seed=0, novel_share=0.0)
    # Without absent species no species call is wrong, so the k=5 default is kept as the floor.
    assert none.report["absent_species_queries"] == 0
    assert none.report["ranks"]["species"]["wrong_calls_seen"] == 0
    assert "note" in none.report["ranks"]["species"]
    assert none.thresholds["species"] >= KmerProfileEncoder(k=5).default_thresholds["species"]


def test_leave_species_out_needs_labelled_references(split_reference):
    reference, _, _ = split_reference
    small = ReferenceIndex.from_records(to_records(reference[: 2 * MIN_CALLS - 1]), KmerProfileEncoder(k=5))
    with pytest.raises(ValueError, match="too few"):
        calibrate_leave_species_out(small)


def test_calibration_with_labelled_queries_reaches_precision(split_index, split_reference):
    """Labelled barcodes calibrate the identity thresholds `clibd match` applies to them."""
    _, known, novel = split_reference
    queries = known + novel
    encoder = KmerProfileEncoder(k=5)
    records = to_records(queries)
    calibration = calibrate_dna_with_queries(split_index, records, encoder, target=0.95, k=10)
    assert calibration.report["absent_species_queries"] == len(novel) == 40
    assert calibration.report["queries"] == 64
    thresholds = calibration.thresholds
    assert_monotone(thresholds)
    rows = [r.row for r in identify(records, split_index, encoder, thresholds)]
    assigned_right = assigned_wrong = novel_assigned = 0
    for query, row in zip(queries, rows, strict=True):
        if row["status"] == "assigned":
            if row["species"] == query.species:
                assigned_right += 1
            else:
                assigned_wrong += 1
                novel_assigned += query in novel
        elif query in novel:
            # A new species is never given a species name it does not have.
            assert row["species"] == ""
    # On the calibration queries themselves the species calls reach the target precision.
    assert assigned_right / (assigned_right + assigned_wrong) >= 0.95
    assert assigned_right >= 20 and novel_assigned <= 1


def test_thresholds_table_explains_ranks_it_cannot_calibrate():
    """`calibrate` used to print `genus │ 1.010 │ nan │ 0.000` for a rank no threshold could call."""
    from rich.console import Console

    from clibd_cli.calibrate import NEVER, Calibration
    from clibd_cli.cli.references import _thresholds_table

    ranks = {"order": {"precision": 0.99, "coverage": 0.9},
             "family": {"precision": 0.97, "coverage": 0.8,
                        "note": "too few wrong calls to calibrate; encoder default used as floor"},
             "genus": {"precision": float("nan"), "coverage": 0.0}, "species": {"coverage": 0.0}}
    calibration = Calibration({"order": 0.5, "family": 0.6, "genus": NEVER, "species": NEVER},
                              {"method": "labelled photos", "queries": 40, "ranks": ranks})
    console = Console(record=True, width=200)
    console.print(_thresholds_table(calibration, 0.95))
    text = console.export_text()
    assert "nan" not in text and "1.010" not in text
    genus = next(line for line in text.splitlines() if line.startswith("│ genus"))
    assert [c.strip() for c in genus.split("│")[1:-1]] == ["genus", "never", "–", "0.000"]
    assert "genus is never called; calls stop at the rank above." in text
    assert "species is never called" in text
    assert "family: too few wrong calls to calibrate; encoder default used as floor (0.600)." in text


def test_thresholds_that_stand_for_a_rule_read_as_words():
    from clibd_cli.calibrate import NEVER, describe_threshold
    from clibd_cli.classify import UNCALIBRATED

    assert describe_threshold(NEVER).startswith("never")
    assert describe_threshold(UNCALIBRATED["species"]).startswith("not calibrated")
    assert describe_threshold(0.9731) == "0.973"


def test_calibration_is_the_same_on_one_core_or_several(split_reference):
    """Leave-out alignments on verification processes (chunks in flight) give the thresholds, lead rules, spreads and
    reports of one core."""
    from clibd_cli.calibrate import calibrate_barcode_part

    reference, _, _ = split_reference
    fitted = []
    for threads in (1, 2):
        part = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
        main = calibrate_barcode_part(part, threads=threads)
        fitted.append(repr((main.thresholds, main.report, part.leads, part.short_read_thresholds(),
                            [part.spreads(rank).tolist() for rank in ("family", "genus")])))
    assert fitted[0] == fitted[1]
    assert "species" in fitted[0] and "genus" in fitted[0]
    from clibd_cli.calibrate import leave_out_hits
    from clibd_cli.verifier import Verifier

    part = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    rows = np.arange(0, len(reference), 3)

    def hits(**options) -> str:
        found = leave_out_hits(part, rows, "species", windows=(None, 200), **options)
        assert [len(window) for window in found] == [len(rows), len(rows)]
        return repr([[(h.records.tolist(), h.identity.tolist(), h.taxa.tolist(), h.votes.tolist()) for h in window]
                     for window in found])

    in_line = hits(chunk=64)
    assert len(rows) > 8 and "0.9" in in_line
    with Verifier(part, threads=2) as verifier:
        assert hits(chunk=4, verifier=verifier) == in_line  # chunks in flight, in order
