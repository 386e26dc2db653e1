"""`clibd match` verifies candidates by alignment: identity, overlap, strands, fragments, flags, error rows."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import Specimen, clibd_ok, make_reference, random_sequence, read_rows, substitute, to_records, write_fasta

from clibd_cli.align import CONVENTIONAL, reverse_complement
from clibd_cli.calibrate import calibrate_open_set
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MatchOptions, ShortReads, identify
from clibd_cli.sequences import RANKS, SequenceRecord


@pytest.fixture(scope="module")
def split_index(tmp_path_factory, split_reference):
    """The split reference indexed."""
    tmp = tmp_path_factory.mktemp("verified")
    clibd_ok("build-index", "-b", write_fasta(tmp / "ref.fasta", split_reference[0]), "-o", tmp / "idx")
    return tmp / "idx"


@pytest.fixture(scope="module")
def matched(tmp_path_factory, split_reference, split_index):
    """Every kind of query matched once against the split reference through the CLI."""
    _, known, _ = split_reference
    tmp = tmp_path_factory.mktemp("verified")
    rng = np.random.default_rng(1)
    queries = [Specimen(f"full-{s.id}", *s.lineage, s.bin, s.sequence) for s in known]
    queries += [Specimen(f"rc-{s.id}", *s.lineage, s.bin, reverse_complement(s.sequence)) for s in known]
    queries += [Specimen(f"leray-{s.id}", *s.lineage, s.bin, s.sequence[-313:]) for s in known]
    queries += [Specimen(f"noise-{i}", "", "", "", "", "", random_sequence(rng, 600)) for i in range(10)]
    queries.append(Specimen("empty-1", "", "", "", "", "", "NNNN"))
    fasta = write_fasta(tmp / "queries.fasta", queries, style="bare")
    clibd_ok("match", fasta, "-i", split_index, "-o", tmp / "out.csv", "--hits", tmp / "hits.csv")
    rows = {row["query_id"]: row for row in read_rows(tmp / "out.csv")}
    return known, queries, rows, read_rows(tmp / "hits.csv")


def test_one_row_per_query_and_error_rows(matched):
    _, queries, rows, _ = matched
    assert list(rows) == [q.id for q in queries]  # every query, in input order
    assert rows["empty-1"]["status"] == "error" and "no sequence" in rows["empty-1"]["error"]


def test_identity_overlap_and_strands(matched):
    known, _, rows, hits = matched
    for s in known:
        full, rc, leray = rows[f"full-{s.id}"], rows[f"rc-{s.id}"], rows[f"leray-{s.id}"]
        assert full["species"] == s.species and float(full["identity"]) >= 97.0
        assert int(full["overlap"]) >= len(s.sequence) - 5 and float(full["species_identity"]) >= 97.0
        assert "reverse_complement" not in full["flags"]
        assert rc["species"] == s.species and "reverse_complement" in rc["flags"]  # identified on the other strand
        assert rc["identity"] == full["identity"]
        assert leray["species"] == s.species and int(leray["overlap"]) == 313  # identity over the overlap only
    first = [h for h in hits if h["query_id"] == f"full-{known[0].id}"]
    assert len(first) >= 4 and [int(h["hit_rank"]) for h in first] == list(range(1, len(first) + 1))
    identities = [float(h["identity"]) for h in first]
    assert identities == sorted(identities, reverse=True) and all(int(h["overlap"]) > 300 for h in first)


def test_non_homologous_queries_get_no_call(matched):
    _, _, rows, _ = matched
    noise = [row for qid, row in rows.items() if qid.startswith("noise-")]
    assert len(noise) == 10 and all(row["status"] == "no_match" and not row["order"] for row in noise)


def test_a_barcode_inside_a_longer_sequence_is_found(matched, split_index, tmp_path):
    """Cut to the stretch that references cover, a barcode inside a long sequence (a mitogenome, a long read) gets
    the barcode's call, on either strand, flagged: the call covers a part of the query.  Searched whole, 4.6 kb
    of profile resemble no barcode's: with 8 candidates of ~90 (a small reference's 64 would hold them all) its
    species' references were not among them."""
    known, _, rows, _ = matched
    rng = np.random.default_rng(5)
    other = [s.sequence for s in make_reference(seed=99, id_prefix="OTHER")]  # COI-like, homologous to none
    queries = []
    for i, s in enumerate(known[:6]):
        inside = "".join(other[4 * i : 4 * i + 3]) + s.sequence + "".join(other[4 * i + 3 : 4 * i + 6])
        queries += [Specimen(f"long-{s.id}", *s.lineage, s.bin, inside),
                    Specimen(f"longrc-{s.id}", *s.lineage, s.bin, reverse_complement(inside))]
    queries += [Specimen(f"longnoise-{i}", "", "", "", "", "", random_sequence(rng, 5000)) for i in range(2)]
    fasta = write_fasta(tmp_path / "long.fasta", queries, style="bare")
    clibd_ok("match", fasta, "-i", split_index, "-o", tmp_path / "long.csv", "--candidates", "8")
    found = {row["query_id"]: row for row in read_rows(tmp_path / "long.csv")}
    for s in known[:6]:
        full = rows[f"full-{s.id}"]
        for name in (f"long-{s.id}", f"longrc-{s.id}"):
            row = found[name]
            assert (row["status"], row["species"], row["identity"]) == (full["status"], s.species, full["identity"])
            assert "low_overlap" in row["flags"] and abs(int(row["overlap"]) - len(s.sequence)) <= 5
        assert "reverse_complement" in found[f"longrc-{s.id}"]["flags"]
    assert all(found[f"longnoise-{i}"]["status"] == "no_match" for i in range(2))


