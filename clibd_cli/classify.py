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

:class:`PhotoRun` is the whole `clibd classify` workflow for any caller (photos collected, the bundle and
the index's parts opened, thresholds per reference modality, the record a resumable output keeps);
:class:`SpecimenCheck` the one of `clibd check` (each specimen's photo against its own barcode).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clibd_cli import __version__
from clibd_cli.assign import Assignment
from clibd_cli.bundle import ModelBundle
from clibd_cli.errors import ClibdError
from clibd_cli.index import ReferenceIndex, index_modalities
from clibd_cli.match import MatchOptions, MatchResult, assign_vectors
from clibd_cli.photos import Photo, PhotoProblem, iter_preprocessed
from clibd_cli.report import COLUMNS
from clibd_cli.sequences import RANKS, SequenceRecord
from clibd_cli.workflow import Listener, Notes, ReadOptions, as_notes

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


# ---------------------------------------------------------------------------------------------
# The workflows


def _photo_inputs(photos: str | Path | Iterable[str | Path] | None) -> list[str]:
    if photos is None:
        return []
    return [str(photos)] if isinstance(photos, str | Path) else [str(p) for p in photos]


def open_parts(index: str | Path) -> dict[str, ReferenceIndex]:
    """Every part (modality) of an index folder."""
    return {m: ReferenceIndex.load(index, m) for m in index_modalities(index)}


@dataclass
class PhotoRun:
    """One photo identification run, prepared: photos collected, bundle and index open, thresholds set.

    Made by :meth:`open`; :meth:`skip` drops photos (or groups) already done, :meth:`results` yields a
    :class:`~clibd_cli.match.MatchResult` per photo (per specimen with ``group_by``), errors included.
    :attr:`info` is what an output file records about the run, :attr:`identity` what a resumed output
    must share (:class:`clibd_cli.runs.RunOutput`).
    """

    photos: list[Photo]
    problems: list[PhotoProblem]
    bundle: ModelBundle
    parts: dict[str, ReferenceIndex]
    refs: dict[str, Reference]
    index_path: Path
    options: ClassifyOptions
    notes: Notes

    @classmethod
    def open(cls, photos: str | Path | Iterable[str | Path] | None = None, *, model: str | Path | ModelBundle,
             index: str | Path, manifest: str | Path | None = None, group_by: str | None = None,
             options: ClassifyOptions | None = None, overrides: dict[str, float] | None = None,
             reading: ReadOptions = ReadOptions(), device: str = "auto", int8: bool = False,
             notify: Notes | Listener | None = None) -> PhotoRun:
        """Collect photos (files, folders, glob patterns, and/or a ``manifest``) and open the index.

        ``options.against``: the reference modality (dna, image, text, or all: the most specific
        confident call wins).  ``group_by``: fuse the photos of one specimen (a manifest column, or
        ``folder``).  ``overrides`` set single ranks' thresholds.
        """
        from clibd_cli.models import load_model
        from clibd_cli.photos import collect_photos
        from clibd_cli.references import search_note

        options, notes, index = options or ClassifyOptions(), as_notes(notify), Path(index)
        against, inputs = options.against, _photo_inputs(photos)
        manifest = Path(manifest) if manifest is not None else None
        if against not in AGAINST:
            raise ClibdError(f"--against {against!r}: use one of {', '.join(AGAINST)}.")
        if not inputs and manifest is None:
            raise ClibdError("no photos given: pass files, folders or patterns, or --manifest.")
        found, problems = collect_photos(inputs, manifest=manifest, group_by=group_by, id_column=reading.id_column,
                                         image_column=reading.image_column)
        bundle = load_model(model, device, int8, options.threads)
        bundle.check("image")
        modalities = index_modalities(index)
        if against != "all" and against not in modalities:
            raise ClibdError(f"{index}: has no {against} references (it has: {', '.join(modalities)}). "
                             "Choose --against accordingly or add them with 'clibd build-index --append'.")
        parts = {m: ReferenceIndex.load(index, m) for m in modalities}
        search_note(max(parts.values(), key=lambda part: part.size), notes)
        refs = references(parts, bundle, against, overrides)
        for modality, ref in refs.items():
            if not ref.calibrated:
                notes.warning(f"photo→{modality} thresholds are not calibrated for this index; every photo gets "
                              "its nearest references' lineage (flag 'uncalibrated'). Calibrate with 'clibd "
                              "calibrate --index … --model … --images LABELLED.csv'.")
        return cls(found, problems, bundle, parts, refs, index, replace(options, group=group_by is not None), notes)

    def skip(self, done: Iterable[str]) -> None:
        """Leave out photos (or groups) whose ids are in ``done`` (already in a resumed output)."""
        done = set(done)
        self.photos = [p for p in self.photos if (p.group or p.id) not in done]
        self.problems = [p for p in self.problems if p.id not in done]

    def __len__(self) -> int:
        """Photos (and unusable inputs) still to go."""
        return len(self.photos) + len(self.problems)

    @property
    def info(self) -> dict[str, Any]:
        bundle, refs = self.bundle, self.refs
        return {"clibd_version": __version__, "model": bundle.name, "model_fingerprint": bundle.fingerprint,
                "index": str(self.index_path), "against": self.options.against, "neighbours": self.options.neighbours,
                "thresholds": {m: ref.thresholds for m, ref in refs.items()},
                "calibrated": {m: ref.calibrated for m, ref in refs.items()},
                "search": {m: self.parts[m].search_description() for m in refs}}

    @property
    def identity(self) -> dict[str, Any]:
        return {"model_fingerprint": self.bundle.fingerprint, "against": self.options.against,
                "neighbours": self.options.neighbours,
                "thresholds": {m: ref.thresholds for m, ref in self.refs.items()},
                "index_fingerprints": {m: p.fingerprint for m, p in self.parts.items()}}

    def results(self, progress: Callable[[int], None] | None = None) -> Iterator[MatchResult]:
        return classify_photos(self.photos, self.problems, self.bundle, self.refs, self.options, progress=progress)


@dataclass
class SpecimenCheck:
    """`clibd check`, prepared: each specimen's photo and its own barcode, identified independently and
    compared rank by rank (:mod:`clibd_cli.check`).  :meth:`rows` yields one row per specimen."""

    photos: list[Photo]
    problems: list[PhotoProblem]
    barcodes: dict[str, SequenceRecord]
    bundle: ModelBundle
    refs: dict[str, Reference]
    dna: ReferenceIndex
    index_path: Path
    options: ClassifyOptions

    @classmethod
    def open(cls, manifest: str | Path, *, model: str | Path | ModelBundle, index: str | Path,
             options: ClassifyOptions | None = None, reading: ReadOptions = ReadOptions(min_length=0),
             device: str = "auto", int8: bool = False) -> SpecimenCheck:
        """``manifest``: one row per specimen with a photo column and a barcode column; ``index`` must hold
        barcodes built with the same model."""
        from clibd_cli.models import load_model
        from clibd_cli.photos import collect_photos
        from clibd_cli.workflow import read_records

        options, manifest, index = options or ClassifyOptions(), Path(manifest), Path(index)
        photos, problems = collect_photos([], manifest=manifest, id_column=reading.id_column,
                                          image_column=reading.image_column)
        barcodes = {r.id: r for r in read_records([manifest], reading).records}
        bundle = load_model(model, device, int8)
        bundle.check("image", "dna")
        parts = open_parts(index)
        if "dna" not in parts:
            raise ClibdError(f"{index}: has no barcodes; 'clibd check' identifies each barcode against them.")
        refs = references(parts, bundle, options.against)
        dna = parts["dna"]
        dna.check_encoder(bundle.encoder("dna"))
        return cls(photos, problems, barcodes, bundle, refs, dna, index, options)

    @property
    def info(self) -> dict[str, Any]:
        return {"clibd_version": __version__, "model": self.bundle.name, "index": str(self.index_path),
                "against": self.options.against}

    def rows(self, progress: Callable[[int], None] | None = None) -> Iterator[dict]:
        """Unreadable photos first (verdict ``error``), then one row per specimen, in manifest order."""
        from clibd_cli.check import check_specimens

        for problem in self.problems:
            yield {"specimen_id": problem.id, "verdict": "error", "error": problem.reason}
        yield from check_specimens(self.photos, self.barcodes, self.bundle, self.refs, self.dna, self.dna.thresholds,
                                   self.options, progress)
