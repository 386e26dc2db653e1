"""Reference records of every modality, and the calibration of each query → reference modality pair.

`clibd build-index` takes barcodes (always the core of a library), and with a model bundle also photos
(a manifest with taxonomy) and taxonomy strings ("text keys": one record per distinct lineage, the
zero-shot references CLIBD's text encoder makes possible).  Each becomes one part of the index.

Thresholds are per query modality.  Within a modality the reference calibrates itself (leave-species-out);
across modalities it can only do so when the same specimens are there in both (a photo and a barcode of
one specimen share its id), or from labelled photos given to `clibd calibrate --images`.

Also the reference side of every workflow: reading a reference file (:func:`reference_records`), and
opening what `clibd match --index` names (:func:`open_index`): an index folder, or a reference file
embedded into a temporary in-memory index calibrated on itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clibd_cli.calibrate import DEFAULT_PRECISION, Calibration, calibrate_held_out
from clibd_cli.encoders import Encoder
from clibd_cli.errors import ClibdError
from clibd_cli.index import ReferenceIndex
from clibd_cli.photos import Photo
from clibd_cli.sequences import RANKS, SequenceRecord, taxonomy_text
from clibd_cli.workflow import Note, Notes, ReadOptions, read_records

if TYPE_CHECKING:
    from clibd_cli.bundle import ModelBundle

TEXT_ID_PREFIX = "taxon:"
# A reference file given to `clibd match --index` is calibrated for this precision (its own, in memory).
TEMPORARY_PRECISION = DEFAULT_PRECISION


def photo_records(photos: Sequence[Photo], what: str) -> list[SequenceRecord]:
    """Reference photos as index records: the image path is the embedded input, taxonomy from the manifest."""
    from clibd_cli.errors import InputError

    records = [SequenceRecord(photo.id, str(photo.path), dict(photo.taxonomy), "", what) for photo in photos]
    labelled = [r for r in records if r.has_taxonomy]
    if not labelled:
        raise InputError(f"{what}: no photo has taxonomy; reference photos need order/family/genus/species columns "
                         "in the manifest.")
    return labelled


def text_records(records: Sequence[SequenceRecord]) -> list[SequenceRecord]:
    """One text reference per distinct lineage in `records` ("{order} {family} {genus} {species}")."""
    seen: dict[str, SequenceRecord] = {}
    for record in records:
        taxonomy = {rank: record.label(rank) for rank in RANKS}
        text = taxonomy_text(taxonomy)
        if text.strip() and text not in seen:
            seen[text] = SequenceRecord(f"{TEXT_ID_PREFIX}{text}", text, taxonomy, "", "taxonomy")
    return list(seen.values())


def calibrate_pair(part: ReferenceIndex, query_vectors: np.ndarray, query_ids: Sequence[str],
                   truth: dict[str, Sequence[str]], precision: float, seed: int = 0,
                   query_rows: np.ndarray | None = None) -> Calibration | None:
    """Calibrate ``part`` for queries of another modality (held out by specimen and species); None if too few."""
    try:
        return calibrate_held_out(part, query_vectors, query_ids, truth, target=precision, seed=seed,
                                  query_rows=query_rows)
    except ValueError:
        return None


def calibrate_across(parts: dict[str, ReferenceIndex], precision: float, seed: int = 0) -> dict[str, list[str]]:
    """Every cross-modal pair the parts allow (queries drawn from one part, references another).

    Text parts serve only as references: a taxonomy string is not a field query.  Returns the pairs done.
    """
    done: dict[str, list[str]] = {}
    for query_modality, queries in parts.items():
        if query_modality == "text":
            continue
        for modality, part in parts.items():
            if modality == query_modality:
                continue
            calibration = calibrate_pair(part, queries.vectors(), queries.labels.record_id, queries.labels.ranks,
                                         precision, seed, query_rows=queries.labels.vector)
            if calibration is not None:
                part.set_cross_thresholds(query_modality, calibration.thresholds, calibration.report)
                done.setdefault(modality, []).append(query_modality)
    return done


# ---------------------------------------------------------------------------------------------
# Reading references, opening an index


def reference_records(paths: Sequence[Path | str], reading: ReadOptions = ReadOptions(),
                      notes: Notes | None = None) -> list[SequenceRecord]:
    """The records of reference files that carry taxonomy; what was left out (no taxonomy, no sequence,
    other markers) is said in ``notes``."""
    from clibd_cli.sequences import require_taxonomy

    notes = Notes() if notes is None else notes
    result = read_records(paths, reading)
    what = ", ".join(str(p) for p in paths)
    require_taxonomy(result.records, what)
    records = [r for r in result.records if r.has_taxonomy]
    dropped = len(result.records) - len(records)
    if dropped:
        notes.warning(f"{dropped} reference records have no taxonomy and were left out.")
    if result.skipped_empty:
        notes.warning(f"{result.skipped_empty} records have no sequence and were left out.")
    if result.skipped_marker:
        others = ", ".join(f"{name} {count:,}" for name, count in result.other_markers.items())
        notes.note(f"{result.skipped_marker:,} rows of other markers ({others}) were left out; kept "
                   f"{reading.marker}. Choose with --marker.")
    return records


def reference_inputs(barcodes: Sequence[Path], images: Path | None, text_keys: bool,
                     reading: ReadOptions = ReadOptions(), notes: Notes | None = None,
                     ) -> dict[str, list[SequenceRecord]]:
    """Reference records per modality, read and checked before anything is embedded."""
    from clibd_cli.photos import collect_photos

    inputs: dict[str, list[SequenceRecord]] = {}
    if barcodes:
        inputs["dna"] = reference_records(barcodes, reading, notes)
    if images is not None:
        photos, problems = collect_photos([], manifest=images, id_column=reading.id_column,
                                          image_column=reading.image_column)
        if problems:
            raise ClibdError(f"{images}: {problems[0].reason}. Fix the manifest.")
        inputs["image"] = photo_records(photos, str(images))
    if text_keys:
        inputs["text"] = text_records([r for records in inputs.values() for r in records])
    return inputs


def calibrate_part(index: ReferenceIndex, precision: float = DEFAULT_PRECISION, seed: int = 0,
                   notes: Notes | None = None, threads: int | None = None) -> bool:
    """Fit ``index``'s own thresholds (barcodes: open-set on alignment identity, aligned on ``threads`` cores;
    otherwise leave-species-out).

    A reference too small to calibrate keeps the encoder's default thresholds, with a note; returns
    whether it was calibrated.
    """
    from clibd_cli.calibrate import calibrate_barcode_part, calibrate_leave_species_out

    try:
        if index.modality == "dna":  # barcodes are called on alignment identity, short reads on their own set
            calibrate_barcode_part(index, target=precision, seed=seed, threads=threads)
        else:
            calibration = calibrate_leave_species_out(index, target=precision, seed=seed)
            index.set_thresholds(calibration.thresholds, calibration.report)
    except ValueError:
        if notes is not None:
            notes.note("too few labelled references to calibrate; using "
                       + ("the conventional identity cut-offs (97/95/90/85 %)." if index.modality == "dna"
                          else "the encoder's default thresholds."))
        return False
    return True


def search_note(index: ReferenceIndex, notes: Notes) -> None:
    """Say once when a large index is searched exactly for want of hnswlib (results are the same)."""
    from clibd_cli.index import EXACT_MAX

    if index.search_engine != "hnswlib" and index.size > EXACT_MAX:
        notes.note(f"search: {index.search_description()}.")


@dataclass
class OpenIndex:
    """The barcode part of an index, with the encoder its queries are embedded with.

    ``temporary``: built in memory from a reference file (and calibrated on it), not read from a folder.
    Open it once and pass it to several runs: a temporary index is embedded and calibrated only once.
    """

    index: ReferenceIndex
    encoder: Encoder
    path: Path
    temporary: bool = False
    notes: list[Note] = field(default_factory=list)


def open_index(path: Path | str, *, kmer: int | None = None, bundle: ModelBundle | None = None,
               reading: ReadOptions = ReadOptions(), precision: float = TEMPORARY_PRECISION,
               notes: Notes | None = None) -> OpenIndex:
    """An index folder, or a reference file (FASTA, BOLD/BIOSCAN table) embedded into a temporary index.

    Queries are embedded with ``bundle``'s DNA encoder, else the k-mer profile (``kmer``: its k; default the
    index's own encoder, or k=5 for a file).  A folder's encoder must match the one it was built with.
    """
    from clibd_cli.encoders import KmerProfileEncoder

    notes = Notes() if notes is None else notes
    path = Path(path)
    if path.is_dir():
        index = ReferenceIndex.load(path, "dna")
        search_note(index, notes)
        if bundle is not None:
            encoder = bundle.encoder("dna")
        else:
            encoder = KmerProfileEncoder(k=kmer) if kmer else index.encoder()
        index.check_encoder(encoder)
        return OpenIndex(index, encoder, path, notes=notes)
    encoder = bundle.encoder("dna") if bundle is not None else KmerProfileEncoder(k=kmer or 5)
    records = reference_records([path], reading, notes)
    index = ReferenceIndex.from_records(records, encoder, what=str(path))
    calibrate_part(index, precision, notes=notes)
    return OpenIndex(index, encoder, path, temporary=True, notes=notes)