def _identify(reference: list[Specimen], queries: list[Specimen], thresholds: dict[str, float]) -> list[dict]:
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    records = [SequenceRecord(q.id, q.sequence) for q in queries]
    return [r.row for r in identify(records, index, KmerProfileEncoder(), thresholds, MatchOptions())]


def test_flags_on_constructed_references():
    rng = np.random.default_rng(4)
    base = random_sequence(rng, 600)
    lineage = ("Diptera", "Culicidae", "Aedes")
    reference = [
        # two species with the same barcode in two BINs: conflict, multiple_bins
        Specimen("A1", *lineage, "Aedes one", "BOLD:AAA0001", base),
        Specimen("B1", *lineage, "Aedes two", "BOLD:AAA0002", base),
        # one BIN holding two species (top hit's BIN is shared)
        Specimen("C1", *lineage, "Aedes three", "BOLD:AAA0003", base[::-1]),
        Specimen("D1", *lineage, "Aedes four", "BOLD:AAA0003", random_sequence(rng, 600)),
        # a species with a single reference record
        Specimen("E1", *lineage, "Aedes five", "BOLD:AAA0005", random_sequence(rng, 600)),
    ]
    rows = _identify(reference, [Specimen("q1", "", "", "", "", "", base),
                                 Specimen("q2", "", "", "", "", "", base[::-1]),
                                 Specimen("q3", "", "", "", "", "", reference[4].sequence),
                                 Specimen("q4", "", "", "", "", "", reference[4].sequence[:90])], CONVENTIONAL)
    flags = {row["query_id"]: row["flags"].split(",") for row in rows}
    assert {"conflict", "multiple_bins"} <= set(flags["q1"]) and rows[0]["status"] != "assigned"
    assert "shared_bin" in flags["q2"] and "conflict" not in flags["q2"]
    assert rows[2]["species"] == "Aedes five" and "single_reference" in flags["q3"]
    assert "single_reference" not in flags["q1"] and "shared_bin" not in flags["q3"]
    # 90 bp cover the reference fully and match it exactly, but support no call at any rank (on real barcodes,
    # 60 bp stretches of missing species got a wrong genus 17 % of the time); the hit is still reported
    assert (rows[3]["status"], rows[3]["order"], rows[3]["genus"]) == ("no_match", "", "")
    assert (rows[3]["identity"], rows[3]["overlap"]) == (100.0, 90)


def test_missing_genus_stops_above_genus():
    """On a synthetic tree with whole genera absent from the reference, calibrated calls never name a genus."""
    everything = make_reference(seed=21, orders=2, families=3, genera=4, species=3, specimens=3, id_prefix="GEN")
    genera = list(dict.fromkeys(s.genus for s in everything))
    absent = set(genera[3::4])  # one genus of every family
    reference = [s for s in everything if s.genus not in absent]
    queries = [s for s in everything if s.genus in absent]
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    calibration = calibrate_open_set(index, sample=100, seed=0)
    rows = _identify(reference, queries, calibration.thresholds)
    assert rows and all(row["genus"] == "" and row["species"] == "" for row in rows)
    right_family = sum(row["family"] == q.family for row, q in zip(rows, queries, strict=True))
    wrong_family = sum(row["family"] not in ("", q.family) for row, q in zip(rows, queries, strict=True))
    assert wrong_family == 0 and right_family >= len(queries) // 2
    assert calibration.report["method"].startswith("open-set")


