"""`clibd check`: does each specimen's photo agree with its barcode?

Specimen photos and barcodes travel through different hands (imaging station, plate wells, LIMS
joins), and a swapped well or a mislabelled photo silently poisons a reference library.  Because CLIBD
puts both in one embedding space, each pair can be checked independently of its label: the photo is
identified (against the index's barcodes by default), the barcode is identified, and the calls are
compared rank by rank.  ``pair_similarity`` is the photo↔barcode cosine of the specimen itself; a
pair far below its peers is suspect even where the calls are inconclusive.

Verdicts: ``consistent`` (the calls agree at every rank both make, at least one), ``conflict`` (they
disagree at some rank; ``first_conflict`` names the highest), ``inconclusive`` (no rank called by
both), ``no_barcode``, ``error`` (the photo cannot be read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from clibd_cli.bundle import ModelBundle
from clibd_cli.classify import ClassifyOptions, Reference, classify_vectors
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import assign_vectors
from clibd_cli.photos import Photo, iter_preprocessed
from clibd_cli.schema import RANKS
from clibd_cli.sequences import SequenceRecord

CHECK_COLUMNS = ["specimen_id", "verdict", "first_conflict", *(f"photo_{r}" for r in RANKS),
                 *(f"barcode_{r}" for r in RANKS), *(f"agree_{r}" for r in RANKS), "photo_status", "barcode_status",
                 "pair_similarity", "error"]


def compare_calls(photo: Mapping[str, str], barcode: Mapping[str, str]) -> tuple[str, str, dict[str, str]]:
    """(verdict, first conflicting rank, per-rank yes/no/'') from two rows' rank labels."""
    agree = {}
    for rank in RANKS:
        a, b = photo.get(rank, ""), barcode.get(rank, "")
        agree[rank] = ("yes" if a == b else "no") if a and b else ""
    conflicts = [rank for rank in RANKS if agree[rank] == "no"]
    if conflicts:
        return "conflict", conflicts[0], agree
    return ("consistent" if "yes" in agree.values() else "inconclusive"), "", agree


def _row(specimen: str, verdict: str, error: str = "") -> dict:
    row = {column: "" for column in CHECK_COLUMNS}
    row.update(specimen_id=specimen, verdict=verdict, error=error)
    return row


def check_specimens(photos: Sequence[Photo], barcodes: Mapping[str, SequenceRecord], bundle: ModelBundle,
                    refs: dict[str, Reference], dna: ReferenceIndex, dna_thresholds: dict[str, float],
                    options: ClassifyOptions, progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """One row per photo (specimen), in input order."""
    for batch in iter_preprocessed(photos, bundle.preprocessing, batch_size=options.batch_size,
                                   workers=options.workers):
        paired = [p for p in batch.photos if p.id in barcodes and barcodes[p.id].sequence]
        image_vectors = bundle.embed_pixels(batch.pixels)
        by_photo = dict(zip((id(p) for p in batch.photos), image_vectors, strict=True))
        photo_rows, barcode_rows, sims = {}, {}, {}
        if paired:
            vectors = np.stack([by_photo[id(p)] for p in paired])
            dna_vectors = bundle.embed_dna([barcodes[p.id].sequence for p in paired])
            ids = [p.id for p in paired]
            for photo, result in zip(paired, classify_vectors(ids, vectors, refs, options), strict=True):
                photo_rows[id(photo)] = result.row
            for photo, (result, _) in zip(paired, assign_vectors(ids, dna_vectors, dna, dna_thresholds, options),
                                          strict=True):
                barcode_rows[id(photo)] = result.row
            sims = dict(zip((id(p) for p in paired), (vectors * dna_vectors).sum(axis=1), strict=True))
        for photo, reason in batch.in_order():
            if reason is not None:
                yield _row(photo.id, "error", reason)
            elif id(photo) not in photo_rows:
                yield _row(photo.id, "no_barcode", "no barcode with this specimen id")
            else:
                p_row, b_row = photo_rows[id(photo)], barcode_rows[id(photo)]
                verdict, first, agree = compare_calls(p_row, b_row)
                row = _row(photo.id, verdict)
                row.update(first_conflict=first, photo_status=p_row["status"], barcode_status=b_row["status"],
                           pair_similarity=float(sims[id(photo)]))
                for rank in RANKS:
                    row.update({f"photo_{rank}": p_row.get(rank, ""), f"barcode_{rank}": b_row.get(rank, ""),
                                f"agree_{rank}": agree[rank]})
                yield row
        if progress is not None:
            progress(len(batch.inputs))
