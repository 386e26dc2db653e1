"""Darwin Core output (`--format dwc`, `-o calls.dwc.csv`) of `clibd match` and `clibd classify`.

Every column must be a published term (tests/data/dwc_terms.txt cites the lists), and every row must say
what the ordinary output says: the same call, at the same rank, for the same query.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import clibd_ok, invoke, one_error_line, read_rows

from clibd_cli import __version__
from clibd_cli.darwincore import CORE_TERMS, DNA_TERMS, specific_epithet

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RANKS = ("order", "family", "genus", "species")


def published_terms() -> dict[str, set[str]]:
    """The term lists of tests/data/dwc_terms.txt, by section ([dwc], [dna])."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in (ROOT / "tests" / "data" / "dwc_terms.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), set())
        else:
            current.add(line)
    return sections


def read_fasta(path: Path) -> list[tuple[str, str]]:
    records, name, seq = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(seq)))
            name, seq = line[1:].split("|")[0].split()[0], []
        elif line.strip():
            seq.append(line.strip())
    records.append((name, "".join(seq)))
    return records


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


def rows_by_id(rows: list[dict], key: str) -> dict[str, dict]:
    return {row[key]: row for row in rows}


def assert_same_call(occurrence: dict, call: dict) -> None:
    """A dwc row names exactly the deepest called rank of the ordinary row, with the ranks above it."""
    rank = call["rank"]
    assert occurrence["taxonRank"] == rank
    assert occurrence["scientificName"] == (call[rank] if rank else "")
    for r in ("order", "family", "genus"):
        assert occurrence[r] == call[r], (r, occurrence, call)
    assert occurrence["kingdom"] == occurrence["phylum"] == occurrence["class"] == ""
    assert occurrence["identificationVerificationStatus"] == ("0" if rank else "")
    assert f"{call['status']}:" in occurrence["identificationRemarks"]
    if rank:
        assert f"called to {rank}, score {float(call[f'{rank}_score']):.3f}" in occurrence["identificationRemarks"]
    if call["flags"]:
        assert f"flags: {call['flags']}" in occurrence["identificationRemarks"]
    if call["top_hit_id"]:
        assert f"top hit {call['top_hit_id']}" in occurrence["identificationRemarks"]


@pytest.fixture(scope="module")
def example_match(tmp_path_factory) -> tuple[list[str], list[dict], list[dict]]:
    """The README's example, once as Darwin Core (from the -o extension) and once as ordinary CSV."""
    out = tmp_path_factory.mktemp("dwc")
    queries, reference = EXAMPLES / "queries.fasta", EXAMPLES / "reference.fasta"
    before = datetime.now(UTC).replace(microsecond=0)
    clibd_ok("match", queries, "--index", reference, "-o", out / "calls.dwc.csv")
    after = datetime.now(UTC)
    clibd_ok("match", queries, "--index", reference, "-o", out / "calls.csv")
    text = (out / "calls.dwc.csv").read_text()
    header = text.splitlines()[0].split(",")
    rows = read_rows(out / "calls.dwc.csv")
    for row in rows:
        when = datetime.fromisoformat(row["dateIdentified"])
        assert when.tzinfo is not None and before <= when <= after + timedelta(seconds=1)
    return header, rows, read_rows(out / "calls.csv")


def test_match_dwc_columns_are_published_terms(example_match):
    header, rows, _ = example_match
    terms = published_terms()
    assert header == [*CORE_TERMS, *DNA_TERMS]
    assert set(CORE_TERMS) <= terms["dwc"] and set(DNA_TERMS) <= terms["dna"]
    assert {"basisOfRecord", "scientificName", "taxonRank", "DNA_sequence", "target_gene"} <= set(header)
    assert {row["basisOfRecord"] for row in rows} == {"MaterialSample"}
    assert {row["identifiedBy"] for row in rows} == {f"clibd {__version__}"}


