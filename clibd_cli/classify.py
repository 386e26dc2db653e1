"""Identify photos against a reference index: decode (worker pool), embed (ONNX), search, assign.

The library behind `clibd classify`; it yields result rows and never prints.  Photos are decoded and
preprocessed in threads while the model runs on the previous batch (:func:`clibd_cli.photos.iter_preprocessed`),
so on a laptop CPU the encoder, not JPEG decoding, sets the pace.

A photo can be matched against any modality the index holds in the bundle's embedding space:
``dna`` (the CLIBD use case: species known only from barcodes), ``image`` (reference photos), ``text``
(taxonomy strings), or ``all``, where each modality gives a call and the most specific confident one
wins (finest rank reached, then the widest margin over that rank's threshold).  Thresholds are
calibrated per query→reference modality pair; a pair never calibrated is called at every rank with
the nearest references' lineage and flagged ``uncalibrated``, so nothing pretends to a confidence it
has not measured.

Several photos of one specimen (``group_by``) are fused by averaging their unit embeddings before the
search: views from different angles agree on the specimen and disagree on pose, so the mean keeps
the specimen.  Undecodable photos become ``status=error`` rows with the reason; the run goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clibd_cli.assign import Assignment
from clibd_cli.bundle import ModelBundle
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MatchOptions, MatchResult, assign_vectors
from clibd_cli.photos import Photo, PhotoProblem, iter_preprocessed
from clibd_cli.report import COLUMNS
from clibd_cli.sequences import RANKS

CLASSIFY_COLUMNS = [*COLUMNS, "against", "photos", "error"]
AGAINST = ("dna", "image", "text", "all")
UNCALIBRATED = {rank: -2.0 for rank in RANKS}  # below any score: every rank is called


@dataclass
class ClassifyOptions(MatchOptions):
    """Search/assignment settings plus the photo side: reference modality, decoding workers, grouping."""

    against: str = "dna"
    workers: int | None = None
    batch_size: int = 32
    group: bool = False


@dataclass
class Reference:
    """One searchable part of the index with the thresholds for photo queries."""

    part: ReferenceIndex
    thresholds: dict[str, float]
    calibrated: bool


def references(parts: dict[str, ReferenceIndex], bundle: ModelBundle, against: str,
               overrides: dict[str, float] | None = None) -> dict[str, Reference]:
    """The index parts a photo is compared with, checked against the bundle's embedding space."""
    wanted = list(parts) if against == "all" else [against]
    out = {}
    for modality in wanted:
        part = parts[modality]
        part.check_encoder(bundle.encoder("image"))
        thresholds = part.thresholds_for("image")
        calibrated = thresholds is not None
        out[modality] = Reference(part, {**(thresholds or UNCALIBRATED), **(overrides or {})}, calibrated)
    return out


def error_row(photo_id: str, reason: str) -> dict:
    """A row for a photo (or group) that could not be read: status error, the reason, nothing else."""
    row = {column: "" for column in CLASSIFY_COLUMNS}
    row.update(query_id=photo_id, status="error", error=reason, photos=0)
    return row


def _specificity(assignment: Assignment, thresholds: dict[str, float]) -> tuple[int, float]:
    if assignment.status == "no_match" or not assignment.rank:
        return -1, float("-inf")
    rank = assignment.rank
    return RANKS.index(rank), assignment.scores[rank] - thresholds.get(rank, 0.0)


def classify_vectors(query_ids: Sequence[str], vectors: np.ndarray, refs: dict[str, Reference],
                     options: ClassifyOptions, counts: Sequence[int] | None = None) -> list[MatchResult]:
    """Assign photo embeddings against each reference modality and keep the most specific call."""
    per_modality = {m: assign_vectors(query_ids, vectors, ref.part, ref.thresholds, options)
                    for m, ref in refs.items()}
    results = []
    for i in range(len(query_ids)):
        modality = max(per_modality, key=lambda m: _specificity(per_modality[m][i][1], refs[m].thresholds))
        result = per_modality[modality][i][0]
        flags = [f for f in result.row.get("flags", "").split(",") if f]
        if not refs[modality].calibrated:
            flags.append("uncalibrated")
        result.row.update(against=modality, photos=counts[i] if counts is not None else 1, error="",
                          flags=",".join(flags))
        for hit in result.hits:
            hit["against"] = modality
        results.append(result)
    return results


def classify_photos(photos: Sequence[Photo], problems: Sequence[PhotoProblem], bundle: ModelBundle,
                    refs: dict[str, Reference], options: ClassifyOptions,
                    progress: Callable[[int], None] | None = None) -> Iterator[MatchResult]:
    """Yield one result per photo (or per group with ``options.group``), errors included, input order."""
    for problem in problems:
        yield MatchResult(error_row(problem.id, problem.reason), [])
    # Start the image encoder (checksum, graph optimisation: ~1 s at paper size) while the first photos decode.
    warm = threading.Thread(target=_start_session, args=(bundle,), daemon=True)
    warm.start()
    batches = iter_preprocessed(photos, bundle.preprocessing, batch_size=options.batch_size,
                                workers=options.workers)
    first = next(batches, None)
    warm.join()
    if first is not None:
        batches = itertools.chain([first], batches)
    if not options.group:
        for batch in batches:
            vectors = bundle.embed_pixels(batch.pixels)
            results = iter(classify_vectors([p.id for p in batch.photos], vectors, refs, options))
            for photo, reason in batch.in_order():
                yield MatchResult(error_row(photo.id, reason), []) if reason is not None else next(results)
            if progress is not None:
                progress(len(batch.inputs))
        return
    yield from _classify_groups(photos, batches, bundle, refs, options, progress)


def _start_session(bundle: ModelBundle) -> None:
    """Create the image session; a failure (say, a checksum) is raised again, cleanly, on first real use."""
    with contextlib.suppress(Exception):
        bundle.session("image")


def _classify_groups(photos, batches, bundle: ModelBundle, refs: dict[str, Reference], options: ClassifyOptions,
                     progress) -> Iterator[MatchResult]:
    groups = list(dict.fromkeys(photo.group or photo.id for photo in photos))
    sums = {g: np.zeros(bundle.dim, dtype=np.float64) for g in groups}
    used = dict.fromkeys(groups, 0)
    reasons: dict[str, list[str]] = {g: [] for g in groups}
    for batch in batches:
        vectors = bundle.embed_pixels(batch.pixels)
        for photo, vector in zip(batch.photos, vectors, strict=True):
            sums[photo.group or photo.id] += vector
            used[photo.group or photo.id] += 1
        for photo, reason in batch.errors:
            reasons[photo.group or photo.id].append(reason)
        if progress is not None:
            progress(len(batch.photos) + len(batch.errors))
    good = [g for g in groups if used[g]]
    if good:
        matrix = np.stack([sums[g] for g in good])
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        fused = dict(zip(good, classify_vectors(good, matrix.astype(np.float32), refs, options,
                                                counts=[used[g] for g in good]), strict=True))
    for group in groups:
        if not used[group]:
            yield MatchResult(error_row(group, "; ".join(reasons[group])), [])
            continue
        result = fused[group]
        if reasons[group]:
            flags = [f for f in result.row["flags"].split(",") if f] + [f"photos_failed={len(reasons[group])}"]
            result.row.update(flags=",".join(flags), error="; ".join(reasons[group]))
        yield result
