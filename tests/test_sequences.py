"""Reading barcodes: normalisation, QC flags, FASTA header styles and table formats."""

from __future__ import annotations

import csv
import gzip
import re

import pytest
from conftest import make_reference, requires_shared, shared_path, write_fasta, write_table

from clibd_cli.errors import InputError
from clibd_cli.sequences import (
    QCConfig,
    normalise_sequence,
    parse_fasta_header,
    qc_flags,
    read_sequences,
    require_taxonomy,
    sniff_format,
)

ACGTN = re.compile(r"^[ACGTN]*$")


# ------------------------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize(("raw", "expected"), [
    ("acgt", "ACGT"),
    ("AcGu", "ACGT"),
    ("ACG-T.A", "ACGTA"),
    ("---ACGT---", "ACGT"),
    ("AC GT\nAC\r\nGT\t", "ACGTACGT"),
    ("ARYSWKMBDHVT", "ANNNNNNNNNNT"),
    ("ryswkmbdhvn", ""),
    ("NNNACGTNNN", "ACGT"),
    ("nnACnnGTnn", "ACNNGT"),
    ("RYACGTKM", "ACGT"),  # ambiguity codes at the ends become N and are trimmed
    ("--NN..ACGT..NN--", "ACGT"),
    ("", ""),
    ("----", ""),
])
def test_normalise_sequence(raw, expected):
    assert normalise_sequence(raw) == expected


def test_normalise_keeps_internal_n_and_length_of_real_bases():
    raw = "---acgu-ryN.ACGT---"
    assert normalise_sequence(raw) == "ACGTNNNACGT"


@pytest.mark.parametrize(("sequence", "flags"), [
    ("", ("empty",)),
    ("ACGT" * 10, ("short",)),
    ("ACGT" * 100, ()),
    ("ACGT" * 45 + "N" * 20 + "ACGT" * 45, ("ambiguous",)),
    ("ACGT" * 10 + "NNNN" * 10 + "ACGT" * 10, ("short", "ambiguous")),
])
def test_qc_flags(sequence, flags):
    assert qc_flags(sequence) == flags


def test_qc_thresholds_are_configurable():
    seq = "A" * 150 + "N" * 10 + "C" * 40  # 200 bp, 5 % N
    assert qc_flags(seq) == ()
    assert qc_flags(seq, QCConfig(min_length=201)) == ("short",)
    assert qc_flags(seq, QCConfig(max_ambiguous=0.04)) == ("ambiguous",)


def test_read_applies_normalisation_and_flags(tmp_path):
    path = tmp_path / "mixed.fasta"
    path.write_text(">a|Diptera|Culicidae|Aedes|Aedes aegypti|BOLD:AAA1234\n"
                    "nn--acgu\nacgt-ryac\n"
                    ">b|Diptera|Culicidae|Aedes|Aedes aegypti|\n" + "ACGT" * 60 + "\n")
    result = read_sequences([path])
    a, b = result.records
    assert a.sequence == "ACGTACGTNNAC"
    assert a.flags == ("short", "ambiguous")
    assert b.sequence == "ACGT" * 60 and b.flags == ()
    assert a.source.startswith(f"{path}: record 1")


# ------------------------------------------------------------------------------------------- FASTA headers

def test_header_pipe_style():
    seq_id, tax, bin_uri = parse_fasta_header("ABC123-19|Diptera|Culicidae|Aedes|Aedes aegypti|BOLD:AAA1234")
    assert seq_id == "ABC123-19"
    assert tax == {"order": "Diptera", "family": "Culicidae", "genus": "Aedes", "species": "Aedes aegypti"}
    assert bin_uri == "BOLD:AAA1234"


def test_header_pipe_style_missing_labels_and_genus_from_species():
    seq_id, tax, bin_uri = parse_fasta_header("X1|Diptera|not_classified||Aedes vexans|None")
    assert seq_id == "X1"
    assert tax == {"order": "Diptera", "family": "", "genus": "Aedes", "species": "Aedes vexans"}
    assert bin_uri == ""


def test_header_pipe_style_without_bin():
    _, tax, bin_uri = parse_fasta_header("X2|Coleoptera|Carabidae|Carabus|")
    assert tax == {"order": "Coleoptera", "family": "Carabidae", "genus": "Carabus", "species": ""}
    assert bin_uri == ""


def test_header_sintax():
    seq_id, tax, bin_uri = parse_fasta_header(
        "GBMIN123-13;tax=o:Lepidoptera,f:Saturniidae,g:Eacles,s:Eacles_ormondei;")
    assert seq_id == "GBMIN123-13"
    assert tax == {"order": "Lepidoptera", "family": "Saturniidae", "genus": "Eacles",
                   "species": "Eacles ormondei"}
    assert bin_uri == ""