def test_match_dwc_has_the_calls_and_the_sequences(example_match):
    _, rows, calls = example_match
    queries = read_fasta(EXAMPLES / "queries.fasta")
    assert [row["occurrenceID"] for row in rows] == [name for name, _ in queries]  # one row per query, in order
    sequences = dict(queries)
    by_id = rows_by_id(calls, "query_id")
    for row in rows:
        assert row["DNA_sequence"] == sequences[row["occurrenceID"]]
        assert row["target_gene"] == ""  # a plain FASTA does not say which marker it holds
        assert_same_call(row, by_id[row["occurrenceID"]])
    species = [r for r in rows if r["taxonRank"] == "species"]
    genus = [r for r in rows if r["taxonRank"] == "genus"]
    assert len(species) == 32 and len(genus) >= 1  # README: 32 assigned, 8 novel_candidate (genus calls here)
    for row in species:
        call = by_id[row["occurrenceID"]]
        assert row["scientificName"] == call["species"]
        assert row["specificEpithet"] == call["species"].split()[1]
    for row in genus:
        call = by_id[row["occurrenceID"]]
        assert row["scientificName"] == call["genus"] and row["specificEpithet"] == ""
        assert "species not called" in row["identificationRemarks"]


def test_match_dwc_to_stdout(tmp_path):
    queries = write_fasta(tmp_path / "q.fasta", read_fasta(EXAMPLES / "queries.fasta")[:4])
    result = clibd_ok("match", queries, "--index", EXAMPLES / "reference.fasta", "--format", "dwc")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [*CORE_TERMS, *DNA_TERMS]
    assert [r["occurrenceID"] for r in rows] == [name for name, _ in read_fasta(queries)]
    assert all(r["scientificName"] and r["DNA_sequence"] for r in rows)


def test_target_gene_is_the_marker_the_query_table_names(tmp_path):
    records = read_fasta(EXAMPLES / "queries.fasta")[:3]
    table = tmp_path / "bold.tsv"
    table.write_text("processid\tmarker_code\tnuc\n" +
                     "".join(f"{name}\tCOI-5P\t{seq.lower()}\n" for name, seq in records))
    out = tmp_path / "calls.dwc.csv"
    clibd_ok("match", table, "--index", EXAMPLES / "reference.fasta", "-o", out)
    rows = read_rows(out)
    assert [r["target_gene"] for r in rows] == ["COI-5P"] * 3
    assert [r["DNA_sequence"] for r in rows] == [seq for _, seq in records]  # normalised to upper case


def _awkward_queries(tmp_path: Path) -> Path:
    """Queries with a formula-like id, one without a sequence and one that matches nothing."""
    records = read_fasta(EXAMPLES / "queries.fasta")
    rng = random.Random(7)
    noise = "".join(rng.choice("ACGT") for _ in range(650))
    return write_fasta(tmp_path / "q.fasta", [("=HYPERLINK(1)", records[0][1]), records[1], ("empty", "NNNN"),
                                              ("noise", noise), *records[2:4]])


def test_dwc_rows_without_a_call_and_formula_cells(tmp_path):
    reference = tmp_path / "ref.fasta"
    first = read_fasta(EXAMPLES / "queries.fasta")[0][1]
    lines = (EXAMPLES / "reference.fasta").read_text()
    species = "Lestotocera scichasalis"  # the species of the first query (see the README example's output)
    reference.write_text(lines.replace(f"|{species}|", f"|@{species}|"))
    out = tmp_path / "calls.dwc.csv"
    queries = _awkward_queries(tmp_path)
    with open(queries, "a") as handle:  # and 60 bp of a barcode: matched exactly, too short for any call
        handle.write(f">stretch\n{read_fasta(EXAMPLES / 'queries.fasta')[1][1][200:260]}\n")
    clibd_ok("match", queries, "--index", reference, "-o", out)
    with open(out, newline="") as handle:
        raw = list(csv.DictReader(handle))
    by_id = rows_by_id(raw, "occurrenceID")
    formula = by_id["'=HYPERLINK(1)"]  # neutralised like every CSV output
    assert formula["scientificName"] == f"'@{species}" and formula["DNA_sequence"] == first
    assert formula["specificEpithet"] == ""  # "@Lestotocera" is not the genus "Lestotocera": no binomial
    empty, noise = by_id["empty"], by_id["noise"]
    for row in (empty, noise):
        assert row["scientificName"] == row["taxonRank"] == row["genus"] == ""
        assert row["identificationVerificationStatus"] == ""
    assert "error: not identified (no sequence" in empty["identificationRemarks"] and empty["DNA_sequence"] == ""
    assert "no_match: no rank's score reaches its threshold" in noise["identificationRemarks"]
    assert "order not called, score" in noise["identificationRemarks"]
    stretch = by_id["stretch"]  # the remark says why it has no call
    assert stretch["scientificName"] == "" and ("no_match: its top hit overlaps it by 60 bp, fewer than the 100 bp"
                                                in stretch["identificationRemarks"])