def test_readme_main_job_prints_what_the_readme_says():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    promised = re.search(r"`(40 queries: [^`]+)`", (root / "README.md").read_text()).group(1)
    result = clibd_ok("match", root / "examples/queries.fasta", "--index", root / "examples/reference.fasta",
                      "--format", "csv")
    assert promised in result.stderr


def test_queries_are_streamed_and_a_late_bad_record_keeps_earlier_rows(split_reference, tmp_path):
    """`match` holds one batch of queries: rows before a bad record are on disk when it stops (exit 2)."""
    reference, known, _ = split_reference
    queries = [*known[:5], known[0]]  # the sixth repeats the first id
    fasta = write_fasta(tmp_path / "q.fasta", queries, style="bare")
    from typer.testing import CliRunner

    from clibd_cli.app import app

    result = CliRunner().invoke(app, ["match", str(fasta), "-i", str(write_fasta(tmp_path / "r.fasta", reference)),
                                      "-o", str(tmp_path / "out.csv"), "--batch-size", "2"])
    assert result.exit_code == 2 and "duplicate id" in result.stderr and "Traceback" not in result.output
    rows = read_rows(tmp_path / "out.csv")
    assert [row["query_id"] for row in rows] == [q.id for q in known[:4]]  # two whole batches written
    assert all(row["species"] == q.species for row, q in zip(rows, known, strict=False))
    missing = CliRunner().invoke(app, ["match", str(tmp_path / "nope.fasta"), "-i", str(tmp_path / "r.fasta"),
                                       "-o", str(tmp_path / "never.csv")])
    assert missing.exit_code == 2 and not (tmp_path / "never.csv").exists()  # checked before any output


def test_anchor_table_finds_references_covering_a_fragment():
    from clibd_cli.anchors import AnchorTable

    rng = np.random.default_rng(12)
    barcodes = [random_sequence(rng, 650) for _ in range(50)]
    table = AnchorTable.of(barcodes, chunk=7)  # chunks must not change the table
    whole = AnchorTable.of(barcodes)
    assert all(np.array_equal(getattr(table, a), getattr(whole, a)) for a in ("words", "starts", "owners"))
    # Against every barcode's words at every 4th position, written out (those holding an N left out).
    spotted = [b[:100] + "N" + b[101:300] + "NN" + b[302:] if i % 3 == 0 else b for i, b in enumerate(barcodes)]
    code = {"A": 0, "C": 1, "G": 2, "T": 3}
    pairs = sorted((sum(code[c] << 2 * (11 - j) for j, c in enumerate(b[i : i + 12])), owner)
                   for owner, b in enumerate(spotted) for i in range(0, len(b) - 11, 4) if "N" not in b[i : i + 12])
    spotted_table = AnchorTable.of(spotted, chunk=7)
    words = np.repeat(spotted_table.words, np.diff(spotted_table.starts))
    assert list(zip(words.tolist(), spotted_table.owners.tolist(), strict=True)) == pairs
    read = barcodes[17][420:620]  # a 200 bp read from anywhere in reference 17
    assert table.candidates(read, 3)[0] == 17
    # Against a plain count of each reference's sampled 12-mers (every 4th position) that the read holds, on
    # barcodes of two letters, whose words fill the code space: a word's neighbouring codes are in the table too.
    dense = ["".join(rng.choice(list("AC"), 650)) for _ in range(50)]
    read = dense[9][100:300]
    words = {read[i : i + 12] for i in range(len(read) - 11)}
    shared = np.array([sum(b[i : i + 12] in words for i in range(0, len(b) - 11, 4)) for b in dense])
    found = AnchorTable.of(dense).candidates(read, 50)
    assert sorted(found.tolist()) == np.flatnonzero(shared).tolist()
    assert np.all(np.diff(shared[found]) <= 0)  # most shared words first
    assert table.candidates(reverse_complement(read), 3).size == 0 or table.candidates(
        reverse_complement(read), 3)[0] != 17  # words are strand-specific; match tries both strands
    assert table.candidates(random_sequence(rng, 200), 3).size <= 3