def test_header_sintax_partial_lineage_ignores_other_ranks():
    _, tax, _ = parse_fasta_header("q1;tax=d:Eukaryota,p:Arthropoda,c:Insecta,o:Diptera,f:Chironomidae")
    assert tax == {"order": "Diptera", "family": "Chironomidae", "genus": "", "species": ""}


def test_header_bold_download():
    seq_id, tax, bin_uri = parse_fasta_header("ASARD6776-12|Eacles ormondei|COI-5P|JF860974")
    assert seq_id == "ASARD6776-12"
    assert tax == {"order": "", "family": "", "genus": "Eacles", "species": "Eacles ormondei"}
    assert bin_uri == ""


@pytest.mark.parametrize("name", ["Lepidoptera", "Eacles", "Saturniidae"])
def test_header_bold_download_single_word_is_not_a_species(name):
    """BOLD puts the deepest identified taxon there; one word is a genus, family or order, never a species."""
    _, tax, _ = parse_fasta_header(f"BLPAA1-17|{name}|COI-5P")
    assert tax["species"] == ""
    if name != "Eacles":
        assert tax["genus"] == ""


@pytest.mark.parametrize("header", ["seq42", "seq42 some description here", "seq42|", "seq42|extra"])
def test_header_bare_id(header):
    seq_id, tax, bin_uri = parse_fasta_header(header)
    assert seq_id == "seq42"
    assert not any(tax.values())
    assert bin_uri == ""


@pytest.mark.parametrize("style", ["pipe", "sintax", "bold"])
def test_fasta_styles_round_trip(tmp_path, style):
    specimens = make_reference(seed=3, orders=1, families=1, genera=2, species=2, specimens=2)
    path = write_fasta(tmp_path / f"{style}.fasta", specimens, style=style, width=60)
    records = read_sequences([path]).records
    assert [r.id for r in records] == [s.id for s in specimens]
    assert [r.sequence for r in records] == [s.sequence for s in specimens]
    for record, s in zip(records, specimens, strict=True):
        assert record.taxonomy["species"] == s.species
        assert record.taxonomy["genus"] == s.genus
        if style != "bold":
            assert record.taxonomy["family"] == s.family
            assert record.taxonomy["order"] == s.order
        assert record.bin == (s.bin if style == "pipe" else "")


def test_bare_fasta_has_no_taxonomy_and_is_refused_as_reference(tmp_path):
    specimens = make_reference(seed=3, orders=1, families=1, genera=1, species=2, specimens=2)
    path = write_fasta(tmp_path / "bare.fasta", specimens, style="bare")
    records = read_sequences([path]).records
    assert len(records) == 4 and not any(r.has_taxonomy for r in records)
    with pytest.raises(InputError, match="no record has a taxonomy"):
        require_taxonomy(records, str(path))


def test_gzip_fasta(tmp_path):
    specimens = make_reference(seed=4, orders=1, families=1, genera=1, species=3, specimens=3)
    plain = write_fasta(tmp_path / "ref.fasta", specimens)
    packed = write_fasta(tmp_path / "ref.fasta.gz", specimens)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert sniff_format(packed) == "fasta"
    a, b = read_sequences([plain]).records, read_sequences([packed]).records
    def facts(records):
        return [(r.id, r.sequence, r.taxonomy, r.bin) for r in records]

    assert facts(a) == facts(b)


def test_gzip_table(tmp_path):
    path = tmp_path / "t.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("processid\tspecies\tnucleotides\nP1\tAedes aegypti\tACGTACGT\n")
    (record,) = read_sequences([path]).records
    assert (record.id, record.sequence, record.taxonomy["genus"]) == ("P1", "ACGTACGT", "Aedes")


def test_several_files_are_concatenated_and_duplicates_across_files_refused(tmp_path):
    specimens = make_reference(seed=5, orders=1, families=1, genera=1, species=2, specimens=2)
    a = write_fasta(tmp_path / "a.fasta", specimens[:2])
    b = write_fasta(tmp_path / "b.fasta", specimens[2:])
    result = read_sequences([a, b])
    assert [r.id for r in result.records] == [s.id for s in specimens]
    assert result.files == [str(a), str(b)]
    c = write_fasta(tmp_path / "c.fasta", specimens[1:2])
    with pytest.raises(InputError, match=rf"duplicate id '{specimens[1].id}'") as info:
        read_sequences([a, c])
    assert str(a) in str(info.value) and str(c) in str(info.value)


# ------------------------------------------------------------------------------------------- tables

