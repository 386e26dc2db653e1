"""A call must lead every other taxon at its rank: the lead is measured over all verified candidates (not
only the ten hits that vote), calibrated with the thresholds, stored in the index and recorded by `match`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import Specimen, clibd_ok, invoke, random_sequence, substitute, to_records, write_fasta

from clibd_cli.align import align_many
from clibd_cli.assign import DISSENT_PENALTY, LeadRule
from clibd_cli.calibrate import _lead_rule, _open_set_thresholds, _Scored
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MatchOptions, identify
from clibd_cli.sequences import RANKS, SequenceRecord

THRESHOLDS = {"order": 0.80, "family": 0.85, "genus": 0.90, "species": 0.97}


def _rivals_case():
    """A query 93 % identical to genus Aedes, whose twelve records of one barcode fill every voting hit,
    and 92.5 % identical to genus Culex of the same family: the Culex record is no hit, yet a rival."""
    rng = np.random.default_rng(11)
    ancestor = random_sequence(rng, 600)
    aedes = substitute(ancestor, 21, rng)
    culex = substitute(ancestor, 24, rng)
    query = substitute(ancestor, 21, rng)
    reference = [Specimen(f"AE{i}", "Diptera", "Culicidae", "Aedes", "Aedes one", "BOLD:AAA0001", aedes)
                 for i in range(12)]
    reference.append(Specimen("CX1", "Diptera", "Culicidae", "Culex", "Culex one", "BOLD:AAA0002", culex))
    reference.append(Specimen("TI1", "Diptera", "Tipulidae", "Tipula", "Tipula one", "BOLD:AAA0003",
                              random_sequence(rng, 600)))
    return reference, query


def _match(reference, query, thresholds=THRESHOLDS, leads=None):
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    (result,) = identify([SequenceRecord("q", query)], index, KmerProfileEncoder(), thresholds,
                         MatchOptions(top_k=20), leads=leads)
    return result


def test_a_rival_outside_the_voting_hits_sets_the_lead():
    reference, query = _rivals_case()
    high = {**THRESHOLDS, "genus": 0.95}  # 93 % is below the genus threshold: family only, unless a lead rule
    plain = _match(reference, query, high)
    assert {hit["genus"] for hit in plain.hits[:10]} == {"Aedes"}  # ten voting hits, one barcode: no dissent
    assert plain.row["genus"] == "" and plain.row["family"] == "Culicidae"
    aedes, culex = align_many(query, [reference[0].sequence, reference[12].sequence])
    lead = 100 * (aedes.identity - culex.identity)
    assert 0 < lead < 2 and float(plain.row["identity"]) == round(100 * aedes.identity, 2)  # points
    # A rule calling genus from 92 % when 2 points ahead does not call it: Culex is within 2 points ...
    strict = _match(reference, query, high, {"genus": LeadRule(0.02, 0.92)})
    assert strict.row["genus"] == "" and strict.row["rank"] == "family"
    # ... one needing 0.1 point does, and one from 94 % does not.
    assert _match(reference, query, high, {"genus": LeadRule(0.001, 0.92)}).row["genus"] == "Aedes"
    assert _match(reference, query, high, {"genus": LeadRule(0.001, 0.94)}).row["genus"] == ""
    # Without the Culex record nothing else is near: any lead is met.
    alone = [s for s in reference if s.genus != "Culex"]
    assert _match(alone, query, high, {"genus": LeadRule(0.05, 0.92)}).row["genus"] == "Aedes"


def _scored(scores, leads, correct, spreads=None) -> _Scored:
    """One calibration set whose genus calls are as given and whose calls at other ranks are all right
    (``spreads``: of the winning genera; none known by default)."""
    spreads = np.full(len(scores), np.inf) if spreads is None else np.asarray(spreads, float)
    return _Scored({rank: np.asarray(scores, float) for rank in RANKS},
                   {rank: np.asarray(leads, float) for rank in RANKS},
                   {rank: np.asarray(correct, bool) if rank == "genus" else np.ones(len(scores), bool)
                    for rank in RANKS},
                   {rank: spreads for rank in RANKS})


def test_calibration_adds_a_lead_rule_only_where_it_names_more_taxa_right():
    """Wrong calls sit between two taxa (lead ≈ 0): the plain threshold must stay above them, while calls far
    ahead of any other taxon can be made lower; where leads tell right from wrong apart nothing, no rule."""
    rng = np.random.default_rng(3)
    n = 400
    right = rng.uniform(0.90, 0.99, n)
    wrong = rng.uniform(0.90, 0.96, n)
    present = _scored(np.r_[right, wrong[: n // 4]], np.r_[np.full(n, 0.05), np.zeros(n // 4)],
                      np.r_[np.ones(n), np.zeros(n // 4)])
    absent = _scored(wrong, np.where(np.arange(n) < n // 50, 0.05, 0.001), np.zeros(n))
    threshold, rule = _lead_rule(present, absent, "genus", 0.05, 0.85)
    assert threshold > 0.95  # above nearly every wrong call
    assert 0.001 < rule.lead <= 0.05 and 0.85 <= rule.threshold < threshold - 0.02
    plain_right = float(np.sum(right >= threshold))
    assert present.called("genus", threshold, rule).sum() > plain_right + 0.2 * n
    # The wrong calls of both ways together stay within the bound, in each set.
    assert absent.called("genus", threshold, rule).sum() <= 0.05 * n
    assert (present.called("genus", threshold, rule) & ~present.correct["genus"]).sum() <= 0.05 * (n + n // 4)
    # Never below the rank above's threshold.
    assert _lead_rule(present, absent, "genus", 0.05, 0.93)[1].threshold >= 0.93
    # Where no lead tells right from wrong, no rule is kept.
    flat = [_scored(x.scores["genus"], np.full(len(x.scores["genus"]), 0.05), x.correct["genus"])
            for x in (present, absent)]
    assert _lead_rule(*flat, "genus", 0.05, 0.85)[1] is None
    # Through the whole fit: the rule is stored with its threshold and reported.
    calls = {"record": present, "species": present, "genus": absent, "family": absent, "order": absent}
    counts = {level: len(scored.scores["genus"]) for level, scored in calls.items()}
    report = _open_set_thresholds(calls, counts, 0.95, {}, None, 10, 64, 0).report["ranks"]
    expected = _lead_rule(present, absent, "genus", 0.05, report["family"]["threshold"])[1]
    assert report["genus"]["lead_rule"] == expected.as_info() and report["genus"]["false_calls_absent"] <= 0.05


def test_leads_are_stored_and_recorded_by_match(tmp_path):
    reference, query = _rivals_case()
    clibd_ok("build-index", "-b", write_fasta(tmp_path / "ref.fasta", reference), "-o", tmp_path / "idx",
             "--no-calibrate")
    index = ReferenceIndex.load(tmp_path / "idx", "dna")
    assert index.leads == {}
    high = {**THRESHOLDS, "genus": 0.95}
    index.set_thresholds(high, {"method": "test"}, {"genus": LeadRule(0.001, 0.92)})
    index.save_manifest()
    stored = json.loads((tmp_path / "idx" / "index.json").read_text())["parts"]["dna"]
    assert stored["leads"] == {"genus": {"lead": 0.001, "threshold": 0.92}}
    assert ReferenceIndex.load(tmp_path / "idx", "dna").leads == {"genus": LeadRule(0.001, 0.92)}
    (tmp_path / "q.fasta").write_text(f">q\n{query}\n")
    clibd_ok("match", tmp_path / "q.fasta", "-i", tmp_path / "idx", "-o", tmp_path / "out.json")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["info"]["leads"] == {"genus": {"lead": 0.001, "threshold": 0.92}}
    (row,) = out["results"]
    assert row["genus"] == "Aedes" and float(row["identity"]) < 95  # called by the lead rule
    # Conventional cut-offs, or the user's own genus threshold, come without the rule.
    for extra in (["--thresholds", "conventional"], ["--threshold", "genus=0.95"]):
        clibd_ok("match", tmp_path / "q.fasta", "-i", tmp_path / "idx", "-o", tmp_path / "other.json", "--force",
                 *extra)
        other = json.loads((tmp_path / "other.json").read_text())
        assert "leads" not in other["info"] and other["results"][0]["genus"] == ""
    # Refitting without lead rules (labelled queries) clears them rather than keeping stale ones ...
    index = ReferenceIndex.load(tmp_path / "idx", "dna")
    index.set_thresholds(high, {"method": "test"})
    index.save_manifest()
    assert ReferenceIndex.load(tmp_path / "idx", "dna").leads == {}
    # ... and an output called with other rules is not continued by --resume.
    result = invoke("match", tmp_path / "q.fasta", "-i", tmp_path / "idx", "-o", tmp_path / "out.json", "--resume")
    assert result.exit_code == 2 and "leads" in result.output


def test_match_proposes_as_many_candidates_as_calibration_verified():
    """Leads are calibrated on the rivals among DEFAULT_CANDIDATES; `clibd match` must see as many."""
    import inspect

    from clibd_cli.cli.identify import match
    from clibd_cli.match import DEFAULT_CANDIDATES

    default = inspect.signature(match).parameters["candidates"].default
    assert default == DEFAULT_CANDIDATES == MatchOptions().candidates


def _shared_barcode_case(n_aedes: int, n_culex: int):
    """A barcode shared by records of two genera of one family and two records known only to family; another
    family's barcode."""
    rng = np.random.default_rng(2)
    shared, other = random_sequence(rng, 600), random_sequence(rng, 600)
    reference = [Specimen(f"A{i}", "Diptera", "Culicidae", "Aedes", "Aedes one", "BOLD:AAA0001", shared)
                 for i in range(n_aedes)]
    reference += [Specimen(f"B{i}", "Diptera", "Culicidae", "Culex", "Culex one", "BOLD:AAA0002", shared)
                  for i in range(n_culex)]
    reference += [Specimen(f"U{i}", "Diptera", "Culicidae", "", "", "", shared) for i in range(2)]
    reference.append(Specimen("O1", "Diptera", "Tipulidae", "Tipula", "Tipula one", "", other))
    return ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder()), shared, rng


