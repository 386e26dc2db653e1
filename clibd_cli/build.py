"""Build or extend a reference index: the library behind `clibd build-index`.

Barcodes (with taxonomy) are the core of a library; with a model bundle, reference photos (a manifest
with taxonomy) and taxonomy strings ("text keys") become further parts of the same index, in the
model's embedding space (:mod:`clibd_cli.references`).  Barcodes are embedded with the bundle's DNA
encoder, else the weight-free k-mer profile (``kmer``: its k; an appended index keeps its own).

With ``calibrate`` (the default) each part fits its own thresholds for the target precision
(:func:`clibd_cli.references.calibrate_part`), and every pair of parts that shares specimens calibrates
the cross-modal thresholds (a photo against barcodes).  The whole read-modify-write runs under the
index folder's write lock (:func:`clibd_cli.indexdir.writing`) and ends in one atomic switch, so a
reader never sees half an index and a second writer waits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clibd_cli.calibrate import DEFAULT_PRECISION
from clibd_cli.encoders import Encoder, KmerProfileEncoder
from clibd_cli.errors import ClibdError
from clibd_cli.index import MANIFEST, ReferenceIndex, index_modalities, save_parts
from clibd_cli.indexdir import ignorable, writing
from clibd_cli.models import load_model
from clibd_cli.references import calibrate_across, calibrate_part, reference_inputs
from clibd_cli.workflow import Listener, Note, Notes, Progress, ReadOptions, as_notes, no_progress

if TYPE_CHECKING:
    from clibd_cli.bundle import ModelBundle


@dataclass
class BuildOptions:
    """How an index is built.  ``append`` adds to an existing index, ``force`` replaces one (never both);
    ``kmer`` chooses the k-mer profile's k (no model); ``threads`` builds the HNSW graph and aligns the
    calibration's queries (default: all cores); ``workers`` decode reference photos."""

    append: bool = False
    force: bool = False
    kmer: int | None = None
    calibrate: bool = True
    precision: float = DEFAULT_PRECISION
    reading: ReadOptions = field(default_factory=ReadOptions)
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None


@dataclass
class BuildReport:
    """What was written: the index's parts by modality (counts, encoder, thresholds are in each part's
    ``manifest``), the notes (records left out, references too few to calibrate) and the time taken."""

    output: Path
    parts: dict[str, ReferenceIndex]
    notes: list[Note]
    seconds: float


def check_build(output: Path, barcodes: Sequence[Path], images: Path | None, text_keys: bool, has_model: bool,
                options: BuildOptions) -> None:
    """Refuse a build that cannot work, before anything is read: contradictory options, nothing to index,
    photos or text without a model, or an index that is missing (``append``) or already there."""
    if options.append and options.force:
        raise ClibdError("--append and --force contradict each other; choose one.")
    if not barcodes and images is None:
        raise ClibdError("nothing to index: give --barcodes and/or --images.")
    if (images is not None or text_keys) and not has_model:
        raise ClibdError("--images and --text-keys need a model bundle: add --model BUNDLE (from 'clibd export').")
    if has_model and options.kmer:
        raise ClibdError("--kmer chooses the weight-free encoder; it cannot be combined with --model.")
    if options.append and not (output / MANIFEST).exists():
        raise ClibdError(f"{output}: no index to append to. Build it first without --append.")
    if not options.append and not options.force and output.exists() and \
            any(not ignorable(p.name) for p in output.iterdir()):
        raise ClibdError(f"{output}: already exists. Use --force to replace it or --append to add to it.")


def build_index(output: str | Path, *, barcodes: Sequence[str | Path] = (), images: str | Path | None = None,
                text_keys: bool = False, model: str | Path | ModelBundle | None = None,
                options: BuildOptions | None = None, progress: Progress = no_progress,
                notify: Notes | Listener | None = None) -> BuildReport:
    """Build the index folder ``output`` (or add to it with ``options.append``) from reference barcodes,
    photos (``images``: a manifest with taxonomy; needs ``model``) and taxonomy strings (``text_keys``)."""
    options = options or BuildOptions()
    output, barcodes = Path(output), [Path(b) for b in barcodes]
    images = Path(images) if images is not None else None
    notes = as_notes(notify)
    check_build(output, barcodes, images, text_keys, model is not None, options)
    started = time.perf_counter()
    bundle = load_model(model, options.device)
    with writing(output, notify=notes.info):
        parts = _build_locked(output, barcodes, images, text_keys, bundle, options, progress, notes)
    return BuildReport(output, parts, notes, time.perf_counter() - started)


def _encoder(modality: str, bundle: ModelBundle | None, kmer: int | None,
             existing: dict[str, ReferenceIndex]) -> Encoder:
    if bundle is not None:
        return bundle.encoder(modality)
    if kmer:
        return KmerProfileEncoder(k=kmer)
    return existing["dna"].encoder() if "dna" in existing else KmerProfileEncoder()


def _build_locked(output: Path, barcodes: Sequence[Path], images: Path | None, text_keys: bool,
                  bundle: ModelBundle | None, options: BuildOptions, progress: Progress,
                  notes: Notes) -> dict[str, ReferenceIndex]:
    """The read-modify-write, run while holding the index's write lock."""
    existing = {m: ReferenceIndex.load(output, m) for m in index_modalities(output)} if options.append else {}
    with progress("reading references", None):
        inputs = reference_inputs(barcodes, images, text_keys, options.reading, notes)
    if bundle is not None and "dna" in inputs and "dna" not in bundle.modalities:
        if "text" not in inputs:
            raise ClibdError(f"model {bundle.name} has no barcode encoder (it knows "
                             f"{', '.join(bundle.modalities)}): add --text-keys to index the barcodes' taxonomy "
                             "as text references, or give --images.")
        del inputs["dna"]  # the barcodes gave their taxonomy to the text references
        notes.note(f"model {bundle.name} has no barcode encoder: the barcodes' taxonomy became text references "
                   "and the sequences were not indexed.")
    parts = dict(existing)
    for modality, records in inputs.items():
        encoder = _encoder(modality, bundle, options.kmer, existing)
        if modality == "image" and options.workers:
            encoder.workers = options.workers
        with progress(f"embedding {modality}", len(records)) as advance:
            if modality in existing:
                parts[modality] = existing[modality].appended(records, encoder, progress=advance)
            else:
                parts[modality] = ReferenceIndex.from_records(records, encoder, progress=advance,
                                                              what=f"the {modality} references")
    records = None  # the parts hold them now, and drop them once written (index.save_parts): 1.6 kB a barcode
    inputs = dict.fromkeys(inputs)
    if options.calibrate:
        for modality in inputs:
            if modality != "text":
                with progress(f"calibrating {modality}", None):  # leave-species-out: minutes on a large library
                    calibrate_part(parts[modality], options.precision, notes=notes, threads=options.threads)
        if len(parts) > 1:
            with progress("calibrating across modalities", None):
                calibrate_across(parts, options.precision)
    with progress("writing the index and its search graph", None):
        save_parts(list(parts.values()), output, force=options.force or options.append, threads=options.threads)
    return parts
