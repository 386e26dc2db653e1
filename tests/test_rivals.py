"""A lead that decides a call is measured against the nearest references of other taxa, not only against the
candidates (clibd_cli.rivals): candidates filled by one large genus hide a second genus just behind them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Specimen, clibd_ok, random_sequence, substitute, to_records, write_fasta

import clibd_cli.index as index_module
from clibd_cli.align import align_many
from clibd_cli.assign import LeadRule
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MatchOptions, _propose, identify
from clibd_cli.rivals import RIVALS, WORD_POOL, Rivals
from clibd_cli.sequences import SequenceRecord

THRESHOLDS = {"order": 0.80, "family": 0.85, "genus": 0.97, "species": 0.99}
RULE = {"genus": LeadRule(0.02, 0.90)}


def _crowded_genus(with_rival: bool):
    """Twenty Aedes barcodes 92-95 % identical to the query, a Culex barcode 1.5 points behind the nearest of
    them and another family's barcode far away."""
    rng = np.random.default_rng(5)
    ancestor = random_sequence(rng, 600)
    query = substitute(ancestor, 12, rng)
    reference = [Specimen(f"AE{i}", "Diptera", "Culicidae", "Aedes", f"Aedes s{i}", "", substitute(query, 30 + i, rng))
                 for i in range(20)]
    if with_rival:
        reference.append(Specimen("CX1", "Diptera", "Culicidae", "Culex", "Culex one", "",
                                  substitute(query, 39, rng)))
    reference.append(Specimen("TI1", "Diptera", "Tipulidae", "Tipula", "Tipula one", "", random_sequence(rng, 600)))
    return reference, query


def _call(reference, query, candidates: int, leads=RULE):
    """The query's row, and whether the Culex barcode is among its candidates."""
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    options = MatchOptions(candidates=candidates)
    (result,) = identify([SequenceRecord("q", query)], index, KmerProfileEncoder(), THRESHOLDS, options,
                         leads=leads)
    (proposal,) = _propose([SequenceRecord("q", query)], index, KmerProfileEncoder(), options)
    culex = [int(index.labels.vector[i]) for i, s in enumerate(reference) if s.genus == "Culex"]
    return result.row, bool(np.isin(culex, proposal.vectors).any())


def test_a_rival_beyond_the_candidates_undoes_a_lead():
    reference, query = _crowded_genus(with_rival=True)
    culex = next(s for s in reference if s.genus == "Culex")
    best_aedes = max(a.identity for a in align_many(query, [s.sequence for s in reference if s.genus == "Aedes"]))
    (to_culex,) = align_many(query, [culex.sequence])
    assert 0 < best_aedes - to_culex.identity < 0.02 and best_aedes < THRESHOLDS["genus"]
    # Eight candidates are all Aedes: among them the call leads every other genus without limit ...
    narrow, seen = _call(reference, query, candidates=8)
    assert not seen
    # ... yet the Culex barcode, found beyond them, is within the rule's two points: family only.
    assert (narrow["family"], narrow["genus"]) == ("Culicidae", "")
    # With every barcode a candidate, the same call.
    wide, seen = _call(reference, query, candidates=64)
    assert seen and (wide["family"], wide["genus"]) == ("Culicidae", "")
    # Without the Culex barcode the nearest other genus is another family's, far behind: the rule calls Aedes.
    alone, _ = _crowded_genus(with_rival=False)
    assert _call(alone, query, candidates=8)[0]["genus"] == "Aedes"
    # And without a lead rule nothing below the genus threshold is called.
    assert _call(alone, query, candidates=8, leads={})[0]["genus"] == ""


@pytest.mark.parametrize("fork", [True, False], ids=["processes", "threads"])
def test_rivals_are_searched_where_the_calls_are_made(monkeypatch, fork):
    """Calls are made in the verification processes (threads where the platform does not fork): there a rival
    beyond the candidates undoes a lead as it does in line, for a whole barcode and for a fragment (whose pool of
    references sharing words is taken where it is proposed)."""
    from clibd_cli import verifier

    monkeypatch.setattr(verifier, "_FORK", fork and verifier._FORK)
    reference, query = _crowded_genus(with_rival=True)
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    queries = [SequenceRecord("q", query), SequenceRecord("f", query[:300])]

    def rows(threads: int) -> list[dict]:
        options = MatchOptions(candidates=8, threads=threads)
        return [r.row for r in identify(queries, index, KmerProfileEncoder(), THRESHOLDS, options, leads=RULE)]

    in_line = rows(1)
    assert (in_line[0]["family"], in_line[0]["genus"]) == ("Culicidae", "")
    assert repr(rows(2)) == repr(in_line)  # repr: a missing identity (nan) reads the same


def test_left_out_records_are_never_rivals():
    """Calibration leaves a taxon out: its records must not stand as another taxon's rivals, while a barcode they
    share with a third taxon still does."""
    rng = np.random.default_rng(8)
    shared, aedes, culex = (random_sequence(rng, 500) for _ in range(3))
    reference = [Specimen("A1", "Diptera", "Culicidae", "Aedes", "Aedes one", "", aedes),
                 Specimen("C1", "Diptera", "Culicidae", "Culex", "Culex one", "", culex),
                 Specimen("C2", "Diptera", "Culicidae", "Culex", "Culex two", "", shared),
                 Specimen("T1", "Diptera", "Tipulidae", "Tipula", "Tipula one", "", shared)]
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    rivals, codes = Rivals(index), index.lineage_codes()["genus"]
    vector = {s.id: int(index.labels.vector[i]) for i, s in enumerate(reference)}
    aedes_code = int(codes[0])
    everything = rivals.allowed("genus", aedes_code).mask()
    assert not everything[vector["A1"]] and everything[vector["C1"]] and everything[vector["C2"]]
    culex_out = np.flatnonzero(codes == codes[1])  # genus Culex left out
    without = rivals.allowed("genus", aedes_code, culex_out).mask()
    assert not without[vector["C1"]]  # only Culex behind it
    assert without[vector["C2"]]  # Tipula shares it
    assert vector["C2"] == vector["T1"]
    # Nor may a barcode count as a rival for the taxon it is left with.
    tipula_code = int(codes[3])
    assert not rivals.allowed("genus", tipula_code, culex_out).mask()[vector["T1"]]


