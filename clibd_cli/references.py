"""Reference records of every modality, and the calibration of each query → reference modality pair.

`clibd build-index` takes barcodes (always the core of a library), and with a model bundle also photos
(a manifest with taxonomy) and taxonomy strings ("text keys": one record per distinct lineage, the
zero-shot references CLIBD's text encoder makes possible).  Each becomes one part of the index.

Thresholds are per query modality.  Within a modality the reference calibrates itself (leave-species-out);
across modalities it can only do so when the same specimens are there in both (a photo and a barcode of
one specimen share its id), or from labelled photos given to `clibd calibrate --images`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clibd_cli.calibrate import Calibration, calibrate_held_out
from clibd_cli.index import ReferenceIndex
from clibd_cli.photos import Photo
from clibd_cli.sequences import RANKS, SequenceRecord, taxonomy_text

TEXT_ID_PREFIX = "taxon:"


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
