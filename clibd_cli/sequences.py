"""Read DNA barcodes with their taxonomy from the formats biologists actually have.

Supported: FASTA (plain or gzip; taxonomy in `id|order|family|genus|species|BIN` headers, SINTAX
`;tax=o:…,f:…,g:…,s:…` headers or BOLD download headers `id|Species name|COI-5P`), the BOLD public-API
"combined" TSV (`processid … markercode … nucleotides`), BOLD v5 public data packages (BCDM: `processid …
marker_code … nuc`) as TSV or Parquet, BIOSCAN-1M TSV, BIOSCAN-5M CSV and any CSV/TSV/Parquet table whose
id and sequence columns are named on the command line.

BOLD packages mix markers (COI-5P, ITS, 28S, …): where a file says which marker a row is (a
`marker_code`/`markercode`/`marker` column, or the marker field of a BOLD FASTA header), only rows of the
requested marker (default COI-5P) are read.

Every sequence is normalised the same way (upper-case, U→T, gaps and line numbers dropped, IUPAC codes → N,
end Ns trimmed) and quality-checked, because the tokenizer and the k-mer encoder treat every non-ACGT letter
as unknown: lower case or alignment gaps must not silently become missing data.  A record holding any other
character (``#``, ``X``, a stray header) is refused with a line naming it, never passed on.
"""

from __future__ import annotations

import atexit
import codecs
import csv
import gzip
import io
import re
import shutil
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from clibd_cli.errors import InputError
from clibd_cli.schema import (
    RANKS,
    ColumnMap,
    Specimen,
    clean_label,
    complete_taxonomy,
    map_columns,
)
from clibd_cli.schema import taxonomy_text as taxonomy_text  # re-exported: many modules import it from here

DEFAULT_MARKER = "COI-5P"
PARQUET_SUFFIXES = (".parquet", ".pq")

IUPAC_AMBIGUOUS = "RYSWKMBDHVN"
_GAP_CHARS = "-.~ \t\r\n*?"
_LINE_NUMBERS = "0123456789"  # GenBank/EMBL-formatted sequences number their lines; BLAST ignores digits too
_NUCLEOTIDE_LETTERS = set("ACGTU" + IUPAC_AMBIGUOUS)
_TRANSLATE = str.maketrans({**{c: "N" for c in IUPAC_AMBIGUOUS}, "U": "T",
                            **{c: None for c in _GAP_CHARS + _LINE_NUMBERS}})
_DROP_BASES = str.maketrans(dict.fromkeys("ACGTN"))
_NOT_BASE = re.compile("[^ACGTN]")
_BARE_SEQUENCE = re.compile(f"[ACGTU{IUPAC_AMBIGUOUS}.-]{{20,}}", re.IGNORECASE)  # a line of bases only

DEFAULT_MIN_LENGTH = 200
DEFAULT_MAX_AMBIGUOUS = 0.05


@dataclass(frozen=True)
class QCConfig:
    """Thresholds for the per-record quality flags."""

    min_length: int = DEFAULT_MIN_LENGTH
    max_ambiguous: float = DEFAULT_MAX_AMBIGUOUS


@dataclass
class SequenceRecord:
    """One barcode: a stable id, the normalised sequence, its taxonomy and QC flags."""

    id: str
    sequence: str
    taxonomy: dict[str, str] = field(default_factory=dict)
    bin: str = ""
    source: str = ""
    flags: tuple[str, ...] = ()
    marker: str = ""  # the marker the file names for this row (e.g. COI-5P), "" when it does not say

    def label(self, rank: str) -> str:
        return self.taxonomy.get(rank, "")

    @property
    def has_taxonomy(self) -> bool:
        return any(self.taxonomy.get(rank) for rank in RANKS)