def test_csv_with_named_columns(tmp_path):
    path = write_table(tmp_path / "lab.csv", ["Sample", "Genus", "species_name", "DNA seq", "notes"],
                       [["s1", "Aedes", "Aedes aegypti", "acgtACGT-n", "x"],
                        ["s2", "", "Culex pipiens", "TTTTGGGG", "y"]], ",")
    assert sniff_format(path) == "csv"
    with pytest.raises(InputError, match="no sequence column"):
        read_sequences([path])
    with pytest.raises(InputError, match="no id column"):
        read_sequences([path], sequence_column="DNA seq")
    with pytest.raises(InputError, match="no column named 'dna'"):
        read_sequences([path], id_column="Sample", sequence_column="dna")
    records = read_sequences([path], id_column="sample", sequence_column="DNA SEQ").records
    assert [(r.id, r.sequence) for r in records] == [("s1", "ACGTACGT"), ("s2", "TTTTGGGG")]
    assert records[0].taxonomy == {"order": "", "family": "", "genus": "Aedes", "species": "Aedes aegypti"}
    assert records[1].taxonomy["genus"] == "Culex"


def test_tsv_with_named_columns(tmp_path):
    path = write_table(tmp_path / "lab.tsv", ["tube", "order", "barcode_seq"],
                       [["T1", "Diptera", "ACGTTT"], ["T2", "Coleoptera", "GGGCCC"]], "\t")
    assert sniff_format(path) == "tsv"
    records = read_sequences([path], id_column="tube", sequence_column="barcode_seq").records
    assert [(r.id, r.sequence, r.taxonomy["order"]) for r in records] == [
        ("T1", "ACGTTT", "Diptera"), ("T2", "GGGCCC", "Coleoptera")]


