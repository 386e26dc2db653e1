"""Reading barcodes: normalisation, QC flags, FASTA header styles and table formats."""

from __future__ import annotations

import codecs
import csv
import gzip
import re
import sys
from dataclasses import replace

import pytest
from conftest import clibd_ok, make_reference, requires_shared, shared_path, write_fasta, write_table

from clibd_cli import sequences
from clibd_cli.errors import InputError
from clibd_cli.index import MANIFEST, ReferenceIndex
from clibd_cli.sequences import (
    QCConfig,
    SequenceStream,
    iter_table,
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
    ("        1 gatcctccat atacaacggt\n       21 atctccacct", "GATCCTCCATATACAACGGTATCTCCACCT"),  # GenBank layout
    ("ACG#TXA", "ACGNTNA"),  # what record readers refuse never reaches an aligner as is
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


@pytest.mark.parametrize("name", ["lab.csv", "lab.txt"])
def test_semicolon_csv_reads_like_a_comma_one(tmp_path, name):
    """Excel writes its CSV with semicolons where the decimal separator is a comma (most of Europe): a header
    with semicolons and no comma is read so (the cells keep their commas)."""
    rows = [["s1", "Aedes aegypti", "acgtACGT", "1,5 mm"], ["s2", "Culex pipiens", "TTTTGGGG", "2,0 mm"]]
    header = ["processid", "species", "nucleotides", "size"]
    comma = read_sequences([write_table(tmp_path / "comma.csv", header, rows, ",")]).records
    semicolon = read_sequences([write_table(tmp_path / name, header, rows, ";")]).records
    assert _read(semicolon) == _read(comma) and [r.sequence for r in semicolon] == ["ACGTACGT", "TTTTGGGG"]


def _read(records: list) -> list:
    """Records as read, wherever from (their source names the file)."""
    return [replace(r, source="") for r in records]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_text_reads_like_utf8(tmp_path, encoding):
    """Windows Notepad saves "Unicode" as UTF-16 with a byte-order mark; it was refused as a binary file."""
    text = ">Q1|Diptera|Culicidae|Aedes|Aedes vexans|\nACGTACGTTT\n>Q2\nGGGCCCAAAT\n"
    (tmp_path / "utf8.fasta").write_text(text, encoding="utf-8")
    (tmp_path / "utf16.fasta").write_bytes((codecs.BOM_UTF16_BE if encoding.endswith("be") else b"")
                                           + text.encode(encoding))
    utf16 = read_sequences([tmp_path / "utf16.fasta"]).records
    assert _read(utf16) == _read(read_sequences([tmp_path / "utf8.fasta"]).records) and len(utf16) == 2


def test_two_columns_of_one_name_are_refused(tmp_path):
    """Which of two 'nucleotides' columns holds the barcode cannot be told; the first was taken silently."""
    path = write_table(tmp_path / "two.tsv", ["processid", "nucleotides", "Nucleotides"],
                       [["P1", "ACGTACGT", "GGGGCCCC"]], "\t")
    with pytest.raises(InputError, match=r"two.tsv: columns 2 and 3 are both named 'nucleotides' \(the sequence\)"):
        read_sequences([path])
    with pytest.raises(InputError, match="columns 2 and 3 are both named"):  # naming it does not tell them apart
        read_sequences([path], sequence_column="nucleotides")


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
    assert (result.skipped_empty, result.skipped_marker) == (1, 1)  # P2 is another marker, P3 has no bases
    result = read_sequences([path], marker=None)
    assert [r.id for r in result.records] == ["P1"]
    assert (result.skipped_empty, result.skipped_marker) == (2, 0)


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


@pytest.mark.parametrize(("raw", "shown"), [("ACGT#ACGTX", "2 characters that are not DNA ('#', 'X')"),
                                            ("ACGTACGT>ACGT", "1 character that is not DNA ('>')")])
def test_record_with_characters_that_are_not_dna_is_refused(tmp_path, raw, shown):
    """A few stray characters (not enough to look like protein) name the record; line numbers are not among them."""
    path = tmp_path / "stray.fasta"
    path.write_text(f">good\n1 ACGTACGTAC\n11 GTACGTACGT\n>bad\n{'ACGTACGTAC' * 20}{raw}\n")
    with pytest.raises(InputError) as caught:
        read_sequences([path])
    assert str(caught.value).startswith(f"{path}: record 2 (>bad): 'bad' holds {shown}")
    assert "N for an unknown base" in str(caught.value)
    path.write_text(">good\n1 ACGTACGTAC\n11 GTACGTACGT\n")
    assert read_sequences([path]).records[0].sequence == "ACGTACGTACGTACGTACGT"


def test_bare_sequence_without_header_is_refused_clearly(tmp_path):
    """A sequence saved alone (as trace viewers save one) was read as a table whose one column is the barcode."""
    path = tmp_path / "trace.fasta"
    path.write_text("acgtacgtacgtacgtacgtnnACGT-ACGT\nACGTACGT\n")
    with pytest.raises(InputError, match=r"trace.fasta: begins with a bare sequence.*'>name'"):
        read_sequences([path])
    path.write_text("sample_id\tsequence\nS1\tACGTACGTACGTACGTACGTACGT\n")  # a table still is one
    assert [r.id for r in read_sequences([path]).records] == ["S1"]


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
    coi = [r for r in rows if r["markercode"] in ("COI-5P", "")]  # rows without a marker have no sequence
    with_sequence = [r for r in coi if normalise_sequence(r["nucleotides"])]
    result = read_sequences([path])
    assert len(result.records) == len(with_sequence)
    assert result.skipped_empty == len(coi) - len(with_sequence)
    assert result.skipped_marker == len(rows) - len(coi) and result.other_markers == {"28S": 7}
    assert len(rows) == 421 and len(result.records) == 390
    assert len(read_sequences([path], marker=None).records) == 397
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


# ------------------------------------------------------------------------------------------- BOLD v5 packages

V5_HEADER = ["processid", "sampleid", "record_id", "bin_uri", "kingdom", "phylum", "class", "order", "family",
             "subfamily", "tribe", "genus", "species", "subspecies", "identification", "identification_rank",
             "nuc", "nuc_basecount", "marker_code", "insdc_acs", "country/ocean", "country_iso", "coord", "elev"]
COI_A = "ACGT" * 60
COI_B = "TTGACCAG" * 30
ITS = "GGGCCCAT" * 40


def _v5_row(processid, marker, nuc, order="Diptera", family="Culicidae", genus="Aedes", species="Aedes vexans",
            bin_uri="BOLD:AAA1234", rank="species", coord="[45.5, -73.6]", elev="120"):
    values = {"processid": processid, "sampleid": f"S-{processid}", "record_id": f"{processid}.{marker}",
              "bin_uri": bin_uri, "kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta",
              "order": order, "family": family, "subfamily": "", "tribe": "", "genus": genus, "species": species,
              "subspecies": "", "identification": species or genus or family, "identification_rank": rank,
              "nuc": nuc, "nuc_basecount": str(sum(c in "ACGT" for c in nuc)), "marker_code": marker,
              "insdc_acs": "", "country/ocean": "Canada", "country_iso": "CA", "coord": coord, "elev": elev}
    return [values[name] for name in V5_HEADER]


V5_ROWS = [
    _v5_row("CNX001-24", "COI-5P", "---" + COI_A[:100] + "-ry-" + COI_A[100:] + "--"),
    _v5_row("CNX001-24", "ITS", ITS),  # the same specimen's ITS sequence: another marker, same processid
    _v5_row("CNX002-24", "COI-5P", COI_B.lower(), order="Lepidoptera", family="Sphingidae", genus="Manduca",
            species="", bin_uri="BOLD:ACZ0007", rank="genus", coord="", elev=""),
    _v5_row("CNX003-24", "28S", "ACGTTGCA" * 30, bin_uri=""),
    _v5_row("CNX004-24", "coi-5p", "NN" + COI_B + "NN", bin_uri="", species="Aedes cinereus"),
]


def _write_parquet(path, header, rows, row_group_size=2):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    columns = {name: [row[i] or None for row in rows] for i, name in enumerate(header)}  # "" → null
    arrays = {}
    for name, values in columns.items():
        if name == "coord":  # BCDM: an array [lat, lon]
            arrays[name] = pa.array([None if v is None else [float(x) for x in v.strip("[]").split(",")]
                                     for v in values], pa.list_(pa.float64()))
        elif name in ("elev", "nuc_basecount"):
            arrays[name] = pa.array([None if v is None else int(v) for v in values], pa.int64())
        else:
            arrays[name] = pa.array(values, pa.string())
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)
    return path