def normalise_sequence(raw: str) -> str:
    """Upper-case, U→T, drop gaps, whitespace and line numbers, IUPAC ambiguity codes → N, trim end Ns.

    What is left is A, C, G, T and N only, whatever ``raw`` holds: any other character becomes N, so that no
    consumer (Opal refuses letters outside its alphabet) meets one.  Files read as records refuse such a record
    first (:func:`_foreign_characters`), so this only guards the values other readers pass through.
    """
    sequence = raw.upper().translate(_TRANSLATE)
    if sequence.translate(_DROP_BASES):
        sequence = _NOT_BASE.sub("N", sequence)
    return sequence.strip("N")


def _foreign_characters(raw: str) -> str:
    """The characters of a raw sequence that are no nucleotide, IUPAC code, gap, whitespace or line number."""
    return raw.upper().translate(_DROP_NUCLEOTIDES)


def qc_flags(sequence: str, qc: QCConfig = QCConfig()) -> tuple[str, ...]:
    """Flags for a normalised sequence: `empty`, `short`, `ambiguous`."""
    if not sequence:
        return ("empty",)
    flags = []
    if len(sequence) < qc.min_length:
        flags.append("short")
    if sequence.count("N") / len(sequence) > qc.max_ambiguous:
        flags.append("ambiguous")
    return tuple(flags)


# ---------------------------------------------------------------------------------------------
# Opening files


_SPOOLED: dict[str, Path] = {}


def spooled(path: Path) -> Path:
    """A path that can be opened more than once.

    Format detection opens a file several times (magic bytes, first line, then the records); a pipe can
    be read only once: ``-`` (standard input), a FIFO or a process substitution (``<(zcat a.gz)``) hung or
    read as empty.  Such inputs are copied once into a private temporary folder, under their own name
    (``stdin`` for ``-``) so messages still name them, and removed when clibd exits.  Regular files are
    returned as they are.
    """
    text = str(path)
    if text != "-" and (not path.exists() or path.is_dir() or path.is_file()):
        return path
    if text not in _SPOOLED:
        folder = Path(tempfile.mkdtemp(prefix="clibd-input-"))
        atexit.register(shutil.rmtree, folder, True)
        copy = folder / ("stdin" if text == "-" else path.name)
        with copy.open("wb") as out:
            if text == "-":
                shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
            else:
                with path.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        _SPOOLED[text] = copy
    return _SPOOLED[text]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file. Check the path.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a sequence file (FASTA, TSV, CSV or Parquet).")


def is_parquet(path: Path) -> bool:
    """A Parquet file: by its extension, or by the `PAR1` magic bytes at its start."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def open_text(path: Path) -> io.TextIOBase:
    """Open a (possibly gzip-compressed) text file, refusing binary and missing files clearly."""
    _check_file(path)
    with path.open("rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            sample = fh.read(65536)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read ({exc}). Is it a complete file?") from exc
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Windows Notepad's "Unicode"
        return opener(path, "rt", encoding="utf-16", errors="strict", newline="")
    if not sample.strip():
        raise InputError(f"{path}: the file is empty. Give a FASTA, TSV or CSV with barcodes.")
    if b"\x00" in sample:
        raise InputError(f"{path}: looks like a binary file, not FASTA/TSV/CSV text.")
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character may be cut at the sample's end; only earlier failures count.
        if exc.start < len(sample) - 4:
            raise InputError(f"{path}: is not UTF-8 text (byte {exc.start}); is it a binary file?") from exc
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first line.  Strict
    # decoding everywhere, so a latin-1 byte after the first 64 KB is refused like one before it
    # (:func:`guarded` turns the error into one line).
    return opener(path, "rt", encoding="utf-8-sig", errors="strict", newline="")


def guarded(path: Path, rows: Iterator) -> Iterator:
    """``rows`` of a file, with damage found while reading it (a truncated or corrupt gzip stream, bytes that
    are not UTF-8 past the first 64 KB) turned into one :class:`InputError` naming the file."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: is not UTF-8 text ({exc.reason} at byte {exc.start} of a block); save it "
                         "as UTF-8.") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path}: the gzip file is damaged or incomplete ({exc}); copy or download it "
                         "again.") from None