def test_bioscan_1m_tsv(tmp_path):
    header = ["sampleid", "processid", "uri", "name", "phylum", "class", "order", "family", "subfamily",
              "tribe", "genus", "species", "subspecies", "nucraw", "image_file", "large_diptera_family"]
    rows = [
        ["BIOUG01", "BIOUG001-21", "BOLD:ACJ7512", "Cecidomyiidae", "Arthropoda", "Insecta", "Diptera",
         "Cecidomyiidae", "not_classified", "not_classified", "not_classified", "not_classified",
         "not_classified", "AACATTATATTTTATTTTTGGNNN---", "a.jpg", "Cecidomyiidae"],
        ["BIOUG02", "BIOUG002-21", "not_classified", "Aedes vexans", "Arthropoda", "Insecta", "Diptera",
         "Culicidae", "Culicinae", "Aedini", "Aedes", "Aedes vexans", "not_classified",
         "aacattatattttatttttgg", "b.jpg", "not_classified"],
    ]
    path = write_table(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", header, rows, "\t")
    first, second = read_sequences([path]).records
    assert first.id == "BIOUG001-21" and second.id == "BIOUG002-21"
    assert first.taxonomy == {"order": "Diptera", "family": "Cecidomyiidae", "genus": "", "species": ""}
    assert first.bin == "BOLD:ACJ7512"
    assert first.sequence == "AACATTATATTTTATTTTTGG"
    assert second.taxonomy == {"order": "Diptera", "family": "Culicidae", "genus": "Aedes",
                               "species": "Aedes vexans"}
    assert second.bin == ""
    assert second.sequence == "AACATTATATTTTATTTTTGG"


def test_bioscan_5m_csv(tmp_path):
    header = ["processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily", "genus",
              "species", "dna_bin", "dna_barcode", "split"]
    rows = [["BIOSCAN5M-1", "S1", "Diptera", "Arthropoda", "Insecta", "Diptera", "Sciaridae", "",
             "Bradysia", "Bradysia sp.1", "BOLD:AAB0001", "ACGTACGTNN", "train"],
            ["BIOSCAN5M-2", "S2", "Hemiptera", "Arthropoda", "Insecta", "Hemiptera", "", "", "", "",
             "", "TTGGCCAA", "test"]]
    path = write_table(tmp_path / "BIOSCAN_5M_Insect_Dataset_metadata.csv", header, rows, ",")
    a, b = read_sequences([path]).records
    assert (a.id, a.sequence, a.bin) == ("BIOSCAN5M-1", "ACGTACGT", "BOLD:AAB0001")
    assert a.taxonomy == {"order": "Diptera", "family": "Sciaridae", "genus": "Bradysia",
                          "species": "Bradysia sp.1"}
    assert b.taxonomy == {"order": "Hemiptera", "family": "", "genus": "", "species": ""}
    assert b.bin == ""


def test_table_rows_without_sequence_are_skipped_and_counted(tmp_path):
    path = write_table(tmp_path / "bold.tsv", ["processid", "markercode", "nucleotides"],
                       [["P1", "COI-5P", "ACGT"], ["P2", "28S", ""], ["P3", "COI-5P", "---"]], "\t")
    result = read_sequences([path])
    assert [r.id for r in result.records] == ["P1"]
    assert result.skipped_empty == 2


def test_short_rows_are_padded(tmp_path):
    path = tmp_path / "ragged.tsv"
    path.write_text("processid\tnucleotides\tspecies\nP1\tACGT\nP2\tGGCC\tAedes vexans\n")
    a, b = read_sequences([path]).records
    assert a.taxonomy["species"] == "" and b.taxonomy["species"] == "Aedes vexans"


def test_record_without_id_is_refused(tmp_path):
    path = write_table(tmp_path / "noid.csv", ["processid", "nucleotides"], [["P1", "ACGT"], ["", "ACGT"]],
                       ",")
    with pytest.raises(InputError, match=r"line 3: the record has no id"):
        read_sequences([path])


def test_fastq_is_refused(tmp_path):
    path = tmp_path / "reads.fq"
    path.write_text("@read1\nACGT\n+\nIIII\n")
    with pytest.raises(InputError, match="FASTQ"):
        read_sequences([path])


def test_header_only_fasta_has_no_sequences(tmp_path):
    path = tmp_path / "headers.fasta"
    path.write_text(">a|Diptera|Culicidae|Aedes|Aedes vexans|\n>b\n")
    with pytest.raises(InputError, match="no record has a DNA sequence"):
        read_sequences([path])


# ------------------------------------------------------------------------------------------- real files

@requires_shared
def test_real_bold_combined_tsv():
    path = shared_path("bold_api/coelioxys_bold_combined_2023-03-12.tsv")
    csv.field_size_limit(1 << 30)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    with_sequence = [r for r in rows if normalise_sequence(r["nucleotides"])]
    result = read_sequences([path])
    assert len(result.records) == len(with_sequence)
    assert result.skipped_empty == len(rows) - len(with_sequence)
    assert len(rows) == 421 and len(result.records) == 397
    by_id = {r.id: r for r in result.records}
    assert len(by_id) == len(result.records)
    for row in with_sequence:
        record = by_id[row["processid"]]
        assert record.taxonomy["order"] == row["order_name"]
        assert record.taxonomy["family"] == row["family_name"]
        assert record.taxonomy["genus"] == (row["genus_name"] or record.taxonomy["genus"])
        assert record.taxonomy["species"] == row["species_name"]
        assert record.bin == row["bin_uri"]
        assert ACGTN.match(record.sequence)
    assert {r.taxonomy["order"] for r in result.records} == {"Hymenoptera"}
    assert {r.taxonomy["genus"] for r in result.records} >= {"Coelioxys"}


@requires_shared
def test_real_coelioxys_fasta():
    path = shared_path("bold_api/coelioxys_coi5p.fasta")
    records = read_sequences([path]).records
    assert len(records) == 390
    headers = [line[1:].rstrip("\n") for line in path.read_text().splitlines() if line.startswith(">")]
    for record, header in zip(records, headers, strict=True):
        fields = header.split("|")
        assert record.id == fields[0]
        assert record.taxonomy["order"] == fields[1]
        assert record.taxonomy["species"] == fields[4]
        assert ACGTN.match(record.sequence)
    assert all(r.taxonomy["family"] == "Megachilidae" for r in records)
    assert sum(r.bin.startswith("BOLD:") for r in records) > 300


@requires_shared
def test_real_bold_download_fasta():
    path = shared_path("bold_api/eacles_ormondei_BIN_BOLD-AAA5125_2023-02-20.fasta")
    records = read_sequences([path]).records
    assert len(records) == 125
    species = [r.taxonomy["species"] for r in records]
    assert species.count("Eacles ormondeiDHJ01") == 114
    assert species.count("Eacles ormondei janzeni") == 5
    assert species.count("Eacles ormondei") == 1
    # Genus- and order-level identifications ('Eacles', 'Lepidoptera') are not species names.
    assert species.count("") == 5
    assert {r.taxonomy["genus"] for r in records if r.taxonomy["species"]} == {"Eacles"}
    assert all(r.taxonomy["genus"] != "Lepidoptera" for r in records)
    assert all(ACGTN.match(r.sequence) and len(r.sequence) > 300 for r in records)


@requires_shared
def test_real_bold_dev_file_has_only_clean_sequences():
    path = shared_path("bold_insect_coi_dev.tsv.gz")
    result = read_sequences([path])
    assert len(result.records) == 90_084
    assert result.skipped_empty == 0
    assert all(ACGTN.match(r.sequence) for r in result.records)
    assert all(r.sequence[0] != "N" and r.sequence[-1] != "N" for r in result.records)
    assert len({r.id for r in result.records}) == 90_084
    assert {r.taxonomy["order"] for r in result.records} == {"Diptera", "Lepidoptera", "Coleoptera",
                                                             "Hymenoptera"}
    assert len({r.taxonomy["species"] for r in result.records} - {""}) == 819
    # The raw file has gaps and IUPAC codes; normalisation must have removed them.
    with gzip.open(path, "rt") as fh:
        raw = fh.read(2_000_000)
    assert "-" in raw