def test_short_overlaps_are_called_with_the_short_read_thresholds():
    """A 220 bp read at 96 % identity passes the whole-barcode species threshold (95 %) but not the short-read
    one (97 %); the same divergence over a whole barcode keeps its species call."""
    rng = np.random.default_rng(5)
    lineage = ("Diptera", "Culicidae", "Aedes")
    reference = [Specimen(f"R{i}", *lineage, f"Aedes s{i}", f"BOLD:AAB000{i}", random_sequence(rng, 600))
                 for i in range(3)]
    target = reference[0].sequence
    read = substitute(target[200:420], 9, rng)  # 211 / 220 = 95.9 %
    full = substitute(target, 24, rng)  # 576 / 600 = 96.0 %
    queries = [SequenceRecord("read", read), SequenceRecord("full", full)]
    thresholds = {"order": 0.85, "family": 0.90, "genus": 0.93, "species": 0.95}
    short = ({**thresholds, "species": 0.97}, 300)
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    plain = {r.row["query_id"]: r.row for r in identify(queries, index, KmerProfileEncoder(), thresholds)}
    routed = {r.row["query_id"]: r.row for r in identify(queries, index, KmerProfileEncoder(), thresholds,
                                                         short_reads=short)}
    assert plain["read"]["species"] == "Aedes s0" and int(plain["read"]["overlap"]) >= 215
    assert routed["read"]["species"] == "" and routed["read"]["genus"] == "Aedes"
    assert plain["full"]["species"] == routed["full"]["species"] == "Aedes s0"


def test_a_read_is_called_with_the_set_of_the_lowest_bound_its_overlap_is_under():
    """Two short-read sets: a 120 bp read is under both bounds and takes the stricter 100 bp set's (no genus at
    96 %), a 180 bp read at the same identity only under the 200 bp set's (genus called), a whole barcode
    under neither (species called)."""
    rng = np.random.default_rng(6)
    lineage = ("Diptera", "Culicidae", "Aedes")
    reference = [Specimen(f"R{i}", *lineage, f"Aedes s{i}", f"BOLD:AAB000{i}", random_sequence(rng, 600))
                 for i in range(3)]
    target = reference[0].sequence
    queries = [SequenceRecord("r120", substitute(target[100:220], 5, rng)),  # 115 / 120 = 95.8 %
               SequenceRecord("r180", substitute(target[100:280], 7, rng)),  # 173 / 180 = 96.1 % (or a little more)
               SequenceRecord("full", substitute(target, 23, rng))]  # 577 / 600 = 96.2 %
    thresholds = {"order": 0.85, "family": 0.90, "genus": 0.93, "species": 0.95}
    sets = [ShortReads({**thresholds, "genus": 0.97, "species": 0.98}, 150, None, 100),
            ShortReads({**thresholds, "species": 0.98}, 300, None, 200)]
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    rows = {r.row["query_id"]: r.row for r in identify(queries, index, KmerProfileEncoder(), thresholds,
                                                       short_reads=sets[::-1])}
    assert int(rows["r120"]["overlap"]) < 150 <= int(rows["r180"]["overlap"]) < 300
    assert (rows["r120"]["genus"], rows["r120"]["family"]) == ("", "Culicidae")
    assert (rows["r180"]["genus"], rows["r180"]["species"]) == ("Aedes", "")
    assert rows["full"]["species"] == "Aedes s0"


def test_an_index_holds_short_read_thresholds_no_looser_than_its_own(split_reference, tmp_path):
    reference, _, _ = split_reference
    clibd_ok("build-index", "-b", write_fasta(tmp_path / "ref.fasta", reference), "-o", tmp_path / "idx")
    index = ReferenceIndex.load(tmp_path / "idx", "dna")
    sets = index.short_read_thresholds()
    assert [(s.window, s.below_overlap) for s in sets] == [(100, 125), (150, 175), (200, 300)]
    longer = ShortReads(index.thresholds, 0, index.leads)
    for short in reversed(sets):  # each no looser than the set of the next longer window, the last than the index
        assert all(short.thresholds[rank] >= longer.thresholds[rank] for rank in RANKS)
        assert all(rank in (longer.leads or {}) and rule.lead >= longer.leads[rank].lead
                   for rank, rule in (short.leads or {}).items() if rank != "species")
        assert short.thresholds["species"] == index.thresholds["species"]  # species keeps the whole-barcode one
        longer = short
    assert [f"{s.window} bp" in entry["calibration"]["method"]
            for s, entry in zip(sets, index.manifest["short_reads"], strict=True)] == [True] * 3