def test_dwc_resume_continues_where_the_file_ends(tmp_path):
    queries, reference = _awkward_queries(tmp_path), EXAMPLES / "reference.fasta"
    out = tmp_path / "calls.dwc.csv"
    clibd_ok("match", queries, "--index", reference, "-o", out)
    complete = out.read_text().splitlines(keepends=True)
    assert len(complete) == 1 + 6
    out.write_text("".join(complete[:3]) + complete[3][:20])  # header, 2 rows (one id quoted) and half a row
    result = clibd_ok("match", queries, "--index", reference, "-o", out, "--resume")
    assert "2 already done" in result.stderr
    lines = out.read_text().splitlines(keepends=True)
    assert lines[:3] == complete[:3]  # the finished rows are kept as written
    ids = [r["occurrenceID"] for r in read_rows(out)]
    assert ids == ["'=HYPERLINK(1)", *[name for name, _ in read_fasta(queries)[1:]]]
    assert [line.split(",")[:4] for line in lines[3:]] == [line.split(",")[:4] for line in complete[3:]]


def test_dwc_refused_where_it_has_no_meaning(tmp_path):
    queries = write_fasta(tmp_path / "q.fasta", read_fasta(EXAMPLES / "queries.fasta")[:2])
    hits = tmp_path / "hits.dwc.csv"
    result = invoke("match", queries, "--index", EXAMPLES / "reference.fasta", "--hits", hits, "-o",
                    tmp_path / "calls.csv")
    one_error_line(result, str(hits), "not Darwin Core")
    assert not hits.exists()
    result = invoke("check", "--manifest", tmp_path / "specimens.csv", "--model", EXAMPLES / "demo-model",
                    "--index", tmp_path / "idx", "--format", "dwc")
    one_error_line(result, "Darwin Core output is for identifications")