def sniff_format(path: Path) -> str:
    """Return `parquet` (by extension or magic bytes), else `fasta`, `tsv` or `csv` from the file's first
    non-empty line."""
    _check_file(path)
    if is_parquet(path):
        return "parquet"
    with open_text(path) as fh:
        for line in fh:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith(">"):
                return "fasta"
            if stripped.startswith("@"):
                raise InputError(f"{path}: looks like FASTQ; convert it to FASTA first (e.g. seqkit fq2fa).")
            if _BARE_SEQUENCE.fullmatch(stripped):  # a sequence saved from a trace viewer
                raise InputError(f"{path}: begins with a bare sequence, not a FASTA record or a table. Put a line "
                                 "'>name' above each sequence.")
            return "tsv" if line.count("\t") >= line.count(",") and "\t" in line else "csv"
    raise InputError(f"{path}: the file is empty. Give a FASTA, TSV or CSV with barcodes.")


# ---------------------------------------------------------------------------------------------
# FASTA headers

_SINTAX_RANKS = {"o": "order", "f": "family", "g": "genus", "s": "species"}
_MARKER = re.compile(r"^(COI|COX|CO1|ITS|16S|18S|12S|28S|RBCL|MATK|CYTB)", re.IGNORECASE)
_BIN = re.compile(r"^BOLD:[A-Z]{3}\d{4}$")


def parse_fasta_header(header: str) -> tuple[str, dict[str, str], str]:
    """Split a FASTA header into (id, taxonomy, BIN).

    Understands `id|order|family|genus|species|BIN` (the CLIBD/BOLD export used in this project),
    SINTAX `id;tax=o:X,f:Y,g:Z,s:W;`, BOLD sequence downloads `id|Species name|COI-5P|…` and a bare id.
    """
    title = header.strip()
    if ";tax=" in title:
        seq_id, _, tax = title.partition(";tax=")
        taxonomy: dict[str, str] = {}
        for part in tax.rstrip(";").split(","):
            key, _, value = part.partition(":")
            rank = _SINTAX_RANKS.get(key.strip().lower())
            if rank:
                taxonomy[rank] = value.strip().replace("_", " ")
        return seq_id.split()[0], complete_taxonomy(taxonomy), ""
    fields = [f.strip() for f in title.split("|")]
    seq_id = fields[0].split()[0] if fields[0] else ""
    if len(fields) >= 5 and not _MARKER.match(fields[2]):
        bin_uri = fields[5] if len(fields) > 5 and _BIN.match(fields[5]) else ""
        return seq_id, complete_taxonomy(dict(zip(RANKS, fields[1:5], strict=False))), bin_uri
    if len(fields) >= 3 and _MARKER.match(fields[2]):
        # BOLD gives the deepest identified taxon: one word (a genus, family or order) is no species.
        species = fields[1] if len(fields[1].split()) > 1 else ""
        return seq_id, complete_taxonomy({"species": species}), ""
    return seq_id, complete_taxonomy({}), ""


def fasta_header_marker(header: str) -> str:
    """The marker field of a BOLD download header `id|Species name|COI-5P|…`, else ``""``."""
    title = header.strip()
    if ";tax=" in title:
        return ""
    fields = [f.strip() for f in title.split("|")]
    return fields[2] if len(fields) >= 3 and _MARKER.match(fields[2]) else ""


_DROP_NUCLEOTIDES = str.maketrans(dict.fromkeys("ACGTU" + IUPAC_AMBIGUOUS + _GAP_CHARS + _LINE_NUMBERS))


