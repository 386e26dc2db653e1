"""clibd from Python: the workflows behind the `clibd` commands, as functions that return values.

Why this module: the command line is one user of the library, a notebook or a pipeline is another, and
both should get the same calls from the same code.  Every `clibd` command parses its options, calls
one of the workflows gathered here (:class:`MatchRun`, :class:`PhotoRun`, the index builder…) and
prints; these functions take typed options instead of flags, return result rows and reports instead
of printing, and write nothing but the index folders they are asked to build or calibrate.  Notes
the CLI prints as ``warning:`` lines come back as :class:`Note` objects (pass ``notify=print`` to
hear them as they happen); long steps take a ``progress`` callback.

    from clibd_cli import api

    index = api.open_index("examples/reference.fasta")   # a temporary, calibrated index in memory
    for result in api.match("examples/queries.fasta", index):
        print(result.row["query_id"], result.row["status"], result.row["species"])

Result rows have the columns of the CLI's output (:data:`clibd_cli.report.MATCH_COLUMNS`,
:data:`clibd_cli.classify.CLASSIFY_COLUMNS`); ``result.hits`` holds the top hits when
``options.top_k`` asks for them.  Heavy modules (NumPy, onnxruntime) load with this module, which the
CLI never imports at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from clibd_cli.build import BuildOptions, BuildReport
from clibd_cli.build import build_index as _build_index
from clibd_cli.bundle import ModelBundle
from clibd_cli.calibrate import CalibrateOptions, Calibration, calibrate_index
from clibd_cli.classify import ClassifyOptions, PhotoRun, SpecimenCheck
from clibd_cli.evaluate import evaluate_model
from clibd_cli.match import MatchOptions, MatchResult, MatchRun
from clibd_cli.models import load_model
from clibd_cli.references import OpenIndex
from clibd_cli.references import open_index as _open_index
from clibd_cli.workflow import Listener, Note, Notes, Progress, ReadOptions, no_progress
from clibd_cli.workflow import as_notes as _as_notes

__all__ = [
    "BuildOptions",
    "BuildReport",
    "CalibrateOptions",
    "Calibration",
    "ClassifyOptions",
    "MatchOptions",
    "MatchResult",
    "MatchRun",
    "ModelBundle",
    "Note",
    "Notes",
    "OpenIndex",
    "PhotoRun",
    "ReadOptions",
    "SpecimenCheck",
    "build_index",
    "calibrate",
    "check",
    "classify",
    "evaluate",
    "load_model",
    "match",
    "open_index",
]

Model = str | Path | ModelBundle


def open_index(path: str | Path, *, model: Model | None = None, kmer: int | None = None, device: str = "auto",
               reading: ReadOptions = ReadOptions(), notify: Notes | Listener | None = None) -> OpenIndex:
    """Open an index folder, or embed a reference file (FASTA, BOLD/BIOSCAN table) into a temporary index
    calibrated on itself, ready for :func:`match`.  Open once, match many times: a reference file is then
    embedded and calibrated only once.  ``model``: a bundle whose DNA encoder embeds the barcodes
    (default: the weight-free k-mer profile, ``kmer`` its k)."""
    return _open_index(path, kmer=kmer, bundle=load_model(model, device), reading=reading, notes=_as_notes(notify))


def build_index(output: str | Path, barcodes: Iterable[str | Path] = (), *, images: str | Path | None = None,
                text_keys: bool = False, model: Model | None = None, options: BuildOptions | None = None,
                progress: Progress = no_progress, notify: Notes | Listener | None = None) -> BuildReport:
    """Build the index folder ``output`` (or add to it: ``BuildOptions(append=True)``) from reference
    barcodes with taxonomy, and with a ``model`` reference photos (``images``: a manifest) and taxonomy
    strings (``text_keys``).  Same as `clibd build-index`; returns the parts written and the notes."""
    return _build_index(output, barcodes=list(barcodes), images=images, text_keys=text_keys, model=model,
                        options=options, progress=progress, notify=notify)


def match(queries: str | Path | Iterable[str | Path], index: str | Path | OpenIndex, *,
          options: MatchOptions | None = None, thresholds: str = "calibrated",
          overrides: dict[str, float] | None = None, model: Model | None = None, kmer: int | None = None,
          device: str = "auto", reading: ReadOptions = ReadOptions(), skip: Iterable[str] = (),
          progress: Callable[[int], None] | None = None,
          notify: Notes | Listener | None = None) -> Iterator[MatchResult]:
    """Identify query barcodes, as `clibd match`: one :class:`MatchResult` per query, in input order,
    streamed (a batch in memory at a time).  Files and index are opened here (errors are raised by this
    call, not by the first result).  ``index``: a folder, a reference file, or :func:`open_index`'s
    result.  ``thresholds``: ``calibrated`` (the index's) or ``conventional``; ``overrides`` set single
    ranks (``{"species": 0.98}``).  ``skip``: query ids to leave out (already done)."""
    run = MatchRun.open(queries, index, options=options, thresholds=thresholds, overrides=overrides, kmer=kmer,
                        model=model, device=device, reading=reading, notify=notify)
    return _then(run.results(skip, progress), run.finish)


def classify(photos: str | Path | Iterable[str | Path] | None = None, *, model: Model, index: str | Path,
             manifest: str | Path | None = None, group_by: str | None = None,
             options: ClassifyOptions | None = None, overrides: dict[str, float] | None = None,
             device: str = "auto", reading: ReadOptions = ReadOptions(), skip: Iterable[str] = (),
             progress: Callable[[int], None] | None = None,
             notify: Notes | Listener | None = None) -> Iterator[MatchResult]:
    """Identify insects from photos (files, folders, glob patterns, and/or a ``manifest``), as
    `clibd classify`: one :class:`MatchResult` per photo, or per specimen with ``group_by``, errors
    included.  ``ClassifyOptions(against=…)``: dna (default), image, text or all."""
    run = PhotoRun.open(photos, model=model, index=index, manifest=manifest, group_by=group_by, options=options,
                        overrides=overrides, reading=reading, device=device, notify=notify)
    run.skip(skip)
    return run.results(progress)


def check(manifest: str | Path, *, model: Model, index: str | Path, options: ClassifyOptions | None = None,
          device: str = "auto", reading: ReadOptions = ReadOptions(min_length=0),
          progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """`clibd check`: per specimen of ``manifest`` (a photo and a barcode per row), do the photo's and the
    barcode's calls agree?  One row per specimen (columns :data:`clibd_cli.check.CHECK_COLUMNS`)."""
    run = SpecimenCheck.open(manifest, model=model, index=index, options=options, reading=reading, device=device)
    return run.rows(progress)


def calibrate(index: str | Path, *, queries: str | Path | None = None, images: str | Path | None = None,
              against: str = "dna", model: Model | None = None, device: str = "auto",
              options: CalibrateOptions | None = None, notify: Notes | Listener | None = None,
              progress: Progress = no_progress) -> Calibration:
    """Refit and store an index folder's thresholds for a target precision, as `clibd calibrate`; returns
    the thresholds and the report of how they were fitted."""
    return calibrate_index(index, queries=queries, images=images, against=against, model=model, device=device,
                           options=options, notify=notify, progress=progress)


def evaluate(model: str | Path, data: str | Path, *, split: str = "test", precision: float = 0.95,
             reading: ReadOptions = ReadOptions(), device: str = "auto", workers: int | None = None,
             trust_checkpoint: bool = False, progress: Progress = no_progress) -> dict[str, Any]:
    """The paper's evaluation plus open-set metrics of ``model`` (a bundle, a checkpoint, ``kmer[:K]``) on a
    split table, as `clibd evaluate`; the report as a dict (write it with
    :func:`clibd_cli.evaluate.write_report`)."""
    return evaluate_model(model, data, split=split, precision=precision, reading=reading, device=device,
                          workers=workers, trust_checkpoint=trust_checkpoint, progress=progress)


def _then(results: Iterator[MatchResult], finish: Callable[[], Any]) -> Iterator[MatchResult]:
    """The results, then ``finish`` once they are exhausted (notes only the end of a stream can give)."""
    yield from results
    finish()
