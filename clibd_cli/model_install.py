"""`clibd models get NAME`: fetch a published checkpoint from the Hugging Face hub, import it, verify it, install it.

Why one command: a real photo model otherwise takes a hand download, a tokenizer download and an export with
the right flags.  The steps are the ones a user would do by hand, with the same guarantees:

* the files come through ``huggingface_hub`` (``hf_hub_download``) into the Hugging Face cache
  (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read at call time); the cache is
  tried first, and with ``HF_HUB_OFFLINE=1`` nothing else is tried;
* the checkpoint (a pickle-based ``.pth``) is read by the official importer as tensors only
  (``torch.load(weights_only=True)``): a file that holds code is refused, never run;
* the export checks ONNX against PyTorch (cosine ≥ 0.9999, or nothing is written), and the finished bundle's
  checksums are verified before it replaces anything in ``<cache>/models/NAME`` (:mod:`clibd_cli.model_cache`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clibd_cli.errors import ClibdError, InputError
from clibd_cli.model_cache import installed_path, models_dir
from clibd_cli.published import PublishedModel, catalogue, find

# What converting needs beyond `pip install clibd`: PyTorch and the encoders' libraries, and ONNX to write.
_NEEDED = ("torch", "timm", "transformers", "huggingface_hub", "onnx", "onnxscript")
_NEEDED_OPEN_CLIP = ("torch", "open_clip", "safetensors", "huggingface_hub", "onnx", "onnxscript")
_EXTRAS = "train,export"
_TOKENIZER_FILE = "vocab.txt"  # the official text encoder's WordPiece vocabulary (BERT-small has no tokenizer.json)


@dataclass(frozen=True)
class Installed:
    """The outcome of :func:`install_model`."""

    name: str
    path: Path
    manifest: dict[str, Any]
    already: bool  # it was installed before and not replaced


@dataclass(frozen=True)
class HubFile:
    """One file wanted from the hub (for fetching it, and for saying how to fetch it by hand)."""

    repo: str
    filename: str
    revision: str = "main"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{self.filename}"


def install_model(name: str, *, force: bool = False, int8: bool = False, sample_images: Sequence[str] | None = None,
                  sample_barcodes: Path | None = None, progress: Callable[[str], None] | None = None) -> Installed:
    """Install the published model ``name`` (see :func:`clibd_cli.published.catalogue`) as a bundle.

    An installed model is kept unless ``force``.  Raises :class:`InputError` (one line) for an unknown
    name, missing extras, or files that are neither cached nor downloadable.
    """
    say = progress or (lambda _message: None)
    entry = find(name)
    if entry is None:
        names = ", ".join(m.name for m in catalogue())
        raise InputError(f"{name}: not a published model; the names are {names} (see 'clibd models list').")
    existing = installed_path(name)
    if existing is not None and not force:
        from clibd_cli.bundle import BundleError, ModelBundle

        try:
            bundle = ModelBundle.load(existing, device="cpu")
        except BundleError as exc:
            raise BundleError(f"{exc} To install it again: clibd models get {name} --force") from exc
        return Installed(name, existing, bundle.manifest, already=True)
    _require_extras(entry)
    if entry.kind == "open_clip":
        return _install_open_clip(entry, int8, sample_images, sample_barcodes, say)

    wanted = [HubFile(entry.repo, entry.filename, entry.revision)]
    if "text" in entry.modalities:
        wanted.append(HubFile(entry.text_tokenizer_repo, _TOKENIZER_FILE))
    paths = fetch(wanted, entry, say)
    checkpoint = paths[0]
    tokenizer = paths[1].parent if len(paths) > 1 else None
    info = {"hub_repo": entry.repo, "hub_file": entry.filename, "hub_revision": _snapshot_of(checkpoint)}
    manifest = _export_and_install(entry, checkpoint, tokenizer, info, int8, sample_images, sample_barcodes, say)
    return Installed(name, models_dir() / name, manifest, already=False)


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now."""
    if value := os.environ.get("HF_HUB_CACHE", "").strip():
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME", "").strip():
        return Path(value).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def fetch(files: Sequence[HubFile], entry: PublishedModel,
          say: Callable[[str], None] = lambda _message: None) -> list[Path]:
    """Local paths of ``files``: from the hub cache, else downloaded (unless offline), else one clear line.

    Nothing is printed before a failure, so a user without the files sees exactly one line saying what to get.
    """
    from huggingface_hub import hf_hub_download

    from clibd_training.text_tokenizer import hub_reachable, offline_mode

    cache = hub_cache()
    found: dict[HubFile, Path] = {}
    for file in files:
        try:
            found[file] = Path(hf_hub_download(file.repo, file.filename, revision=file.revision, cache_dir=cache,
                                               local_files_only=True))
        except (OSError, ValueError):
            continue
    missing = [f for f in files if f not in found]
    if not missing:
        return [found[f] for f in files]
    if offline_mode():
        raise InputError(missing_line(entry, missing, cache, "HF_HUB_OFFLINE is set"))
    if not hub_reachable():
        raise InputError(missing_line(entry, missing, cache, "huggingface.co cannot be reached"))
    for file in missing:
        say(f"downloading {file.url}")
        try:
            found[file] = Path(hf_hub_download(file.repo, file.filename, revision=file.revision, cache_dir=cache))
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(missing_line(entry, [file], cache, f"the download failed: {reason}")) from exc
    return [found[f] for f in files]