def _summary(records):
    return [(r.id, r.sequence, r.taxonomy, r.bin, r.flags) for r in records]


def test_bold_v5_tsv_keeps_only_coi_rows(tmp_path):
    path = write_table(tmp_path / "v5.tsv", V5_HEADER, V5_ROWS, "\t")
    result = read_sequences([path])
    assert [r.id for r in result.records] == ["CNX001-24", "CNX002-24", "CNX004-24"]
    a, b, c = result.records
    assert a.sequence == COI_A[:100] + "NN" + COI_A[100:]  # gaps dropped, IUPAC → N
    assert a.taxonomy == {"order": "Diptera", "family": "Culicidae", "genus": "Aedes", "species": "Aedes vexans"}
    assert a.bin == "BOLD:AAA1234" and a.flags == ()
    assert a.source == f"{path}: line 2"
    assert b.sequence == COI_B
    assert b.taxonomy == {"order": "Lepidoptera", "family": "Sphingidae", "genus": "Manduca", "species": ""}
    assert b.bin == "BOLD:ACZ0007"
    assert c.sequence == COI_B and c.bin == "" and c.taxonomy["species"] == "Aedes cinereus"
    assert c.source == f"{path}: line 6"
    assert result.skipped_marker == 2 and result.other_markers == {"ITS": 1, "28S": 1}
    assert result.skipped_empty == 0