def test_an_index_of_one_short_read_set_still_reads(split_reference, tmp_path):
    """Indexes built before there were several short-read sets hold one, as a mapping: read as one set."""
    reference, _, _ = split_reference
    clibd_ok("build-index", "-b", write_fasta(tmp_path / "ref.fasta", reference), "-o", tmp_path / "idx")
    index = ReferenceIndex.load(tmp_path / "idx", "dna")
    last = index.manifest["short_reads"][-1]
    index.manifest["short_reads"] = last
    index.save_manifest()
    (short,) = ReferenceIndex.load(tmp_path / "idx", "dna").short_read_thresholds()
    assert (short.thresholds, short.below_overlap, short.window) == (last["thresholds"], 300, 200)


@pytest.mark.parametrize("kept", [None, 1])
def test_repeated_sequences_get_the_calls_of_their_first(split_reference, monkeypatch, kept):
    """A repeated sequence is searched and aligned once (while among the last REPEATS_KEPT distinct ones) and
    gets exactly the row it gets alone, across batches, strands and error rows."""
    import clibd_cli.match as match

    reference, known, novel = split_reference
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    a, b, c = known[0].sequence, known[1].sequence[-313:], reverse_complement(novel[0].sequence)
    sequences = [a, b, a, "", c, b, a, c, c, "", a]
    if kept is not None:
        monkeypatch.setattr(match, "REPEATS_KEPT", kept)
    proposed: list[str] = []
    real_propose = match._propose

    def counting(queries, *args, **kwargs):
        proposed.extend(q.sequence for q in queries)
        return real_propose(queries, *args, **kwargs)

    monkeypatch.setattr(match, "_propose", counting)
    records = [SequenceRecord(f"q{i}", s) for i, s in enumerate(sequences)]
    rows = [r.row for r in identify(records, index, KmerProfileEncoder(), CONVENTIONAL, MatchOptions(batch_size=2))]
    distinct = len({s for s in sequences if s})
    if kept is None:
        assert sorted(proposed) == sorted({s for s in sequences if s})  # each distinct sequence once
    else:
        assert len(proposed) > distinct  # forgotten ones are identified again
    def text(row: dict) -> dict:  # as printed (NaN != NaN); a batch's vectorised sums may differ in the last bit
        return {key: f"{value:.12g}" if isinstance(value, float) else str(value) for key, value in row.items()
                if key != "query_id"}

    alone = {s: text(next(identify([SequenceRecord("x", s)], index, KmerProfileEncoder(), CONVENTIONAL)).row)
             for s in set(sequences)}
    assert [r["query_id"] for r in rows] == [f"q{i}" for i in range(len(sequences))]
    for s, row in zip(sequences, rows, strict=True):
        assert text(row) == alone[s]
    assert rows[4]["flags"] == rows[8]["flags"] and "reverse_complement" in rows[4]["flags"]