@pytest.mark.parametrize("rank", ["genus", "family"])
def test_the_graph_finds_the_rivals_an_exact_scan_finds(tmp_path, monkeypatch, rank):
    """`clibd match` searches its graph with a filter; the exact scan is the reference it must agree with."""
    rng = np.random.default_rng(4)
    ancestor = random_sequence(rng, 500)
    reference = []
    for f in range(3):
        family = substitute(ancestor, 60, rng)
        for g in range(4):
            genus = substitute(family, 30, rng)
            reference += [Specimen(f"F{f}G{g}S{s}", "Diptera", f"Fam{f}", f"Gen{f}{g}", f"Gen{f}{g} s{s}", "",
                                   substitute(genus, 12, rng)) for s in range(25)]
    clibd_ok("build-index", "-b", write_fasta(tmp_path / "ref.fasta", reference), "-o", tmp_path / "idx",
             "--no-calibrate")
    index = ReferenceIndex.load(tmp_path / "idx", "dna")
    rivals = Rivals(index)
    codes = index.lineage_codes()[rank]
    queries = KmerProfileEncoder().encode([substitute(s.sequence, 20, rng) for s in reference[::37]])
    for query, specimen in zip(queries, reference[::37], strict=True):
        code = int(codes[reference.index(specimen)])
        exact = rivals.nearest(query, rank, code)
        monkeypatch.setattr(index_module, "EXACT_MAX", 0)
        found = rivals.nearest(query, rank, code)
        monkeypatch.setattr(index_module, "EXACT_MAX", 10_000)
        assert len(exact) == len(found) == RIVALS
        allowed = rivals.allowed(rank, code).mask()
        assert allowed[found].all() and not (codes[np.isin(index.labels.vector, found)] == code).all()
        assert len(set(exact) & set(found)) >= RIVALS - 2


def test_calibration_measures_leads_against_rivals_beyond_its_candidates():
    """Leave-out calibration fits lead rules on leads measured as `clibd match` measures a deciding one."""
    from clibd_cli.calibrate import _measure_leads, leave_out_hits
    from clibd_cli.match import assign_verified
    from clibd_cli.verifier import Verifier

    reference, _ = _crowded_genus(with_rival=True)
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    rows = np.array([19])  # an Aedes record, its species left out: Aedes is still in the reference
    hits = leave_out_hits(index, rows, "species", candidates=4)[0]
    (assignment,) = assign_verified(hits, index, {}, 10)
    call = assignment.calls["genus"]
    assert call.label == "Aedes" and call.lead == np.inf  # no other genus among four candidates
    with Verifier(index, threads=1) as verifier:
        _measure_leads(Rivals(index), verifier, rows, "species", [hits], [[assignment]])
    culex = next(s for s in reference if s.genus == "Culex")
    (rival,) = align_many(reference[19].sequence, [culex.sequence])
    assert call.lead == pytest.approx(hits[0].taxon_identity[call.best_hit] - rival.identity, abs=0.002)
    # Leaving genus Culex out instead, Culex is no rival: the lead is measured against Tipula, far behind.
    rows = np.array([20])  # the Culex record: its genus left out, the nearest genus is Aedes
    hits = leave_out_hits(index, rows, "genus", candidates=4)[0]
    (assignment,) = assign_verified(hits, index, {}, 10)
    call = assignment.calls["genus"]
    assert call.label == "Aedes" and call.lead == np.inf
    with Verifier(index, threads=1) as verifier:
        _measure_leads(Rivals(index), verifier, rows, "genus", [hits], [[assignment]])
    assert call.lead > 0.3


def test_a_fragment_finds_rivals_by_shared_words():
    """A fragment's composition profile says little about the barcodes it lies in (the candidates of a fragment
    come from shared words as well, :mod:`clibd_cli.anchors`): its rivals are looked for both ways."""
    rng = np.random.default_rng(12)
    region = random_sequence(rng, 200)
    pieces = [region[i : i + 10] for i in range(0, 200, 10)]

    def shuffled() -> str:  # most of the region's 5-mers, none of its 12-mers
        return "".join(pieces[i] for i in rng.permutation(len(pieces)))

    reference = [Specimen("A1", "Diptera", "Culicidae", "Aedes", "Aedes one", "", shuffled() * 3)]
    reference += [Specimen(f"D{i}", "Diptera", "Culicidae", f"Decoy{i}", f"Decoy{i} one", "",
                           random_sequence(rng, 100) + shuffled() + shuffled()) for i in range(40)]
    # The region in a long barcode: its words are a small part of that barcode's profile.
    reference.append(Specimen("C1", "Diptera", "Culicidae", "Culex", "Culex one", "",
                              random_sequence(rng, 1500) + substitute(region, 6, rng)))
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    rivals, codes = Rivals(index), index.lineage_codes()["genus"]
    culex = int(index.labels.vector[len(reference) - 1])
    (vector,) = KmerProfileEncoder().encode([region])
    assert culex not in rivals.nearest(vector, "genus", int(codes[0]))  # by profile alone, decoys come first
    assert culex in rivals.nearest(vector, "genus", int(codes[0]), index.anchors().candidates(region, WORD_POOL))