# Characters an id cannot hold: it is one cell of a CSV/TSV row and one line of a terminal table.  A line break
# or tab splits a row (a reader then sees two queries, and --resume ran one again); a bidirectional override
# shows an id other than the one written.
_ID_BREAKERS = re.compile("[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def check_id(record_id: str, where: str) -> None:
    """Refuse an id holding a line break, tab or other control character (:data:`_ID_BREAKERS`)."""
    found = _ID_BREAKERS.search(record_id)
    if found:
        raise InputError(f"{where}: the id {record_id!r} holds a control character ({found.group()!r}: a line "
                         "break, tab or text-direction mark), which would break the output's rows. Rename it.")


def _looks_like_protein(raw: str, foreign: str) -> bool:
    """More than 10 % letters that are no nucleotide or IUPAC code (E, F, I, L, P, Q, …), and more than two of
    them (a stray ``X`` in a short test sequence is a typo, not a protein); ``foreign``: those of
    :func:`_foreign_characters`."""
    letters = sum(c.isalpha() for c in raw)
    return sum(c.isalpha() for c in foreign) > max(0.1 * letters, 2)


def _not_dna(where: str, seq_id: str, raw: str, foreign: str) -> InputError:
    """The error for a record whose sequence holds ``foreign`` characters: protein, or a few stray ones."""
    if _looks_like_protein(raw, foreign):
        return InputError(f"{where}: {seq_id!r} looks like a protein sequence, not DNA. "
                          "clibd needs nucleotide barcodes (e.g. COI-5P).")
    shown = sorted(set(foreign))
    listed = ", ".join(repr(c) for c in shown[:5]) + (" …" if len(shown) > 5 else "")
    return InputError(f"{where}: {seq_id!r} holds {len(foreign)} character{'s' if len(foreign) > 1 else ''} that "
                      f"{'are' if len(foreign) > 1 else 'is'} not DNA ({listed}). Use A, C, G, T (or U), IUPAC "
                      "ambiguity codes and gaps: replace the others (N for an unknown base) or remove them.")


class RawRecord(NamedTuple):
    """One record as found in a file, before normalisation and QC."""

    id: str
    taxonomy: dict[str, str]
    bin: str
    sequence: str
    where: str
    marker: str = ""  # "" when the file does not say


def _read_fasta(path: Path) -> Iterator[RawRecord]:
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    with open_text(path) as fh:
        for number, (header, raw) in enumerate(SimpleFastaParser(fh), start=1):
            seq_id, taxonomy, bin_uri = parse_fasta_header(header)
            yield RawRecord(seq_id, taxonomy, bin_uri, raw, f"{path}: record {number} (>{header[:60]})",
                            fasta_header_marker(header))


# ---------------------------------------------------------------------------------------------
# Tables


def table_delimiter(path: Path, first_line: str) -> str:
    """Tab, comma or semicolon: from the extension (.tsv/.tab; .csv, also gzipped), else the header's content.

    A .csv whose header holds semicolons and no comma is semicolon-separated: Excel writes its "CSV" so where
    the decimal separator is a comma (most of Europe and Latin America)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".tab")):
        return "\t"
    if ";" in first_line and "," not in first_line and "\t" not in first_line:
        return ";"
    if name.endswith(".csv"):
        return ","
    return "\t" if "\t" in first_line and first_line.count("\t") >= first_line.count(",") else ","


def iter_table(path: Path) -> Iterator[tuple[int, list[str]]]:
    """A CSV/TSV table (gzip or not) or a Parquet file as (line number, cells): the header first, then every
    non-blank row padded to the header's width: the rows behind :class:`SpecimenTable`, which finds the columns.
    For Parquet the header is line 0 and data rows count from 1 (see :func:`iter_parquet`)."""
    if is_parquet(path):
        yield from iter_parquet(path)
        return
    yield from guarded(path, _iter_text_table(path))


def _iter_text_table(path: Path) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(sys.maxsize)
    with open_text(path) as fh:
        first = fh.readline()
        fh.seek(0)
        delimiter = table_delimiter(path, first)
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise InputError(f"{path}: the file is empty; expected a header line with column names.")
        yield 1, header
        width = len(header)
        line_number = reader.line_num + 1
        for row in reader:
            if any(("\n" in cell or "\r" in cell) and (delimiter in cell or cell.count("\n") > 2) for cell in row):
                # A quote opened and never closed swallows the following rows into one cell (they bring their
                # delimiters and many lines along): say where instead of indexing a 50,000-character name.  A
                # quoted cell with a line break of its own (a sequence ending in "\n") is data; labels are
                # collapsed to one line (clean_label), so outputs never hold a multi-line cell.
                raise InputError(f"{path}: line {line_number}: a quoted field runs over the following lines (to "
                                 f"line {reader.line_num}); is a '\"' left unclosed? Fix or remove the quote.")
            if row and not (len(row) == 1 and not row[0].strip()):
                yield line_number, row + [""] * (width - len(row))
            line_number = reader.line_num + 1


PARQUET_BATCH_ROWS = 8192


def _import_pyarrow_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or pip install "
                         "'clibd[parquet]'), or give the table as TSV.") from None
    return pq


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def iter_parquet(path: Path, batch_rows: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """A Parquet table as (row number, cells as text), like :func:`iter_table`: the column names first (as
    row 0), then each row (from 1), read in record batches of `batch_rows` (default
    :data:`PARQUET_BATCH_ROWS`) so memory stays bounded on a multi-gigabyte BOLD package.  Nulls become
    ``""``; numbers and lists (e.g. BCDM's `coord`) their text."""
    _check_file(path)
    pq = _import_pyarrow_parquet(path)
    import pyarrow as pa

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: cannot be read as Parquet ({exc}). Is it a complete .parquet file?") from exc
    with parquet:
        header = list(parquet.schema_arrow.names)
        if not header:
            raise InputError(f"{path}: the Parquet file has no columns; expected barcodes with column names.")
        yield 0, header
        number = 0
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows or PARQUET_BATCH_ROWS):
                columns = [[_cell(v) for v in column.to_pylist()] for column in batch.columns]
                for row in zip(*columns, strict=True):
                    number += 1
                    yield number, list(row)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: cannot be read as Parquet after row {number} ({exc}). "
                             "Is it a complete file?") from exc