def missing_line(entry: PublishedModel, missing: Sequence[HubFile], cache: Path, why: str) -> str:
    """One line: which files, where they were looked for, and both ways to provide them by hand."""
    urls = ", ".join(f.url for f in missing)
    commands = " and ".join(f"`hf download {f.repo} {f.filename} --revision {f.revision}`" for f in missing)
    if entry.kind == "open_clip":
        return (f"{entry.name}: {urls} {'is' if len(missing) == 1 else 'are'} not in the Hugging Face cache "
                f"({cache}) and {why}. On a machine with network access run {commands} and copy its Hugging Face "
                f"cache folder to {cache} (or set HF_HUB_CACHE to the copy), then rerun 'clibd models get "
                f"{entry.name}'.")
    tokenizer = f" --text-tokenizer FOLDER_WITH_{_TOKENIZER_FILE}" if "text" in entry.modalities else ""
    return (f"{entry.name}: {urls} {'is' if len(missing) == 1 else 'are'} not in the Hugging Face cache ({cache}) "
            f"and {why}. On a machine with network access run {commands} and copy its Hugging Face cache folder "
            f"to {cache} (or set HF_HUB_CACHE to the copy), then rerun; or download the file(s) and run "
            f"`clibd export best.pth --from-official{tokenizer} -o DIR` and use --model DIR.")


def _require_extras(entry: PublishedModel | None = None) -> None:
    """Fail before a long download when the libraries that convert the checkpoint are missing."""
    import importlib

    needed = _NEEDED_OPEN_CLIP if entry is not None and entry.kind == "open_clip" else _NEEDED
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InputError(f"'clibd models get' converts the checkpoint with PyTorch and writes ONNX, and "
                             f"{module} is not installed ({exc}). Install the 'train' and 'export' extras: "
                             f"pip install 'clibd[{_EXTRAS}]' (in a clone: pip install -e '.[{_EXTRAS}]').") from None


def _snapshot_of(path: Path) -> str | None:
    """The hub commit a cached file belongs to (``…/snapshots/<commit>/<file>``), or None outside a cache."""
    parts = path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts):
            return parts[index + 1]
    return None


def _export_and_install(entry: PublishedModel, checkpoint: Path, tokenizer: Path | None, info: dict[str, Any],
                        int8: bool, sample_images: Sequence[str] | None, sample_barcodes: Path | None,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """Export into a hidden staging folder, verify it, then swap it into ``models/NAME`` in one rename."""
    from clibd_cli.models import export_model

    def export(staging: Path) -> dict[str, Any]:
        return export_model(checkpoint, staging, int8=int8, from_official=True,
                            text_tokenizer=str(tokenizer) if tokenizer else None, sample_images=sample_images,
                            sample_barcodes=sample_barcodes, name=entry.name, force=True, progress=say,
                            source_info=info)

    return _verified_install(entry, export, entry.filename, say)


def _verified_install(entry: PublishedModel, export: Callable[[Path], dict[str, Any]], filename: str,
                      say: Callable[[str], None]) -> dict[str, Any]:
    """``export`` into a hidden staging folder, verify the bundle, then swap it into ``models/NAME``."""
    from clibd_cli.bundle import ModelBundle, verify_bundle

    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / entry.name
    staging = root / f".{entry.name}.incoming-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = export(staging)
        say("verifying the bundle")
        bundle = ModelBundle.load(staging, device="cpu")
        verify_bundle(staging, bundle.spec, checksums=True)
        lacking = [m for m in entry.modalities if m not in bundle.modalities]
        if lacking:
            raise ClibdError(f"{entry.name}: {filename} has no {', '.join(lacking)} encoder although the "
                             f"catalogue says it does; nothing was installed.")
        if target.exists():
            old = root / f".{entry.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _install_open_clip(entry: PublishedModel, int8: bool, sample_images: Sequence[str] | None,
                       sample_barcodes: Path | None, say: Callable[[str], None]) -> Installed:
    """An open_clip snapshot (BioCLIP): its config and weights, converted by :mod:`clibd_export.open_clip`.

    Weights already cached as ``open_clip_model.safetensors`` are preferred (no pickle at all); otherwise the
    catalogue's file (BioCLIP publishes ``open_clip_pytorch_model.bin``), read as tensors only.
    """
    from huggingface_hub import hf_hub_download

    from clibd_export.open_clip import CONFIG_FILE, WEIGHT_FILES

    weights = entry.filename
    for candidate in WEIGHT_FILES:
        if candidate != entry.filename:
            try:
                hf_hub_download(entry.repo, candidate, revision=entry.revision, cache_dir=hub_cache(),
                                local_files_only=True)
            except (OSError, ValueError):
                continue
            weights = candidate
            break
    config, checkpoint = fetch([HubFile(entry.repo, CONFIG_FILE, entry.revision),
                                HubFile(entry.repo, weights, entry.revision)], entry, say)
    info = {"hub_repo": entry.repo, "hub_file": weights, "hub_revision": _snapshot_of(checkpoint)}

    def export(staging: Path) -> dict[str, Any]:
        from clibd_cli.models import export_samples
        from clibd_export.open_clip import export_open_clip

        return export_open_clip(config, checkpoint, staging, int8=int8, force=True, name=entry.name,
                                samples=export_samples(sample_images, sample_barcodes), progress=say,
                                source_info=info)

    manifest = _verified_install(entry, export, weights, say)
    return Installed(entry.name, models_dir() / entry.name, manifest, already=False)
