"""Typed manifests: ``index.json`` (a reference index) and ``clibd-model.json`` (a model bundle).

Both files are read as JSON, checked against their own ``manifest_sha256`` (:mod:`clibd_cli.checksums`)
and then validated here, so a value of the wrong type or a missing field is refused on load with one
line naming the file and the field (``parts.dna.counts.records``) instead of failing later as a
``KeyError`` or a ``TypeError`` deep inside a search.  The checksum only says the file is what clibd
wrote; these models say that what it wrote is complete, which also covers format-3 indexes (no checksum)
and manifests re-sealed after an edit.

Validation is strict: a count must be a JSON integer and a threshold a JSON number, not a string that
looks like one.  Nothing is coerced, so the raw dict (what callers read and what is written back) holds
exactly the values the typed object holds.  The models are only ever *read*: writers still write dicts,
so the on-disk JSON (keys, values, order) and its checksum are unchanged.  Extra keys are allowed
everywhere, for older and newer writers; every field the runtime reads is typed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, ValidationError, model_validator, with_config
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict on Python < 3.12

from clibd_cli.errors import InputError
from clibd_cli.schema import MODALITIES

Modality = Literal[MODALITIES]  # "image", "dna", "text" (defined once, in clibd_cli.schema)
OPEN = ConfigDict(extra="allow", strict=True, defer_build=True)


class _Open(BaseModel):
    """Extra keys kept (older and newer writers), declared fields strictly typed."""

    model_config = OPEN


# ------------------------------------------------------------------------------------ index.json


class EncoderDescription(_Open):
    """What turned a part's references into vectors (``parts.<modality>.encoder``).

    A query must be embedded by the same encoder (same ``fingerprint``), so the index names it: a
    weight-free encoder (the k-mer profile) is rebuilt from this description, a model bundle is named
    so that the user can be told which ``--model`` to pass.
    """

    name: str
    """Encoder kind: ``kmer-profile`` (rebuilt from ``k``, ``sqrt``, ``max_len``) or ``clibd-model``."""
    modality: Modality = "dna"
    """What the encoder embeds; absent in indexes that knew only barcodes."""
    dim: PositiveInt
    """Vector length: the graph and vector files are read with it."""
    fingerprint: str
    """The embedding space; queries from an encoder with another fingerprint are refused."""
    default_thresholds: dict[str, float] = {}
    """The encoder's own per-rank cut-offs, the floors calibration starts from."""
    model: str | None = None
    """The bundle's name (model encoders), quoted when the index is opened without that ``--model``."""
    k: PositiveInt | None = None
    """k-mer length of a ``kmer-profile`` encoder."""
    sqrt: bool | None = None
    """Whether a ``kmer-profile`` encoder takes square roots of its k-mer counts."""
    max_len: PositiveInt | None = None
    """Barcode length a ``kmer-profile`` encoder reads (its default, 2000, when absent)."""

    @model_validator(mode="after")
    def _kmer_parameters(self) -> EncoderDescription:
        if self.name == "kmer-profile" and (self.k is None or self.sqrt is None):
            raise ValueError("a kmer-profile encoder needs k and sqrt to be rebuilt")
        return self


class Calibration(_Open):
    """How thresholds were set (``parts.<modality>.calibration``): a report, shown with the thresholds.

    Only ``method`` is read (``build-index`` and ``match`` print it); the rest is the calibration report
    (target precision, per-rank fits) kept for the user.
    """

    method: str | None = None
    """Human-readable name of the method, e.g. ``conventional identity cut-offs``."""


@with_config(OPEN)
class RankThresholds(TypedDict):
    """One threshold per rank (a plain dict once validated): cross-modality thresholds are always complete."""

    order: float
    family: float
    genus: float
    species: float


class LeadRule(_Open):
    """A rank is also called from ``threshold`` when its winner's best hit is at least ``lead`` (identity,
    fraction) above the best verified candidate of any other taxon at that rank."""

    lead: float
    threshold: float
    within_spread: bool = False
    """Only where the winner's identity also reaches its taxon's spread (``spreads``)."""


class CrossCalibration(_Open):
    """Thresholds for queries of another modality (``parts.<modality>.cross_thresholds.<query modality>``).

    Cosines between modalities live on another scale than within one, so each query modality has its own.
    """

    thresholds: RankThresholds
    """Per rank, the similarity at which a call is made."""
    calibration: Calibration
    """The report of the calibration that set them."""