class SpecimenTable:
    """A specimen table (CSV/TSV, gzip or not, or Parquet) read with the column map of :mod:`clibd_cli.schema`.

    The one table reader behind barcode tables, photo manifests, split tables, `clibd evaluate` and training
    manifests, so they all find the same id, sequence, photo, taxonomy, BIN, split … columns (see
    :data:`~clibd_cli.schema.ID_COLUMNS` for which column is the id).  The header is read and resolved when
    the table is opened (``id_column``, ``sequence_column``, ``image_column``, ``species_column`` and
    ``split_column`` name a column explicitly: it must exist and wins over the usual names); iterating once
    then gives (line number, cells) per data row, as :func:`iter_table` does.
    """

    def __init__(self, path: Path | str, *, id_column: str | None = None, sequence_column: str | None = None,
                 image_column: str | None = None, species_column: str | None = None,
                 split_column: str | None = None) -> None:
        self.path = Path(path)
        self._rows = iter_table(self.path)
        _, self.header = next(self._rows)
        self.columns: ColumnMap = map_columns(self.header, self.path, id=id_column, sequence=sequence_column,
                                              image=image_column, species=species_column, split=split_column)
        self.unit = "row" if is_parquet(self.path) else "line"
        self._at = {field: self.columns.index(field) for field in self.columns.names}

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        return self._rows

    def where(self, line: int) -> str:
        """``"PATH: line N"`` (``row N`` for Parquet), for messages."""
        return f"{self.path}: {self.unit} {line}"

    def cell(self, cells: list[str], field: str) -> str:
        """The stripped cell of a field, ``""`` where the table has no such column."""
        i = self._at[field]
        return cells[i].strip() if i is not None else ""

    def taxonomy(self, cells: list[str]) -> dict[str, str]:
        """The row's ranks, cleaned and completed (:func:`~clibd_cli.schema.complete_taxonomy`)."""
        return complete_taxonomy({rank: self.cell(cells, rank) for rank in RANKS})

    def image(self, cells: list[str]) -> str | None:
        """The row's photo as a path (text): ``~`` expanded, relative paths taken from the table's folder."""
        written = self.cell(cells, "image")
        if not written:
            return None
        path = Path(written).expanduser()
        return str(path if path.is_absolute() else self.path.parent / path)

    def specimen(self, cells: list[str], **fields: object) -> Specimen:
        """The row as a :class:`~clibd_cli.schema.Specimen` (barcode normalised, ``None`` when empty); keyword
        arguments replace fields (a reader that knows better where the photo is)."""
        values = {"id": self.cell(cells, "id"), **self.taxonomy(cells), "bin": clean_label(self.cell(cells, "bin")),
                  "sequence": normalise_sequence(self.cell(cells, "sequence")) or None,
                  "split": self.cell(cells, "split"), "sampleid": self.cell(cells, "sampleid")}
        if "image" not in fields:
            values["image"] = self.image(cells)
        return Specimen(**{**values, **fields})

    def specimens(self) -> Iterator[tuple[int, Specimen]]:
        """(line number, specimen) for every data row."""
        for line, cells in self:
            yield line, self.specimen(cells)


