"""The published CLIBD checkpoints `clibd models get` can install, by name.

Why a catalogue: a user should not need to know that the paper's main model is
``ckpt/bioscan_clip/ver_1_0/bioscan_1m/image_dna_text_4gpu/best.pth`` in the Hugging Face repository
``bioscan-ml/clibd`` to get it.  The repository and path layout are those of CLIBD_REFERENCE.md
("Official checkpoint layout"); the ``<dataset>/<name>`` parts are the official configs'
``dataset``/``model_output_name`` (``bioscan_1m``/``bioscan_5m``, ``image_dna_text_4gpu``/``image_dna_4gpu``).
The image + text checkpoints are published too, but their paths are not known here, so they are not listed.
``bioclip`` is not CLIBD: BioCLIP (``imageomics/bioclip``, kind ``open_clip``) knows photos and taxon names and
no barcodes, for a user without CLIBD weights (:mod:`clibd_export.open_clip` converts it).

``CLIBD_MODEL_CATALOGUE`` names a JSON file that replaces the built-in list (same fields as
:class:`PublishedModel`, as ``{"models": [...]}``): for a lab's mirror on its own hub repository, and for the
tests, which point a name at a small checkpoint in a local hub cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from clibd_cli.errors import InputError

CATALOGUE_ENV = "CLIBD_MODEL_CATALOGUE"
OFFICIAL_REPO = "bioscan-ml/clibd"
TEXT_TOKENIZER_REPO = "prajjwal1/bert-small"  # the official text encoder's WordPiece vocabulary
MODALITY_WORDS = {"image": "photos", "dna": "barcodes", "text": "taxonomy text"}


@dataclass(frozen=True)
class PublishedModel:
    """One installable checkpoint: where it is on the hub and what it can embed."""

    name: str
    description: str  # what it was trained on, in a few words
    modalities: tuple[str, ...]  # subset of image, dna, text
    repo: str
    filename: str
    revision: str = "main"
    text_tokenizer_repo: str = TEXT_TOKENIZER_REPO  # fetched only when "text" is in modalities
    kind: str = "official"  # the importer: "official" (a CLIBD best.pth) or "open_clip" (an open_clip snapshot)

    @property
    def url(self) -> str:
        """The file's download address, for a user who must fetch it by hand."""
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{self.filename}"

    @property
    def knows(self) -> str:
        return ", ".join(MODALITY_WORDS[m] for m in self.modalities)


def _official(name: str, dataset: str, run: str, modalities: tuple[str, ...], description: str) -> PublishedModel:
    return PublishedModel(name=name, description=description, modalities=modalities, repo=OFFICIAL_REPO,
                          filename=f"ckpt/bioscan_clip/ver_1_0/{dataset}/{run}/best.pth")


BUILT_IN: tuple[PublishedModel, ...] = (
    _official("clibd-bioscan1m", "bioscan_1m", "image_dna_text_4gpu", ("image", "dna", "text"),
              "CLIBD image+DNA+text, trained on BIOSCAN-1M insects (the paper's main model)"),
    _official("clibd-bioscan1m-image-dna", "bioscan_1m", "image_dna_4gpu", ("image", "dna"),
              "CLIBD image+DNA, trained on BIOSCAN-1M insects"),
    _official("clibd-bioscan5m", "bioscan_5m", "image_dna_text_4gpu", ("image", "dna", "text"),
              "CLIBD image+DNA+text, trained on BIOSCAN-5M insects"),
    _official("clibd-bioscan5m-image-dna", "bioscan_5m", "image_dna_4gpu", ("image", "dna"),
              "CLIBD image+DNA, trained on BIOSCAN-5M insects"),
)

BIOCLIP = PublishedModel(
    name="bioclip", modalities=("image", "text"), repo="imageomics/bioclip",
    filename="open_clip_pytorch_model.bin", kind="open_clip",
    description="BioCLIP (Imageomics; open_clip ViT-B/16, what pybioclip runs), trained on TreeOfLife-10M "
                "photos and taxon names; no barcodes")

BUILT_IN = (*BUILT_IN, BIOCLIP)

_MODALITIES = ("image", "dna", "text")
_KINDS = ("official", "open_clip")


def catalogue() -> tuple[PublishedModel, ...]:
    """The built-in list, or the one in the JSON file ``$CLIBD_MODEL_CATALOGUE`` names."""
    path = os.environ.get(CATALOGUE_ENV, "").strip()
    return read_catalogue(Path(path).expanduser()) if path else BUILT_IN


def find(name: str) -> PublishedModel | None:
    return next((model for model in catalogue() if model.name == name), None)


def read_catalogue(path: Path) -> tuple[PublishedModel, ...]:
    """Entries of a catalogue file, each checked, so a typo is one line naming the file and the entry."""
    remedy = f'give a JSON file {{"models": [{{"name", "description", "modalities", "repo", "filename"}}, …]}} or ' \
             f"unset {CATALOGUE_ENV}."
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path} (from {CATALOGUE_ENV}): cannot be read ({exc.strerror or exc}); {remedy}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} (from {CATALOGUE_ENV}): not valid JSON ({exc}); {remedy}") from exc
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{path} (from {CATALOGUE_ENV}): no 'models' list; {remedy}")
    known = {f.name for f in fields(PublishedModel)}
    out: list[PublishedModel] = []
    for number, entry in enumerate(entries, 1):
        where = f"{path} (from {CATALOGUE_ENV}), model {number}"
        if not isinstance(entry, dict) or not {"name", "repo", "filename", "modalities"} <= entry.keys():
            raise InputError(f"{where}: needs name, repo, filename and modalities; {remedy}")
        if extra := sorted(entry.keys() - known):
            raise InputError(f"{where}: unknown field(s) {', '.join(extra)}; use only {', '.join(sorted(known))}.")
        modalities = tuple(entry["modalities"]) if isinstance(entry["modalities"], list) else ()
        if not modalities or not set(modalities) <= set(_MODALITIES):
            raise InputError(f"{where}: modalities must be a non-empty list of {', '.join(_MODALITIES)}.")
        if entry.get("kind", "official") not in _KINDS:
            raise InputError(f"{where}: kind {entry['kind']!r} is not one of {', '.join(_KINDS)}.")
        if not _valid_name(str(entry["name"])):
            raise InputError(f"{where}: name {entry['name']!r} must be letters, digits, '-', '_' or '.' "
                             "(it becomes a folder name).")
        out.append(PublishedModel(**{**entry, "modalities": modalities, "description": entry.get("description", "")}))
    return tuple(out)


def _valid_name(name: str) -> bool:
    return bool(name) and name[0] != "." and all(c.isalnum() or c in "-_." for c in name)
