"""The data model of clibd, defined once: ranks, modalities, split names, the column map and the specimen record.

Everything that reads or writes specimens (barcode tables, photo manifests, split tables, training
manifests, the synthetic generator, evaluation) takes its names from here, so two readers can never
disagree about which column of a table is the id, the photo or the barcode.  Torch-free and free of
I/O: the table reader that applies the column map is :class:`clibd_cli.sequences.SpecimenTable`.

**The column map** (:data:`COLUMNS`): for each field of a specimen, the column names it may have in a
table, tried in order and case-insensitively; the first one present wins, unless the column is named
explicitly (``--id-column``, ``--sequence-column``, ``--image-column``, ``--species-column``), which
always wins and must exist.

**Which column is the id** (:data:`ID_COLUMNS`), for every reader alike:

1. ``processid``: BOLD's record id, the key of BOLD downloads, BOLD v5 packages (BCDM) and BIOSCAN-1M/5M
   (whose photos are named after it);
2. a column that calls itself the record's id: ``id``, ``record_id``, ``specimen_id``, ``seqid``;
3. the collector's sample id: ``sampleid``, ``sample_id``, last because in BOLD and BIOSCAN tables it
   accompanies ``processid`` and one sample may have several process ids.

So a table with ``sampleid`` and ``id`` columns is keyed by ``id`` for its barcodes and its photos alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

from clibd_cli.errors import InputError

# ---------------------------------------------------------------------------------------------
# Names

RANKS: tuple[str, ...] = ("order", "family", "genus", "species")
MODALITIES: tuple[str, ...] = ("image", "dna", "text")
# Query → key modality pairs of the paper's retrieval evaluation (and of training's validation).
PAIRS: tuple[tuple[str, str], ...] = (("dna", "dna"), ("image", "image"), ("image", "dna"), ("image", "text"),
                                      ("dna", "text"))
# The modality pairs the contrastive loss aligns: every pair of modalities, with equal weights.
CONTRASTIVE_PAIRS: tuple[tuple[str, str], ...] = tuple(combinations(MODALITIES, 2))

# The CLIBD partition (see clibd_cli.split): seen species train/query/key splits, unseen species
# query/key splits, records without species (pretraining only) and species with a single record.
SEEN_SPLITS: tuple[str, ...] = ("train_seen", "val_seen", "test_seen", "seen_keys")
UNSEEN_SPLITS: tuple[str, ...] = ("val_unseen", "val_unseen_keys", "test_unseen", "test_unseen_keys")
KEY_SPLITS: tuple[str, ...] = ("seen_keys", "val_unseen_keys", "test_unseen_keys")
SPLIT_NAMES: tuple[str, ...] = ("no_split", *SEEN_SPLITS, *UNSEEN_SPLITS, "single_species")

# ---------------------------------------------------------------------------------------------
# The column map: candidate column names per field, tried in order (case-insensitive)

ID_COLUMNS: tuple[str, ...] = ("processid", "id", "record_id", "specimen_id", "seqid", "sampleid", "sample_id")
SEQUENCE_COLUMNS: tuple[str, ...] = ("nucleotides", "nuc", "nucraw", "dna_barcode", "barcode", "sequence", "seq",
                                     "dna")
IMAGE_COLUMNS: tuple[str, ...] = ("image_file", "image", "image_path", "path", "file", "filename")
BIN_COLUMNS: tuple[str, ...] = ("bin_uri", "dna_bin", "uri", "bin")
MARKER_COLUMNS: tuple[str, ...] = ("marker_code", "markercode", "marker")
SPLIT_COLUMNS: tuple[str, ...] = ("split",)
SAMPLEID_COLUMNS: tuple[str, ...] = ("sampleid", "sample_id")
CHUNK_COLUMNS: tuple[str, ...] = ("chunk_number",)  # BIOSCAN-1M: photos unpacked as part<chunk_number>/<image_file>
RANK_COLUMNS: dict[str, tuple[str, ...]] = {rank: (rank, f"{rank}_name", f"taxon_{rank}") for rank in RANKS}

COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ID_COLUMNS, "sequence": SEQUENCE_COLUMNS, "image": IMAGE_COLUMNS, **RANK_COLUMNS, "bin": BIN_COLUMNS,
    "marker": MARKER_COLUMNS, "split": SPLIT_COLUMNS, "sampleid": SAMPLEID_COLUMNS, "chunk": CHUNK_COLUMNS}
# The command-line option that names each field's column, for messages.
COLUMN_OPTIONS: dict[str, str] = {"id": "--id-column", "sequence": "--sequence-column", "image": "--image-column",
                                  "species": "--species-column"}

# ---------------------------------------------------------------------------------------------
# Labels

MISSING_LABELS = {"", "not_classified", "none", "na", "n/a", "nan", "null", "unknown", "unclassified"}


def clean_label(value: str | None) -> str:
    """A label cell as clibd uses it: whitespace runs (a newline or tab inside a quoted cell) become one space,
    so a label is one line of text; the spellings of "missing" (:data:`MISSING_LABELS`) become ``""``."""
    value = " ".join((value or "").split())
    return "" if value.lower() in MISSING_LABELS else value


def complete_taxonomy(taxonomy: Mapping[str, str | None]) -> dict[str, str]:
    """Every rank cleaned (:func:`clean_label`); the genus filled from a binomial species name when missing."""
    out = {rank: clean_label(taxonomy.get(rank)) for rank in RANKS}
    if out["species"] and not out["genus"]:
        first = out["species"].split()[0]
        if first[:1].isupper():
            out["genus"] = first
    return out


def taxonomy_text(taxonomy: Mapping[str, str | None]) -> str:
    """``"{order} {family} {genus} {species}"`` without empty ranks: the CLIBD text-encoder input.

    Used by training (the text modality and its vocabulary) and by inference (taxonomy strings as
    references), so both always see the same text.  Whitespace runs inside a label collapse to one.
    """
    return " ".join(" ".join(label.split()) for label in (taxonomy.get(rank) or "" for rank in RANKS)
                    if label.strip())


# ---------------------------------------------------------------------------------------------
# The specimen record


@dataclass(frozen=True)
class Specimen:
    """One specimen: an id, its taxonomy (one field per rank of :data:`RANKS`, ``""`` when unknown), BIN,
    barcode, photo, split and sample id.

    ``sequence`` is the barcode (normalised by the readers: upper-case ACGTN) or ``None``; ``image`` is where
    the photo is (a path as text, the encoded bytes, or a lazy reference such as training's ``HDF5Image``)
    or ``None``.  Readers that need more extend this record by subclassing (the synthetic generator adds
    how to draw the photo) rather than defining another specimen type.
    """

    id: str
    order: str = ""
    family: str = ""
    genus: str = ""
    species: str = ""
    bin: str = ""
    sequence: str | None = None
    image: Any = None
    split: str = ""
    sampleid: str = ""

    @property
    def taxonomy(self) -> dict[str, str]:
        """The ranks as ``{rank: label}`` (a new dict; change the record with :func:`dataclasses.replace`)."""
        return {rank: getattr(self, rank) for rank in RANKS}

    @property
    def lineage(self) -> tuple[str, ...]:
        return tuple(getattr(self, rank) for rank in RANKS)

    def label(self, key: str) -> str:
        """A rank's label, or the BIN for ``key='bin'``; ``''`` when unknown."""
        return self.bin if key == "bin" else getattr(self, key) if key in RANKS else ""

    @property
    def text(self) -> str:
        """The taxonomy as the text encoder reads it (:func:`taxonomy_text`)."""
        return taxonomy_text(self.taxonomy)


assert tuple(f.name for f in fields(Specimen))[1:5] == RANKS  # the record's rank fields are the ranks


# ---------------------------------------------------------------------------------------------
# Finding the columns of one table


def find_column(header: Sequence[str], candidates: Iterable[str], explicit: str | None, what: str,
                path: Path | str) -> str | None:
    """The column named `explicit` (case-insensitive; an :class:`InputError` if absent), else the first of
    `candidates` present, else None.  A name that several columns share is an :class:`InputError`: which one
    holds the field cannot be told."""
    lowered = {name.strip().lower(): name for name in header}
    if explicit:
        if explicit.strip().lower() not in lowered:
            raise InputError(f"{path}: no column named {explicit!r} for the {what}; columns are: "
                             f"{', '.join(header[:20])}{' …' if len(header) > 20 else ''}.")
        found = explicit.strip().lower()
    else:
        found = next((name for name in candidates if name in lowered), None)
    if found is None:
        return None
    shared = [i + 1 for i, name in enumerate(header) if name.strip().lower() == found]
    if len(shared) > 1:
        listed = ", ".join(map(str, shared[:-1])) + f" and {shared[-1]}"
        raise InputError(f"{path}: columns {listed} are {'both' if len(shared) == 2 else 'all'} named "
                         f"{header[shared[0] - 1]!r} (the {what}); keep one, or rename the others.")
    return explicit if explicit in header else lowered[found]


@dataclass(frozen=True)
class ColumnMap:
    """Which column of one table holds each field of :data:`COLUMNS` (None: the table has none)."""

    path: str
    header: tuple[str, ...]
    names: dict[str, str | None]

    def index(self, field: str) -> int | None:
        name = self.names.get(field)
        return None if name is None else self.header.index(name)

    def has(self, field: str) -> bool:
        return self.names.get(field) is not None

    def require(self, field: str, what: str = "", hint: str = "") -> str:
        """The column of `field`, or an :class:`InputError` naming the candidates looked for, the table's columns
        and what to do (``hint``; by default: name it with the field's command-line option)."""
        name = self.names.get(field)
        if name is None:
            option = COLUMN_OPTIONS.get(field)
            hint = hint or (f"Name it with {option}." if option else f"Add a {field!r} column.")
            columns = ", ".join(self.header[:30]) + (" …" if len(self.header) > 30 else "")
            raise InputError(f"{self.path}: no {what or field} column (looked for {', '.join(COLUMNS[field])}); "
                             f"columns are: {columns}. {hint}")
        return name


def map_columns(header: Sequence[str], path: Path | str, **explicit: str | None) -> ColumnMap:
    """Resolve every field of :data:`COLUMNS` against a table's header.

    ``explicit`` names a field's column (``id="tube"``, ``image="photo"``, ``species="taxon"``): it wins over
    the candidates and must exist.  A column taken by the id is not also the sample id.
    """
    unknown = set(explicit) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; use {', '.join(COLUMNS)}")
    names = {field: find_column(header, candidates, explicit.get(field), field, path)
             for field, candidates in COLUMNS.items()}
    if names["sampleid"] is not None and names["sampleid"] == names["id"]:
        names["sampleid"] = None
    return ColumnMap(str(path), tuple(header), names)