def _read_table(path: Path, id_column: str | None, sequence_column: str | None) -> Iterator[RawRecord]:
    table = SpecimenTable(path, id_column=id_column, sequence_column=sequence_column)
    table.columns.require("sequence")
    table.columns.require("id")
    at = table.columns.index
    seq_i, id_i, bin_i, marker_i = at("sequence"), at("id"), at("bin"), at("marker")
    rank_i = {rank: i for rank in RANKS if (i := at(rank)) is not None}
    for line_number, row in table:
        taxonomy = complete_taxonomy({rank: row[i] for rank, i in rank_i.items()})
        bin_uri = clean_label(row[bin_i]) if bin_i is not None else ""
        marker = clean_label(row[marker_i]) if marker_i is not None else ""
        yield RawRecord(row[id_i].strip(), taxonomy, bin_uri, row[seq_i], table.where(line_number), marker)


# ---------------------------------------------------------------------------------------------
# Public API


@dataclass
class ReadResult:
    """Records read from one or more files, with counts of what was skipped and why."""

    records: list[SequenceRecord]
    skipped_empty: int = 0
    files: list[str] = field(default_factory=list)
    skipped_marker: int = 0  # rows left out because they are of another marker than the one asked for
    other_markers: dict[str, int] = field(default_factory=dict)  # those rows per marker, as the files spell it


def iter_raw_records(path: Path, id_column: str | None = None, sequence_column: str | None = None,
                     ) -> Iterator[RawRecord]:
    """Yield a :class:`RawRecord` (id, taxonomy, BIN, raw sequence, location, marker) from any supported file
    (``-`` for standard input)."""
    path = spooled(Path(path))
    kind = sniff_format(path)
    if kind == "fasta":
        yield from guarded(path, _read_fasta(path))
    else:
        yield from guarded(path, _read_table(path, id_column, sequence_column))


def wanted_marker(marker: str | None) -> str | None:
    """The marker to filter on, case-folded; None (keep every row) for None, ``""`` or ``"all"``."""
    if marker is None or marker.strip().lower() in ("", "all"):
        return None
    return marker.strip().casefold()