class ShortReadCalibration(CrossCalibration):
    """Thresholds for barcode queries whose top hit overlaps fewer than ``below_overlap`` columns (and no fewer
    than the next shorter set's), one entry of ``parts.dna.short_reads``, fitted like the part's own on
    ``window``-bp stretches of the calibration queries: identity over 100 or 200 columns scatters more than
    over 658, so a short read needs a higher one."""

    window: PositiveInt
    """Length of the calibration queries' stretches (bp)."""
    leads: dict[str, LeadRule] = {}
    """Lead rules, as for the part's own."""
    below_overlap: PositiveInt
    """Queries whose top hit's overlap is shorter than this use these thresholds."""


class Counts(_Open):
    """How much a part holds (``parts.<modality>.counts``): checked against its files on load, printed."""

    records: NonNegativeInt
    """Rows of this modality in records.sqlite (a mismatch means the database is not this index's)."""
    vectors: NonNegativeInt
    """Distinct vectors in the graph/vector file (identical inputs share one)."""
    order: NonNegativeInt
    """Distinct orders among the records, and likewise for the other ranks."""
    family: NonNegativeInt
    genus: NonNegativeInt
    species: NonNegativeInt


class IndexPart(_Open):
    """One modality of an index, as :class:`clibd_cli.index.ReferenceIndex` holds it.

    In memory (an index built and not saved yet) a part has no ``file``; :class:`StoredPart` is the
    same entry as ``index.json`` stores it.
    """

    encoder: EncoderDescription
    """The encoder of this part's vectors."""
    thresholds: dict[str, float]
    """Per rank, the score at which queries of this modality are called (identity for barcodes)."""
    calibration: Calibration
    """How ``thresholds`` were set."""
    leads: dict[str, LeadRule] = {}
    """Barcodes: per rank, a second, lower threshold for calls far enough ahead of any other taxon; calibrated
    with ``thresholds`` (absent: none, as in indexes built before lead rules)."""
    spreads: dict[str, dict[str, float]] = {}
    """Barcodes: per rank (genus, family), per taxon (``order|family|genus``), the lowest identity found between
    its members of different taxa one rank below: how far its own species (or genera) stand apart.  Absent
    for taxa with one such member, and in indexes built before spreads."""
    cross_thresholds: dict[Modality, CrossCalibration] = {}
    """Thresholds for queries of other modalities (e.g. photos against barcodes)."""
    short_reads: list[ShortReadCalibration] | ShortReadCalibration | None = None
    """Barcodes: thresholds for queries with a short overlap, one set per window they were fitted on (a single
    set in indexes built before there were several; absent in indexes built before short-read thresholds)."""

    counts: Counts
    """Records, distinct vectors and taxa of this part."""
    fingerprint: str
    """Fingerprint of the encoder and the record ids: outputs quote it to say which reference answered."""
    file: str | None = None
    """The graph (``.hnsw``) or vector (``.npy``) file, relative to the index folder."""

    @property
    def short_read_sets(self) -> list[ShortReadCalibration]:
        """``short_reads`` as a list, whichever form the index holds."""
        short = self.short_reads
        return [] if short is None else [short] if isinstance(short, ShortReadCalibration) else list(short)
    search: str | None = None
    """The engine the part was built for: ``hnswlib`` or ``exact`` (absent before format 4)."""
    sha256: str | None = None
    """sha256 of ``file``, checked before the file is opened (absent before format 4)."""
    words: str | None = None
    """Barcodes: the 12-mer word table that proposes candidates for reads (:mod:`clibd_cli.anchors`), relative to
    the index folder (absent in indexes built before it was saved: built on first use)."""
    words_sha256: str | None = None
    """sha256 of ``words``, checked before the table is mapped."""


class StoredPart(IndexPart):
    """A part as ``index.json`` stores it: its vectors are in a file."""

    file: str


class HnswParameters(_Open):
    """The HNSW graph parameters the index was built with (``hnsw``), recorded for the user."""

    M: PositiveInt
    ef_construction: PositiveInt
    ef_search: PositiveInt
    exact_max: NonNegativeInt | None = None


