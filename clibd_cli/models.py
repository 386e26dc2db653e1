"""Models as the workflows take them: a bundle folder or a loaded bundle, and checkpoints turned into bundles.

Every workflow accepts ``model`` as a path to a bundle from `clibd export` or an already loaded
:class:`~clibd_cli.bundle.ModelBundle` (load one once and pass it to several runs).  A training
checkpoint becomes a bundle through the exporter (:mod:`clibd_export`, which needs the ``train`` and
``export`` extras): to a folder with :func:`export_model` (`clibd export`), or to a temporary folder that
lives as long as its bundle with :func:`checkpoint_bundle` (`clibd evaluate --model RUN/best.pt`).
Nothing here imports onnxruntime or torch until a model is actually loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clibd_cli.errors import ClibdError
from clibd_cli.workflow import ReadOptions, read_records

if TYPE_CHECKING:
    import tempfile

    from clibd_cli.bundle import ModelBundle
    from clibd_export.onnx import Samples

SAMPLES = 64  # real inputs per modality for the exporter's parity and int8 checks


def load_model(model: str | Path | ModelBundle | None, device: str = "auto", int8: bool = False,
               threads: int | None = None) -> ModelBundle | None:
    """``model`` loaded (a bundle folder, or the name of a model `clibd models get` installed) or as given
    (a loaded bundle, or None for "no model")."""
    if model is None:
        return None
    from clibd_cli.bundle import ModelBundle

    if isinstance(model, ModelBundle):
        return model
    from clibd_cli.model_cache import resolve_model

    return ModelBundle.load(resolve_model(model), device=device, int8=int8, threads=threads)


def checkpoint_bundle(checkpoint: str | Path, *, device: str = "auto", trust_checkpoint: bool = False,
                      ) -> tuple[ModelBundle, tempfile.TemporaryDirectory]:
    """A training checkpoint exported to a temporary bundle: (the bundle, the folder holding it).

    The folder is deleted when the returned TemporaryDirectory is, so keep it as long as the bundle.
    """
    import tempfile

    from clibd_cli.bundle import ModelBundle
    from clibd_export.onnx import export_bundle, load_checkpoint

    source = load_checkpoint(Path(checkpoint), trust=trust_checkpoint)
    scratch = tempfile.TemporaryDirectory(prefix="clibd-eval-")
    folder = Path(scratch.name) / "bundle"
    export_bundle(source, folder)
    return ModelBundle.load(folder, device=device), scratch


def export_samples(images: Sequence[str] | None, barcodes: Path | None) -> Samples:
    """Real photos, barcodes and taxonomy strings (up to :data:`SAMPLES` each) for the exporter's checks."""
    from clibd_export.onnx import Samples

    samples = Samples()
    if images:
        from clibd_cli.photos import collect_photos

        found, _ = collect_photos(images)
        samples.images = [photo.path for photo in found[:SAMPLES]]
    if barcodes is not None:
        from clibd_cli.sequences import taxonomy_text

        records = read_records([barcodes], ReadOptions(min_length=0)).records[:SAMPLES]
        samples.barcodes = [r.sequence for r in records if r.sequence]
        samples.texts = [taxonomy_text(r.taxonomy) for r in records if r.has_taxonomy]
    return samples


def export_model(checkpoint: str | Path, output: str | Path, *, int8: bool = False, from_official: bool = False,
                 text_tokenizer: str | None = None, sample_images: Sequence[str] | None = None,
                 sample_barcodes: Path | None = None, name: str | None = None, force: bool = False,
                 trust_checkpoint: bool = False, progress: Callable[[str], None] | None = None,
                 source_info: dict[str, Any] | None = None, fp16: bool = False) -> dict[str, Any]:
    """Write a model bundle from a `clibd train` checkpoint, or a published CLIBD one (``from_official``).

    Returns the bundle's manifest (modalities, fingerprint, ONNX-vs-PyTorch parity, int8 and fp16 agreement
    and the variants not kept).  ``progress`` hears each step ("exporting image encoder", …).
    ``source_info`` is added to the manifest's ``source`` (e.g. the hub repository a checkpoint came from).
    """
    from clibd_export.onnx import ExportSource, export_bundle, load_checkpoint

    checkpoint = Path(checkpoint)
    samples = export_samples(sample_images, sample_barcodes)
    if from_official:
        from clibd_export.official import load_official

        if trust_checkpoint:  # official checkpoints are plain state dicts, always read as tensors only
            raise ClibdError("--trust-checkpoint applies to 'clibd train' checkpoints; --from-official reads "
                             "published checkpoints as tensors only and needs no trust. Drop one of the two.")

        imported = load_official(checkpoint, text_tokenizer)
        source = ExportSource(imported.model, imported.preprocessing, imported.text_tokenizer, checkpoint,
                              imported.source_sha256, "official")
    else:
        source = load_checkpoint(checkpoint, trust=trust_checkpoint)
    source.info.update(source_info or {})
    return export_bundle(source, output, int8=int8, samples=samples, force=force, name=name, progress=progress,
                         fp16=fp16)