def test_a_shared_barcode_stands_for_each_of_its_taxa_with_its_records():
    index, _, _ = _shared_barcode_case(20, 10)
    standing, counts = index.taxa(int(index.labels.vector[0]))
    assert list(index.labels.record_id[standing]) == ["A0", "B0", "U0"] and list(counts) == [20, 10, 2]
    standing, counts = index.taxa(int(index.labels.vector[-1]))
    assert list(index.labels.record_id[standing]) == ["O1"] and list(counts) == [1]


def test_a_barcode_shared_by_two_genera_is_called_at_their_family():
    """20 Aedes and 10 Culex records share the query's barcode: the first ten records are all Aedes, yet the
    vote weighs the barcode's taxa by their records (2:1): a third of the vote dissents, so at a genus
    threshold as calibrated on real BOLD data (0.95) neither genus nor species is called."""
    index, shared, _ = _shared_barcode_case(20, 10)
    (result,) = identify([SequenceRecord("q", shared)], index, KmerProfileEncoder(), {**THRESHOLDS, "genus": 0.95},
                         MatchOptions())
    row = result.row
    assert (row["family"], row["genus"], row["species"]) == ("Culicidae", "", "")
    assert {"conflict", "multiple_bins"} <= set(row["flags"].split(","))
    assert row["genus_score"] == row["species_score"] == pytest.approx(1 - DISSENT_PENALTY / 3)
    assert row["support"] == 32