class IndexManifest(_Open):
    """``index.json``: global keys and one :class:`StoredPart` per modality.

    Format 4 keeps data in generation folders (``records`` and each part's ``file`` name them) and seals
    the manifest with ``manifest_sha256``; format 3 (flat layout, no checksums) is still read.
    """

    format_version: int
    """Layout version; checked (3 or 4) before the rest is validated."""
    clibd_version: str | None = None
    """The clibd that wrote the index."""
    metric: str | None = None
    """Similarity used (``cosine``)."""
    hnsw: HnswParameters | None = None
    """Graph parameters."""
    records: str | None = None
    """The records database, relative to the folder (format 3: ``records.sqlite`` beside the manifest)."""
    records_sha256: str | None = None
    """sha256 of the records database (format 4)."""
    parts: dict[Modality, StoredPart]
    """One entry per modality held: barcodes, photos and/or taxonomy strings."""
    manifest_sha256: str | None = None
    """sha256 of the manifest's own content (format 4; checked before validation)."""


# ------------------------------------------------------------------------------- clibd-model.json


class Int8Variant(_Open):
    """An int8-quantised copy of an encoder (``modalities.<m>.int8``), run with ``--int8``."""

    file: str
    """ONNX file, relative to the bundle folder."""
    sha256: str
    """Its checksum, verified before first use."""
    agreement: dict[str, Any] | None = None
    """Measured agreement with fp32 (cosines, neighbour agreement), shown by ``clibd export``."""


class Fp16Variant(_Open):
    """A float16 copy of an encoder (``modalities.<m>.fp16``), float32 inputs and outputs kept; run
    automatically when the session is on CUDA (on a CPU fp16 is slower than fp32, so fp32 runs there)."""

    file: str
    """ONNX file, relative to the bundle folder."""
    sha256: str
    """Its checksum, verified before first use."""
    agreement: dict[str, Any] | None = None
    """Measured agreement with fp32 (cosines, neighbour agreement), shown by ``clibd export``."""


class EncoderFile(_Open):
    """One encoder of a bundle (``modalities.<m>``): an ONNX file and, optionally, int8 and fp16 variants."""

    file: str
    """ONNX file, relative to the bundle folder."""
    sha256: str
    """Its checksum, verified before first use."""
    int8: Int8Variant | None = None
    """The int8 variant kept by the export gate, if any."""
    fp16: Fp16Variant | None = None
    """The fp16 variant kept by the export gate, if any (``clibd export --fp16``)."""


@with_config(OPEN)
class ImagePreprocessingSpec(TypedDict, total=False):
    """How photos are made into pixels (``modalities.image.preprocessing``); an absent key takes
    :class:`clibd_cli.preprocess.ImagePreprocessing`'s default, which also checks ranges and refuses
    unknown options."""

    size: int
    resize: int
    crop: str
    mean: list[float] | None
    std: list[float] | None
    interpolation: str


class ImageEncoder(EncoderFile):
    """The photo encoder: pixels ``[batch, 3, size, size]`` → embeddings."""

    preprocessing: ImagePreprocessingSpec
    """The training preprocessing, repeated at inference."""


@with_config(OPEN)
class DnaTokenizerSpec(TypedDict, total=False):
    """The k-mer tokenizer of the barcode encoder (``modalities.dna.tokenizer``), given as is to
    :class:`clibd_cli.tokenizer.TokenizerConfig` (absent keys take its defaults)."""

    k: int
    layout: str
    max_len: int


class DnaEncoder(EncoderFile):
    """The barcode encoder: k-mer token ids → embeddings."""

    tokenizer: DnaTokenizerSpec
    """The tokenizer it was trained with."""


class TextTokenizerSpec(_Open):
    """The tokenizer of the text encoder (``modalities.text.tokenizer``): WordPiece (CLIBD) or CLIP's
    byte-level BPE (open_clip models such as BioCLIP), both run from a ``tokenizers`` file."""

    kind: Literal["wordpiece", "clip_bpe"] = "wordpiece"
    """``wordpiece`` (absent in older bundles) or ``clip_bpe``: open_clip's SimpleTokenizer, whose text
    is cleaned first by :func:`clibd_cli.tokenizer.clip_clean`."""

    tokenizer_json: str
    """The ``tokenizers`` file, relative to the bundle folder."""
    files: dict[str, str] = {}
    """Every tokenizer file with its sha256, verified like the ONNX files."""
    max_len: PositiveInt
    """Texts are truncated and padded to this many tokens."""
    pad_id: NonNegativeInt
    """Padding token id."""
    pad_token: str
    """Padding token."""