@pytest.mark.parametrize("fork", [True, False], ids=["processes", "threads"])
def test_verification_processes_and_batches_in_flight_give_the_same_rows(split_reference, monkeypatch, fork):
    """Two verification processes (forked where the platform allows; threads elsewhere, as on macOS and Windows),
    batches proposed while the previous one is verified, repeats of sequences still in flight: the same rows and
    hits as one thread, one batch."""
    from clibd_cli import verifier as verification
    from clibd_cli.verifier import Verifier

    monkeypatch.setattr(verification, "_FORK", fork and verification._FORK)

    reference, known, novel = split_reference
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    specimens = [*known[:6], *novel[:4]]
    order = [0, 1, 0, 2, 1, 3, 3, 4, 5, 2, 6, 7, 0, 8, 9, 9, 1]  # repeats within a batch and across batches
    queries = [SequenceRecord(f"q{i}", specimens[j].sequence) for i, j in enumerate(order)]
    queries.insert(5, SequenceRecord("empty", ""))

    def rows(**options) -> list[tuple[dict, list[dict]]]:
        found = identify(queries, index, KmerProfileEncoder(), dict(CONVENTIONAL), MatchOptions(top_k=5, **options))
        return [(r.row, r.hits) for r in found]

    single = rows(threads=1, batch_size=1024)
    assert [row["query_id"] for row, _ in single] == [q.id for q in queries]
    assert single[1][0]["species"] == known[1].species and single[5][0]["status"] == "error"
    assert all(len(hits) == 5 for _, hits in single[:5])
    for size in (1, 3):  # (a batch's calls are voted in one matrix: its width may move a score's last digit)
        in_line = rows(threads=1, batch_size=size)
        assert [row["species"] for row, _ in in_line] == [row["species"] for row, _ in single]
        assert repr(rows(threads=2, batch_size=size)) == repr(in_line)  # repr: a missing identity (nan) reads the same
    assert repr(rows(threads=2, batch_size=1024)) == repr(single)  # calls are made in chunks, alike in line
    with Verifier(index, threads=2) as verifier:
        assert (verifier._processes is not None) == (fork and sys.platform.startswith("linux"))
        assert (verifier._threads is not None) == (not fork or not sys.platform.startswith("linux"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="verification processes are forked on Linux only")
def test_a_verification_process_that_dies_is_an_error_not_a_hang(split_reference):
    """A worker killed mid-run (the kernel's out-of-memory killer) loses its work: waiting for it would never end."""
    import os
    import signal

    from clibd_cli.errors import ClibdError
    from clibd_cli.verifier import Verifier

    reference, known, _ = split_reference
    index = ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder())
    jobs = [(s.sequence, np.arange(index.vectors().shape[0])) for s in known] * 400  # seconds of work
    with Verifier(index, threads=2) as verifier:
        assert len(verifier.submit(jobs[:3], 5)()) == 3
        waiting = verifier.submit(jobs, 5)
        os.kill(next(iter(verifier._processes._processes)), signal.SIGKILL)
        with pytest.raises(ClibdError, match="verification process ended unexpectedly"):
            waiting()


@pytest.mark.parametrize("fork", [True, False], ids=["processes", "threads"])
def test_a_small_run_reads_only_its_candidates_barcodes(split_reference, tmp_path, monkeypatch, fork):
    """A run of a few queries against a saved index reads its candidates' barcodes from SQLite instead of encoding
    every barcode of the reference first: the same rows and hits, in verification processes or threads, fragments
    (whose word table the index holds) included."""
    import clibd_cli.match as match
    from clibd_cli import verifier as verification

    monkeypatch.setattr(verification, "_FORK", fork and verification._FORK)
    default_cost = match.LOOKUP_COST
    reference, known, novel = split_reference
    ReferenceIndex.from_records(to_records(reference), KmerProfileEncoder()).save(tmp_path / "idx")
    full = [SequenceRecord(f"q{i}", s.sequence) for i, s in enumerate([*known[:4], *novel[:2]])]
    fragments = [*full, SequenceRecord("leray", known[4].sequence[-313:]), SequenceRecord("empty", "")]

    def run(queries: list[SequenceRecord], cost: int) -> tuple[str, ReferenceIndex]:
        monkeypatch.setattr(match, "LOOKUP_COST", cost)
        index = ReferenceIndex.load(tmp_path / "idx")
        found = identify(queries, index, KmerProfileEncoder(), dict(CONVENTIONAL), MatchOptions(top_k=5, threads=2))
        return repr([(r.row, r.hits) for r in found]), index  # repr: a missing identity (nan) reads the same

    for queries in (full, fragments):
        encoded, everything = run(queries, 10**9)  # a lookup costing this much: every barcode encoded first
        looked_up, few = run(queries, 0)
        assert not everything.look_up_inputs and everything._input_codes is not None
        assert few.look_up_inputs and looked_up == encoded
    assert few._input_codes is None and few._anchors is not None  # the fragment's word table: mapped, not built
    if not verification._FORK:  # (verification threads read them in this process)
        assert 0 < len(few._lookup.kept) < few.spec.counts.vectors
    _, default = run(full, default_cost)
    assert not default.look_up_inputs  # 6 queries × 64 candidates are not few beside this small reference