def test_bold_v5_parquet_reads_like_the_tsv(tmp_path, monkeypatch):
    tsv = write_table(tmp_path / "v5.tsv", V5_HEADER, V5_ROWS, "\t")
    parquet = _write_parquet(tmp_path / "v5.parquet", V5_HEADER, V5_ROWS)
    monkeypatch.setattr(sequences, "PARQUET_BATCH_ROWS", 2)  # rows cross record-batch boundaries
    from_tsv, from_parquet = read_sequences([tsv]), read_sequences([parquet])
    assert _summary(from_parquet.records) == _summary(from_tsv.records)
    assert len(from_parquet.records) == 3
    assert (from_parquet.skipped_marker, from_parquet.other_markers) == (2, {"ITS": 1, "28S": 1})
    assert [r.source for r in from_parquet.records] == [f"{parquet}: row {n}" for n in (1, 3, 5)]
    # The generic table reader gives the same header and cells (nulls as "", numbers and arrays as text).
    header, *rows = [cells for _, cells in iter_table(parquet)]
    assert header == V5_HEADER
    assert len(rows) == len(V5_ROWS)
    assert rows[0][V5_HEADER.index("country/ocean")] == "Canada"
    assert rows[0][V5_HEADER.index("coord")] == "[45.5, -73.6]" and rows[0][V5_HEADER.index("elev")] == "120"
    assert rows[2][V5_HEADER.index("coord")] == "" and rows[2][V5_HEADER.index("subfamily")] == ""


def test_parquet_is_recognised_without_its_extension(tmp_path):
    parquet = _write_parquet(tmp_path / "package.bin", V5_HEADER, V5_ROWS)
    assert sniff_format(parquet) == "parquet"
    assert [r.id for r in read_sequences([parquet]).records] == ["CNX001-24", "CNX002-24", "CNX004-24"]


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "v5.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match=r"v5\.parquet: reading Parquet needs pyarrow: pip install pyarrow "
                                         r"\(or pip install 'clibd\[parquet\]'\)"):
        read_sequences([path])