class TextEncoder(EncoderFile):
    """The taxonomy-text encoder: token ids → embeddings."""

    tokenizer: TextTokenizerSpec
    """Its tokenizer."""
    prompts: list[str] | None = None
    """Sentences around the taxonomy string (``{}`` marks where it goes): each is embedded and the unit
    embeddings averaged (BioCLIP: the 80 OpenAI ImageNet templates, as pybioclip does); absent: the
    string itself."""
    drop_repeated_words: bool = False
    """Say a genus repeated before its binomial species name once (:func:`clibd_cli.tokenizer.drop_repeated_words`)."""

    @model_validator(mode="after")
    def _prompts(self) -> TextEncoder:
        if self.prompts is not None:
            if not self.prompts:
                raise ValueError("prompts must not be empty (leave the key out for no prompts)")
            bad = next((p for p in self.prompts if p.count("{}") != 1), None)
            if bad is not None:
                raise ValueError(f"prompt {bad!r} must hold '{{}}' exactly once (where the taxonomy goes)")
        return self


class BundleModalities(_Open):
    """The encoders a bundle holds (``modalities``); modalities this clibd does not know are kept
    (``EncoderFile``), so their files are still verified."""

    __pydantic_extra__: dict[str, EncoderFile]

    image: ImageEncoder | None = None
    dna: DnaEncoder | None = None
    text: TextEncoder | None = None

    def get(self, modality: str) -> EncoderFile | None:
        """The encoder of ``modality``, or None."""
        if modality in type(self).model_fields:
            return getattr(self, modality)
        return (self.__pydantic_extra__ or {}).get(modality)

    def items(self) -> list[tuple[str, EncoderFile]]:
        """(modality, encoder) pairs: image, dna, text, then modalities this clibd does not know."""
        names = [*type(self).model_fields, *(self.__pydantic_extra__ or {})]
        return [(m, spec) for m in names if (spec := self.get(m)) is not None]


class BundleManifest(_Open):
    """``clibd-model.json``: an exported model (format 2: sealed with ``manifest_sha256``)."""

    format: str
    """``clibd-model``; checked with the version before the rest is validated."""
    format_version: int
    """2."""
    name: str | None = None
    """Model name, quoted in outputs and in indexes built with it (default: the folder name)."""
    embed_dim: PositiveInt
    """Length of every embedding the bundle makes."""
    fingerprint: str
    """The embedding space, shared by all modalities and precisions; indexes record it."""
    modalities: BundleModalities
    """The encoders."""
    parity: dict[str, Any] | None = None
    """ONNX-vs-PyTorch agreement measured by ``clibd export``, shown after export."""
    int8_rejected: dict[str, Any] = {}
    """int8 variants the export gate refused, with their agreement and the reason."""
    fp16_rejected: dict[str, Any] = {}
    """fp16 variants the export gate refused, with their agreement and the reason."""
    manifest_sha256: str | None = None
    """sha256 of the manifest's own content, checked before validation."""


# ------------------------------------------------------------------------------------ validating

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any, *, path: Path | str, remedy: str,
              error: type[InputError] = InputError) -> M:
    """``data`` as ``model``, or ``error``: one line naming ``path``, the field, the problem and ``remedy``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {describe(exc)}. {remedy}") from None


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error as a phrase (``field parts.dna.counts.records should be
    a valid integer, not "many"``), counting the others."""
    problems = exc.errors(include_url=False)
    first = problems[0]
    loc = [str(part) for part in first["loc"]]
    msg = str(first["msg"])
    if loc and loc[-1] == "[key]":  # a dict key of the wrong kind, e.g. parts.sound
        loc.pop()
        key = loc.pop() if loc else "?"
        text = f"{'.'.join(loc) or 'the manifest'} has the key {key!r}, which{_should(msg)}"
    else:
        where = f"field {'.'.join(loc)}" if loc else "the manifest"
        if first["type"] == "missing":
            text = f"{where} is missing"
        elif msg.startswith("Input should"):
            text = f"{where}{_should(msg)}, not {_shown(first.get('input'))}"
        else:
            text = f"{where}: {msg.removeprefix('Value error, ')}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return text


def _should(msg: str) -> str:
    return " should" + msg.removeprefix("Input should")


def _shown(value: Any, limit: int = 40) -> str:
    """A value as it looks in the JSON file, shortened."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