class SequenceStream:
    """Read, normalise and QC the records of `paths` one at a time, in bounded memory.

    The same checks as :func:`read_sequences`, which is this stream collected; a caller that streams
    (`clibd match` over millions of queries) gets an :class:`InputError` where the bad record is, after
    the records before it.  The counters (``skipped_empty``, ``skipped_marker``, ``other_markers``,
    ``files``) are complete once the stream is exhausted.
    """

    def __init__(self, paths: Iterable[Path | str], *, id_column: str | None = None,
                 sequence_column: str | None = None, qc: QCConfig = QCConfig(), skip_empty: bool = True,
                 marker: str | None = DEFAULT_MARKER) -> None:
        self.paths, self.id_column, self.sequence_column = [Path(p) for p in paths], id_column, sequence_column
        self.qc, self.skip_empty, self.marker = qc, skip_empty, marker
        self.skipped_empty = self.skipped_marker = 0
        self.other_markers: dict[str, int] = {}
        self.files: list[str] = []

    def __iter__(self) -> Iterator[SequenceRecord]:
        wanted = wanted_marker(self.marker)
        seen: dict[str, tuple[str, str]] = {}
        for path in self.paths:
            self.files.append(str(path))
            rows = sequences = 0
            others: Counter[str] = Counter()
            for seq_id, taxonomy, bin_uri, raw, where, row_marker in iter_raw_records(path, self.id_column,
                                                                                      self.sequence_column):
                rows += 1
                if wanted and row_marker and row_marker.casefold() != wanted:
                    others[row_marker] += 1
                    continue
                if not seq_id:
                    raise InputError(f"{where}: the record has no id. Give every record an id.")
                check_id(seq_id, where)
                if seq_id in seen:
                    first, first_marker = seen[seq_id]
                    hint = (" The file has several markers per specimen: keep one with --marker."
                            if first_marker and row_marker and first_marker.casefold() != row_marker.casefold()
                            else "")
                    raise InputError(f"{where}: duplicate id {seq_id!r} (first at {first}). "
                                     f"Ids must be unique; rename or remove one.{hint}")
                seen[seq_id] = (where, row_marker)
                foreign = _foreign_characters(raw)
                if foreign:
                    raise _not_dna(where, seq_id, raw, foreign)
                sequence = normalise_sequence(raw)
                if not sequence and self.skip_empty:
                    self.skipped_empty += 1
                    continue
                sequences += bool(sequence)
                yield SequenceRecord(seq_id, sequence, taxonomy, bin_uri, where, qc_flags(sequence, self.qc),
                                     row_marker)
            if not rows:
                raise InputError(f"{path}: contains no records. Give a FASTA, TSV, CSV or Parquet file with barcodes.")
            if others:
                self.skipped_marker += others.total()
                for name, count in others.items():
                    self.other_markers[name] = self.other_markers.get(name, 0) + count
                if not sequences:  # rows that name no marker and hold no sequence do not count as the marker's
                    present = ", ".join(name for name, _ in others.most_common())
                    what = (f"no {self.marker.strip()} rows" if rows == others.total()
                            else f"no {self.marker.strip()} sequences")
                    raise InputError(f"{path}: {what} (markers present: {present}). Choose one with --marker.")


def read_sequences(paths: Iterable[Path | str], *, id_column: str | None = None,
                   sequence_column: str | None = None, qc: QCConfig = QCConfig(),
                   skip_empty: bool = True, marker: str | None = DEFAULT_MARKER) -> ReadResult:
    """Read, normalise and QC every record in `paths`.

    `marker` (case-insensitive; None or ``"all"`` keeps every row): where a file says which marker a row
    is (a `marker_code`/`markercode`/`marker` column, a BOLD FASTA header's marker field), rows of other
    markers are left out and counted in `skipped_marker`/`other_markers`; rows that do not say are kept.
    Raises :class:`InputError` for a missing/empty/binary file, a file whose rows are all of other markers
    (naming the markers it has), protein sequences, a record without an id, and duplicate ids (with both
    locations).  Records whose sequence is empty after normalisation are skipped and counted when
    `skip_empty`.
    """
    stream = SequenceStream(paths, id_column=id_column, sequence_column=sequence_column, qc=qc,
                            skip_empty=skip_empty, marker=marker)
    records = list(stream)
    if not records:
        raise InputError(f"{', '.join(stream.files)}: no record has a DNA sequence.")
    return ReadResult(records, stream.skipped_empty, stream.files, stream.skipped_marker, stream.other_markers)


def require_taxonomy(records: list[SequenceRecord], what: str) -> None:
    """Refuse a reference in which no record carries any taxonomy."""
    if not any(record.has_taxonomy for record in records):
        raise InputError(
            f"{what}: no record has a taxonomy, so nothing can be identified against it. Use FASTA "
            "headers like 'id|order|family|genus|species|BIN' or ';tax=o:…,f:…,g:…,s:…', or a table with "
            "order/family/genus/species columns.")