def test_broken_parquet_is_an_input_error(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "cut.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match=r"cut\.parquet: cannot be read as Parquet"):
        read_sequences([path])


@pytest.mark.parametrize("suffix", ["tsv", "parquet"])
def test_package_without_the_marker_names_the_markers_it_has(tmp_path, suffix):
    rows = [_v5_row("P1", "ITS", ITS), _v5_row("P2", "16S", ITS), _v5_row("P3", "ITS", ITS)]
    path = tmp_path / f"fungi.{suffix}"
    if suffix == "tsv":
        write_table(path, V5_HEADER, rows, "\t")
    else:
        _write_parquet(path, V5_HEADER, rows)
    with pytest.raises(InputError) as info:
        read_sequences([path])
    assert str(info.value) == f"{path}: no COI-5P rows (markers present: ITS, 16S). Choose one with --marker."
    assert [r.id for r in read_sequences([path], marker="its").records] == ["P1", "P3"]


def test_rows_without_marker_or_sequence_are_not_the_markers_rows(tmp_path):
    """A BOLD combined TSV holds specimens with no sequence and no marker: `--marker ITS` on one whose
    sequences are all COI-5P and 28S must say there is no ITS, not read those empty rows as ITS queries."""
    rows = [_v5_row("P1", "COI-5P", COI_A), _v5_row("P2", "", ""), _v5_row("P3", "28S", COI_B)]
    path = write_table(tmp_path / "v5.tsv", V5_HEADER, rows, "\t")
    for skip_empty in (True, False):
        with pytest.raises(InputError) as info:
            list(SequenceStream([path], marker="ITS", skip_empty=skip_empty))
        assert str(info.value) == f"{path}: no ITS sequences (markers present: COI-5P, 28S). Choose one with --marker."
    kept = list(SequenceStream([path], skip_empty=False))
    assert [(r.id, bool(r.sequence)) for r in kept] == [("P1", True), ("P2", False)]


@pytest.mark.parametrize("bad", ["cr\rret", "line\nbreak", "tab\there", "\u202eevil"])
def test_an_id_that_would_break_a_row_is_refused(tmp_path, bad):
    """An id with a bare CR was written unquoted, read back as two rows, and --resume ran it again; one with a
    newline made --resume fail with a traceback; a text-direction override showed another id on the terminal."""
    path = tmp_path / "q.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "sequence"], ["ok", COI_A], [bad, COI_B]])
    with pytest.raises(InputError) as info:
        list(SequenceStream([path]))
    assert str(info.value).startswith(f"{path}: line 3: the id {bad!r} holds a control character")


def test_marker_none_or_all_keeps_every_row(tmp_path):
    rows = [_v5_row("P1", "COI-5P", COI_A), _v5_row("P2", "ITS", ITS), _v5_row("P3", "28S", COI_B)]
    path = write_table(tmp_path / "v5.tsv", V5_HEADER, rows, "\t")
    for marker in (None, "all", "ALL"):
        result = read_sequences([path], marker=marker)
        assert [r.id for r in result.records] == ["P1", "P2", "P3"]
        assert (result.skipped_marker, result.other_markers) == (0, {})
    assert [r.id for r in read_sequences([path], marker="28s").records] == ["P3"]


def test_all_markers_of_one_specimen_are_duplicate_ids(tmp_path):
    path = write_table(tmp_path / "v5.tsv", V5_HEADER, V5_ROWS, "\t")
    with pytest.raises(InputError, match=r"line 3: duplicate id 'CNX001-24' .*keep one with --marker\."):
        read_sequences([path], marker=None)


def test_bold_v4_markercode_column_filters(tmp_path):
    header = ["processid", "sampleid", "bin_uri", "order_name", "family_name", "genus_name", "species_name",
              "markercode", "nucleotides"]
    rows = [["P1", "S1", "BOLD:AAA0001", "Diptera", "Culicidae", "Aedes", "Aedes vexans", "COI-5P", COI_A],
            ["P2", "S2", "", "Diptera", "Culicidae", "Aedes", "Aedes vexans", "28S", COI_B],
            ["P3", "S3", "", "Diptera", "Culicidae", "", "Culex pipiens", "", "ACGTAC"],  # no marker: kept
            ["P4", "S4", "", "Diptera", "Culicidae", "", "", "COI-3P", COI_B]]
    path = write_table(tmp_path / "bold_combined.tsv", header, rows, "\t")
    result = read_sequences([path])
    assert [r.id for r in result.records] == ["P1", "P3"]
    assert result.records[1].taxonomy["genus"] == "Culex"
    assert (result.skipped_marker, result.other_markers) == (2, {"28S": 1, "COI-3P": 1})
    assert [r.id for r in read_sequences([path], marker="COI-3P").records] == ["P3", "P4"]


def test_plain_marker_column_and_no_marker_column(tmp_path):
    marked = write_table(tmp_path / "m.csv", ["id", "marker", "sequence"],
                         [["a", "rbcLa", COI_A], ["b", "COI-5P", COI_B]], ",")
    assert [r.id for r in read_sequences([marked]).records] == ["b"]
    assert [r.id for r in read_sequences([marked], marker="RBCLA").records] == ["a"]
    unmarked = write_table(tmp_path / "u.csv", ["id", "sequence"], [["a", COI_A], ["b", COI_B]], ",")
    result = read_sequences([unmarked], marker="ITS")  # files that do not say are never filtered
    assert [r.id for r in result.records] == ["a", "b"] and result.skipped_marker == 0


def test_bold_fasta_headers_filter_on_the_marker_field(tmp_path):
    path = tmp_path / "bold.fasta"
    path.write_text(f">A1|Aedes vexans|COI-5P|MG123456\n{COI_A}\n"
                    f">A2|Aedes vexans|ITS2|\n{ITS}\n"
                    f">A3|Culex pipiens|COI-5P\n{COI_B}\n")
    result = read_sequences([path])
    assert [r.id for r in result.records] == ["A1", "A3"]
    assert result.records[1].taxonomy["species"] == "Culex pipiens"
    assert (result.skipped_marker, result.other_markers) == (1, {"ITS2": 1})
    assert [r.id for r in read_sequences([path], marker="ITS2").records] == ["A2"]
    assert len(read_sequences([path], marker=None).records) == 3
    only_its = tmp_path / "its.fasta"
    only_its.write_text(f">A2|Aedes vexans|ITS2|\n{ITS}\n")
    with pytest.raises(InputError, match=r"its\.fasta: no COI-5P rows \(markers present: ITS2\)"):
        read_sequences([only_its])
    # Taxonomy headers (`id|order|family|genus|species|BIN`) carry no marker and are never filtered.
    pipe = write_fasta(tmp_path / "pipe.fasta", make_reference(seed=2, orders=1, families=1, genera=1, species=2,
                                                               specimens=2))
    assert len(read_sequences([pipe], marker="ITS").records) == 4


def test_cli_builds_an_index_from_a_bold_v5_parquet(tmp_path):
    specimens = make_reference(seed=5, orders=2, families=2, genera=2, species=2, specimens=3)
    rows = []
    for s in specimens:
        rows.append(_v5_row(s.id, "COI-5P", s.sequence, order=s.order, family=s.family, genus=s.genus,
                            species=s.species, bin_uri=s.bin))
        rows.append(_v5_row(s.id, "ITS", ITS, order=s.order, family=s.family, genus=s.genus,
                            species=s.species, bin_uri=s.bin))
    package = _write_parquet(tmp_path / "v5.parquet", V5_HEADER, rows, row_group_size=10)
    result = clibd_ok("build-index", "-b", package, "-o", tmp_path / "IDX")
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert f"{len(specimens)} records, 16 species" in said
    assert f"{len(specimens)} rows of other markers (ITS {len(specimens)}) were left out; kept COI-5P" in said
    assert (tmp_path / "IDX" / MANIFEST).exists()
    indexed = ReferenceIndex.load(tmp_path / "IDX", "dna").records()
    assert sorted(r.id for r in indexed) == sorted(s.id for s in specimens)
    assert {r.sequence for r in indexed} == {s.sequence for s in specimens}  # the COI rows, no ITS
    its = clibd_ok("build-index", "-b", package, "-o", tmp_path / "ITS", "--marker", "ITS")
    assert f"{len(specimens)} records, 16 species" in " ".join(its.stderr.split())


def test_cli_package_without_the_marker_is_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from clibd_cli.app import app

    package = write_table(tmp_path / "fungi.tsv", V5_HEADER,
                          [_v5_row("P1", "ITS", ITS), _v5_row("P2", "ITS", ITS)], "\t")
    result = CliRunner().invoke(app, ["build-index", "-b", str(package), "-o", str(tmp_path / "IDX")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "no COI-5P rows (markers present: ITS). Choose one with --marker." in lines[0]
    assert not (tmp_path / "IDX").exists()