def test_a_lone_misfiled_record_flags_the_call_but_does_not_block_it():
    """20 Aedes records and one Culex record share the barcode: Aedes wins the vote by far, and the Culex
    record above the species threshold is flagged."""
    index, shared, _ = _shared_barcode_case(20, 1)
    (result,) = identify([SequenceRecord("q", shared)], index, KmerProfileEncoder(), THRESHOLDS, MatchOptions())
    row = result.row
    assert (row["species"], row["status"], row["support"]) == ("Aedes one", "assigned", 20)
    assert "conflict" in row["flags"].split(",")


def test_a_genus_tied_with_another_has_no_lead():
    """A query 93 % identical to the shared barcode: its genus, a tie between Aedes and Culex, leads by 0,
    so no lead rule calls it."""
    index, shared, rng = _shared_barcode_case(20, 10)
    query = substitute(shared, 42, rng)
    (result,) = identify([SequenceRecord("q", query)], index, KmerProfileEncoder(), {**THRESHOLDS, "genus": 0.95},
                         MatchOptions(), leads={"genus": LeadRule(0.0025, 0.90)})
    assert result.row["genus"] == "" and result.row["family"] == "Culicidae"


def test_readme_shows_a_lead_rule_as_build_index_and_calibrate_print_it():
    from pathlib import Path

    from clibd_cli.cli.references import _thresholds_text

    printed = _thresholds_text({"genus": 0.956}, {"genus": LeadRule(0.02, 0.928)})
    assert printed == "genus 0.956 (or 0.928, 2 pts ahead)"
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert f"`{printed}`" in readme
    within = _thresholds_text({"genus": 0.942}, {"genus": LeadRule(0.02, 0.924, within_spread=True)})
    assert within == "genus 0.942 (or 0.924, 2 pts ahead, within spread)" and f"`{within}`" in readme


def test_the_vote_shares_its_room_among_taxa_tied_at_one_identity():
    """Ten records' worth of vote: whole while there is room; a tie that holds more records than are left
    shares the rest in proportion, whichever taxon the file listed first."""
    from clibd_cli.match import _votes

    votes = _votes(np.array([1.0, 1.0, 0.99]), np.array([650, 650, 650]), np.array([20, 10, 5]), 10)
    assert votes == pytest.approx([20 / 3, 10 / 3, 0.0])
    votes = _votes(np.array([1.0, 0.99, 0.99, 0.98]), np.array([650, 650, 650, 650]), np.array([4, 10, 20, 3]), 10)
    assert votes == pytest.approx([4.0, 2.0, 4.0, 0.0])
    # a longer overlap at the same identity ranks first and is no tie
    votes = _votes(np.array([0.99, 0.99]), np.array([658, 313]), np.array([12, 12]), 10)
    assert votes == pytest.approx([10.0, 0.0])