def test_classify_demo_writes_dwc_without_dna_terms(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, index = EXAMPLES / "demo-model", tmp_path / "demo_index"
    clibd_ok("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", model, "-o", index)
    clibd_ok("calibrate", "--index", index, "--model", model, "--images", EXAMPLES / "demo-labelled-photos.tsv")
    out, plain = tmp_path / "calls.dwc.csv", tmp_path / "calls.csv"
    clibd_ok("classify", EXAMPLES / "photos", "--model", model, "--index", index, "-o", out)
    clibd_ok("classify", EXAMPLES / "photos", "--model", model, "--index", index, "-o", plain)
    header = out.read_text().splitlines()[0].split(",")
    assert header == CORE_TERMS and set(header) <= published_terms()["dwc"]
    rows, calls = read_rows(out), rows_by_id(read_rows(plain), "query_id")
    assert sorted(r["occurrenceID"] for r in rows) == sorted(p.name for p in (EXAMPLES / "photos").iterdir())
    assert {r["basisOfRecord"] for r in rows} == {"MachineObservation"}
    for row in rows:
        assert_same_call(row, calls[row["occurrenceID"]])
        assert "clibd classify: photo embedding" in row["identificationRemarks"]
    # the toy model calls some photos to a rank and leaves others unnamed: both kinds of row are checked
    assert any(r["taxonRank"] for r in rows) and any(not r["taxonRank"] for r in rows)


@pytest.mark.parametrize(("species", "genus", "epithet"), [
    ("Aedes aegypti", "Aedes", "aegypti"),
    ("Aedes sp. BOLD:AAA1234", "Aedes", ""),  # interim name: no epithet
    ("Aedes aegypti", "Culex", ""),  # not a binomial of the called genus
    ("Aedes Aegypti", "Aedes", ""),
    ("Aedes", "Aedes", ""),
])
def test_specific_epithet_only_of_a_binomial(species, genus, epithet):
    assert specific_epithet(species, genus) == epithet


def test_remarks_quote_the_threshold_set_the_read_was_called_with():
    """A read whose top hit overlaps fewer columns than the run's short-read bound was called with that set."""
    from clibd_cli.darwincore import BARCODE, identification_remarks

    info = {"thresholds": {"order": 0.85, "family": 0.9, "genus": 0.94, "species": 0.97},
            "short_read_thresholds": {"thresholds": {"order": 0.9, "family": 0.95, "genus": 0.955,
                                                     "species": 0.98}, "below_overlap": 300}}
    row = {"status": "rolled_up", "rank": "genus", "genus_score": 0.96, "species_score": 0.965,
           "top_hit_id": "R1", "identity": 96.5, "flags": ""}
    short = identification_remarks({**row, "overlap": 220}, BARCODE, info)
    full = identification_remarks({**row, "overlap": 640}, BARCODE, info)
    assert "(threshold 0.955)" in short and "(threshold 0.980)" in short
    assert "(threshold 0.940)" in full and "(threshold 0.970)" in full


def test_remarks_quote_the_set_of_the_lowest_bound_the_overlap_is_under():
    """With several short-read sets, a read is quoted the one with the lowest bound above its overlap."""
    from clibd_cli.darwincore import BARCODE, identification_remarks

    info = {"thresholds": {"order": 0.85, "family": 0.9, "genus": 0.94, "species": 0.97},
            "short_read_thresholds": [
                {"thresholds": {"order": 0.9, "family": 0.95, "genus": 0.955, "species": 0.97}, "below_overlap": 300},
                {"thresholds": {"order": 0.93, "family": 0.96, "genus": 0.965, "species": 0.97},
                 "below_overlap": 150}]}
    row = {"status": "rolled_up", "rank": "family", "genus_score": 0.96, "species_score": 0.965,
           "top_hit_id": "R1", "identity": 96.5, "flags": ""}
    assert "(threshold 0.965)" in identification_remarks({**row, "overlap": 120}, BARCODE, info)
    assert "(threshold 0.955)" in identification_remarks({**row, "overlap": 220}, BARCODE, info)
    assert "(threshold 0.940)" in identification_remarks({**row, "overlap": 640}, BARCODE, info)


def test_remarks_name_the_lead_rule_a_call_below_its_threshold_was_made_by():
    from clibd_cli.darwincore import BARCODE, identification_remarks

    info = {"thresholds": {"order": 0.85, "family": 0.9, "genus": 0.95, "species": 0.97},
            "leads": {"genus": {"lead": 0.02, "threshold": 0.93}},
            "short_read_thresholds": {"thresholds": {"order": 0.9, "family": 0.95, "genus": 0.96, "species": 0.98},
                                      "below_overlap": 300}}
    row = {"status": "novel_candidate", "rank": "genus", "genus_score": 0.935, "species_score": 0.935,
           "top_hit_id": "R1", "identity": 93.5, "overlap": 640, "flags": ""}
    remarks = identification_remarks(row, BARCODE, info)
    assert "called to genus, score 0.935 (threshold 0.950), by its lead rule: from 0.930 when 2 identity points " \
           "above any other genus" in remarks
    # A call above its threshold, or a short read (whose set has no rule), names no rule.
    assert "lead rule" not in identification_remarks({**row, "genus_score": 0.955}, BARCODE, info)
    assert "lead rule" not in identification_remarks({**row, "overlap": 200}, BARCODE, info)