def _spread_case():
    """Two genera of one family, each with two species: *Aedes*'s species 12 % apart (a wide genus),
    *Culex*'s 1 % apart (a tight one), and a genus of one species in another family."""
    rng = np.random.default_rng(21)
    root = random_sequence(rng, 600)
    aedes, culex = substitute(root, 60, rng), substitute(root, 60, rng)
    a1, a2 = substitute(aedes, 36, rng), substitute(aedes, 36, rng)
    c1, c2 = substitute(culex, 3, rng), substitute(culex, 3, rng)
    lineage = ("Diptera", "Culicidae")
    reference = [Specimen("A1", *lineage, "Aedes", "Aedes one", "BOLD:AAA0001", a1),
                 Specimen("A2", *lineage, "Aedes", "Aedes two", "BOLD:AAA0002", a2),
                 Specimen("C1", *lineage, "Culex", "Culex one", "BOLD:AAA0003", c1),
                 Specimen("C2", *lineage, "Culex", "Culex two", "BOLD:AAA0004", c2),
                 Specimen("T1", "Diptera", "Tipulidae", "Tipula", "Tipula one", "BOLD:AAA0005",
                          random_sequence(rng, 600))]
    return reference, rng


def test_spreads_are_the_lowest_identity_between_members_and_gate_within_spread_rules():
    from clibd_cli.calibrate import taxon_spreads

    reference, rng = _spread_case()
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    spreads = taxon_spreads(index, pairs=5)
    seqs = {s.id: s.sequence for s in reference}
    aedes, culex = (align_many(seqs[x], [seqs[y]])[0].identity for x, y in (("A1", "A2"), ("C1", "C2")))
    assert spreads["genus"] == pytest.approx({"Diptera|Culicidae|Aedes": aedes, "Diptera|Culicidae|Culex": culex})
    assert 0.85 < aedes < 0.92 < 0.97 < culex  # Tipula (one species) has no spread
    across = [align_many(seqs[x], [seqs[y]])[0].identity for x in ("A1", "A2") for y in ("C1", "C2")]
    assert min(across) <= spreads["family"]["Diptera|Culicidae"] <= max(across)  # genera of the family
    index.set_spreads(spreads)
    # A query 6 % from Aedes one (inside Aedes's 12 % spread) and one 6 % from Culex one (outside Culex's 1 %):
    # the plain genus threshold (97 %) calls neither; a lead rule within spread calls only the first.
    rule = {"genus": LeadRule(0.02, 0.90, within_spread=True)}
    high = {**THRESHOLDS, "genus": 0.97}
    for source, genus, nearest in (("A1", "Aedes", "Aedes"), ("C1", "", "Culex")):
        query = substitute(seqs[source], 36, rng)
        (result,) = identify([SequenceRecord("q", query)], index, KmerProfileEncoder(), high, MatchOptions(),
                             leads=rule)
        assert result.row["genus"] == genus and result.row["family"] == "Culicidae"
        (plain,) = identify([SequenceRecord("q", query)], index, KmerProfileEncoder(), high, MatchOptions(),
                            leads={"genus": LeadRule(0.02, 0.90)})
        assert plain.row["genus"] == nearest  # without the spread condition both are called


def test_calibration_asks_for_the_spread_where_it_tells_right_from_wrong():
    """Wrong calls far ahead of their rivals but outside their genus's spread: a rule within spread can go lower
    than one without, and is chosen; where spreads are unknown (inf) no call gets through that way."""
    rng = np.random.default_rng(5)
    n = 400
    right = rng.uniform(0.90, 0.99, n)
    wrong = rng.uniform(0.90, 0.96, n)
    spread_right, spread_wrong = np.full(n, 0.85), np.full(n, 0.97)  # right calls inside, wrong ones outside
    present = _scored(np.r_[right, wrong[: n // 4]], np.full(n + n // 4, 0.05), np.r_[np.ones(n), np.zeros(n // 4)],
                      np.r_[spread_right, spread_wrong[: n // 4]])
    absent = _scored(wrong, np.full(n, 0.05), np.zeros(n), spread_wrong)
    threshold, rule = _lead_rule(present, absent, "genus", 0.05, 0.85)
    assert rule is not None and rule.within_spread and rule.threshold < 0.91
    assert absent.called("genus", threshold, rule).sum() <= 0.05 * n
    unknown = [_scored(x.scores["genus"], x.leads["genus"], x.correct["genus"]) for x in (present, absent)]
    assert _lead_rule(*unknown, "genus", 0.05, 0.85)[1] is None  # leads alone tell nothing here
