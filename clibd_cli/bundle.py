"""Model bundles: a trained CLIBD model as ONNX files plus a manifest, run with onnxruntime (no torch).

Layout (format version 2; version 1 had no manifest checksum and is refused)::

    BUNDLE/clibd-model.json      manifest: format version, embedding dim, fingerprint of the embedding
                                 space, per modality its ONNX file (+ optional int8 and fp16 variants)
                                 with sha256,
                                 the inputs it expects (image preprocessing, DNA tokenizer, text template
                                 and tokenizer files), the parity report written by `clibd export`, and
                                 `manifest_sha256`: the sha256 of the manifest's own content
    BUNDLE/image.onnx            pixel_values float32 [batch, 3, S, S] → embeddings [batch, dim]
    BUNDLE/dna.onnx              input_ids, attention_mask int64 [batch, length] → embeddings
    BUNDLE/text.onnx             input_ids, attention_mask int64 [batch, length] → embeddings
    BUNDLE/text_tokenizer/       the WordPiece tokenizer the text encoder was trained with (an open_clip
                                 model such as BioCLIP: CLIP's BPE as tokenizer.json; its text.onnx takes
                                 input_ids [batch, 77] only, and the manifest lists the prompts)

Every file is checked against its sha256 when a bundle is loaded: a truncated copy or an edited file
would otherwise give quietly wrong embeddings.  The manifest is checked against its own checksum (an
edited image mean/std or `embed_dim` changes every call just as quietly), then validated against
:class:`clibd_cli.manifests.BundleManifest` (a field of the wrong type or missing is refused in one line
that names it), and every file it names must lie inside the bundle folder (:mod:`clibd_cli.confine`).
The checksum catches edits and damage, not a forger who recomputes it: whoever can rewrite a bundle can
also replace its ONNX files.

All modalities of a bundle share one embedding space and so one *fingerprint*; an index built with a
bundle refuses queries embedded by another one.  int8 variants are approximations of the same space
(their measured agreement is in the manifest), so they carry the same fingerprint.  So are fp16
variants (`clibd export --fp16`): float32 in and out, float16 inside, run automatically when a session
is on CUDA (tensor cores; on a CPU fp16 is slower than fp32, so fp32 runs there).

The preprocessing code (:mod:`clibd_cli.preprocess`, :mod:`clibd_cli.tokenizer`) is the one the trainer
used, so inference sees inputs made exactly as in training.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clibd_cli.atomic import read_json, write_json
from clibd_cli.checksums import MANIFEST_CHECKSUM, manifest_checksum, sha256_file
from clibd_cli.confine import confined
from clibd_cli.errors import ClibdError, InputError
from clibd_cli.preprocess import ImagePreprocessing
from clibd_cli.schema import MODALITIES
from clibd_cli.tokenizer import KmerTokenizer, TokenizerConfig, clip_clean, drop_repeated_words

if TYPE_CHECKING:  # clibd_cli.manifests (pydantic) is imported when a manifest is first read
    from clibd_cli.manifests import BundleManifest, EncoderFile

MANIFEST = "clibd-model.json"
FORMAT = "clibd-model"
FORMAT_VERSION = 2  # 2: the manifest carries MANIFEST_CHECKSUM over its own content
TEXT_TEMPLATE = "{order} {family} {genus} {species}"
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEFAULT_BATCH = {"image": 32, "dna": 256, "text": 512}


class BundleError(InputError):
    """A model bundle is missing, of another format version, or fails its checksums."""


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Seal ``manifest`` with its checksum (in place) and write it into the bundle folder."""
    manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
    write_json(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The bundle's manifest, with its format, version and own checksum checked and its fields validated."""
    return _read_manifest(directory)[0]


def _read_manifest(directory: Path) -> tuple[dict[str, Any], BundleManifest]:
    """The manifest as read (what :attr:`ModelBundle.manifest` holds) and typed."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise BundleError(f"{directory}: no such model bundle. Give the folder written by 'clibd export'.")
    if not path.exists():
        raise BundleError(f"{directory}: not a clibd model bundle (no {MANIFEST}). Make one with 'clibd export'.")
    manifest = read_json(path, BundleError, "Re-export or re-copy the bundle.")
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: is not a clibd model manifest (not a JSON object). Re-export the bundle.")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format {manifest.get('format')} version {manifest.get('format_version')}; "
                          f"this clibd reads {FORMAT} version {FORMAT_VERSION}. Re-export the model with it.")
    if manifest.get(MANIFEST_CHECKSUM) != manifest_checksum(manifest):
        raise BundleError(f"{path}: bundle manifest was modified (checksum mismatch with its {MANIFEST_CHECKSUM}), "
                          "so its preprocessing, dimensions or file list cannot be trusted. Re-export the model "
                          "with 'clibd export' or re-copy the bundle.")
    return manifest, _typed(manifest, path)


def _typed(manifest: dict[str, Any], path: Path) -> BundleManifest:
    from clibd_cli.manifests import BundleManifest, validated

    return validated(BundleManifest, manifest, path=path, remedy="Re-export the bundle.", error=BundleError)


def bundle_files(manifest: BundleManifest, modalities: Sequence[str] | None = None) -> dict[str, str]:
    """The files the manifest lists for ``modalities`` (default: all) as relative path → sha256."""
    files: dict[str, str] = {}
    for modality, spec in manifest.modalities.items():
        if modalities is not None and modality not in modalities:
            continue
        files[spec.file] = spec.sha256
        if spec.int8:
            files[spec.int8.file] = spec.int8.sha256
        if spec.fp16:
            files[spec.fp16.file] = spec.fp16.sha256
        files.update(getattr(getattr(spec, "tokenizer", None), "files", {}))  # the text tokenizer's files
    return files


def bundle_path(directory: Path, name: object) -> Path:
    """``directory / name`` for a file named by the manifest, refused when it lies outside the bundle."""
    return confined(directory, name, manifest=MANIFEST, what="bundle", remedy="Re-export or re-copy the bundle.",
                    error=BundleError)


def verify_bundle(directory: Path, manifest: BundleManifest, modalities: Sequence[str] | None = None, *,
                  checksums: bool = True) -> None:
    """Refuse a bundle whose files are missing or (``checksums``) differ from the manifest's sha256."""
    for name, expected in bundle_files(manifest, modalities).items():
        path = bundle_path(directory, name)
        if not path.exists():
            raise BundleError(f"{directory}: {name} is missing. Re-copy the whole bundle folder.")
        if checksums and sha256_file(path) != expected:
            raise BundleError(f"{path}: checksum does not match {MANIFEST} (file changed or truncated). "
                              "Re-copy or re-export the bundle.")


# ---------------------------------------------------------------------------------------------
# onnxruntime sessions


def _ort():
    import onnxruntime

    return onnxruntime


def _preload_cuda(ort) -> None:
    """Load CUDA/cuDNN from the NVIDIA pip wheels (nvidia-*-cu12) when onnxruntime can, quietly."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            preload()


def _gpu_present() -> bool:
    """Cheap test before trying CUDA: on Linux an NVIDIA GPU shows as /dev/nvidia0…; elsewhere assume maybe.

    A failing CUDA attempt costs the time of building the session twice (0.7 s for ViT-B), on every run
    of every command of a laptop that has onnxruntime-gpu but no GPU.
    """
    import sys

    if sys.platform.startswith("linux"):
        return any(Path("/dev").glob("nvidia[0-9]*"))
    return sys.platform != "darwin"


def cuda_possible(device: str) -> bool:
    """Whether a session for ``device`` may end up on CUDA (cheap: no session is made)."""
    if device == "cuda":
        return True
    return device == "auto" and _gpu_present() and "CUDAExecutionProvider" in _ort().get_available_providers()


def run_session(session, feeds: dict[str, np.ndarray], device: str | None) -> np.ndarray:
    """The session's first output for ``feeds`` as a float32 host array.

    On CUDA through IO binding: inputs bound from host memory, the output bound on the GPU and copied
    back once (onnxruntime's plain ``run`` would otherwise stage the output through its own buffers);
    elsewhere a plain ``session.run``.
    """
    if device != "cuda":
        return np.asarray(session.run(None, feeds)[0], dtype=np.float32)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(session.get_outputs()[0].name, "cuda")
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


def make_session(model_path: Path, device: str = "auto", threads: int | None = None):
    """An onnxruntime session on the requested device; returns (session, device actually used).

    ``auto`` takes CUDA only when its provider really initialises (onnxruntime otherwise falls back to
    the CPU behind the caller's back, printing errors), and stays quiet when it does not.
    ``cuda`` insists and fails with a message saying why.
    """
    if device not in DEVICES:
        raise ClibdError(f"--device {device!r}: use one of {', '.join(DEVICES)}.")
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    wants_gpu = device == "cuda" or (device == "auto" and _gpu_present())
    if wants_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        _preload_cuda(ort)
        options.log_severity_level = 4 if device == "auto" else 3
        ort.set_default_logger_severity(4 if device == "auto" else 3)
        try:
            session = ort.InferenceSession(str(model_path), options,
                                           providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if session.get_providers()[0] == "CUDAExecutionProvider":
                return session, "cuda"
        except Exception as exc:
            if device == "cuda":
                raise ClibdError(f"--device cuda: onnxruntime could not start CUDA ({exc}). "
                                 "Use --device cpu, or install onnxruntime-gpu with matching CUDA.") from exc
        finally:
            ort.set_default_logger_severity(2)
            options.log_severity_level = 2
    if device == "cuda":
        raise ClibdError("--device cuda: no usable CUDA GPU for onnxruntime (install onnxruntime-gpu and the "
                         "NVIDIA CUDA 12 wheels, check nvidia-smi), or use --device cpu.")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"]), "cpu"


# ---------------------------------------------------------------------------------------------
# The bundle


@dataclass
class ModelBundle:
    """A loaded, verified model bundle; embeds photos (as preprocessed pixels), barcodes and taxonomy text.

    ``manifest`` is the manifest as a dict (as read, or as `clibd export` is writing it); ``spec`` is the
    same manifest typed (:class:`clibd_cli.manifests.BundleManifest`), validated when the bundle is made.

    ``fp16``: None (default) runs a modality's fp16 variant when there is one and its session is on
    CUDA, and fp32 otherwise; False never runs fp16; True runs it on any device (the export gate measures
    it on the CPU).  ``int8`` takes precedence where the modality has an int8 variant.
    :meth:`precision` says which precision a modality runs in.
    """

    path: Path
    manifest: dict[str, Any]
    device: str = "auto"
    int8: bool = False
    threads: int | None = None
    verify: bool = True
    fp16: bool | None = None
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    _session_device: dict[str, str] = field(default_factory=dict, repr=False)
    _precisions: dict[str, str] = field(default_factory=dict, repr=False)
    _text_tokenizer: Any = field(default=None, repr=False)
    _dna_tokenizer: KmerTokenizer | None = field(default=None, repr=False)
    _verified: set[str] = field(default_factory=set, repr=False)
    used_device: str | None = None
    spec: BundleManifest = field(default=None, repr=False)  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = _typed(self.manifest, Path(self.path) / MANIFEST)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", int8: bool = False, threads: int | None = None,
             verify: bool = True, fp16: bool | None = None) -> ModelBundle:
        """Read a bundle and check that its files are there.

        With ``verify`` (the default) each modality's files are checksummed the first time that modality
        is used, so `clibd classify` hashes the image encoder it runs and not the barcode encoder too
        (hundreds of MB each at paper size: a second of start-up saved).
        """
        path = Path(path)
        manifest, spec = _read_manifest(path)
        verify_bundle(path, spec, checksums=False)
        if device not in DEVICES:
            raise ClibdError(f"--device {device!r}: use one of {', '.join(DEVICES)}.")
        bundle = cls(path, manifest, device, int8, threads, verify=verify, fp16=fp16, spec=spec)
        if int8:
            encoders = spec.modalities.items()
            if not any(encoder.int8 for _, encoder in encoders):
                raise BundleError(f"{path}: has no int8 models. Export with 'clibd export --int8', or drop --int8.")
        return bundle

    # ---------------------------------------------------------------------------------- facts
    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.spec.modalities.get(m) is not None)

    @property
    def dim(self) -> int:
        return self.spec.embed_dim

    @property
    def fingerprint(self) -> str:
        """The embedding space's fingerprint, shared by every modality and precision of this model."""
        return self.spec.fingerprint

    @property
    def name(self) -> str:
        return self.path.name if self.spec.name is None else self.spec.name

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return ImagePreprocessing.from_dict(self._encoder_entry("image").preprocessing)

    def _encoder_entry(self, modality: str) -> Any:
        """The typed manifest entry of ``modality`` (an :class:`clibd_cli.manifests.EncoderFile` subclass)."""
        spec = self.spec.modalities.get(modality)
        if spec is None:
            raise ClibdError(f"model {self.name} has no {modality} encoder (it has: "
                             f"{', '.join(self.modalities)}).")
        return spec

    def check(self, *modalities: str) -> None:
        """Checksum these modalities' files now (commands call it before writing any output)."""
        for modality in modalities:
            self._checked(modality)

    def _checked(self, modality: str) -> EncoderFile:
        """The modality's manifest entry, its files checksummed once before first use."""
        spec = self._encoder_entry(modality)
        if self.verify and modality not in self._verified:
            verify_bundle(self.path, self.spec, [modality])
            self._verified.add(modality)
        return spec

    def precision(self, modality: str) -> str:
        """``int8``, ``fp16`` or ``fp32``: what the modality runs in (once its session exists), or is
        expected to run in (before: fp16 where CUDA may be used, see :func:`cuda_possible`)."""
        if modality in self._precisions:
            return self._precisions[modality]
        spec = self._encoder_entry(modality)
        if self.int8 and spec.int8:
            return "int8"
        if spec.fp16 and (self.fp16 or (self.fp16 is None and cuda_possible(self.device))):
            return "fp16"
        return "fp32"

    def session(self, modality: str):
        if modality not in self._sessions:
            spec = self._checked(modality)
            precision = self.precision(modality)
            file = {"int8": spec.int8, "fp16": spec.fp16}.get(precision) or spec
            session, used = make_session(bundle_path(self.path, file.file), self.device, self.threads)
            if precision == "fp16" and used != "cuda" and not self.fp16:
                # auto found no working CUDA after all: fp32 on the CPU, as if fp16 were absent
                precision = "fp32"
                session, used = make_session(bundle_path(self.path, spec.file), "cpu", self.threads)
            self._sessions[modality], self._session_device[modality] = session, used
            self._precisions[modality] = precision
            self.used_device = used
        return self._sessions[modality]

    def run(self, modality: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One batch through the modality's session (:func:`run_session`: IO binding on CUDA)."""
        session = self.session(modality)
        return run_session(session, feeds, self._session_device[modality])

    # -------------------------------------------------------------------------------- embedding
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed images float32 [n, 3, S, S] → unit embeddings [n, dim]."""
        if len(pixels) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.run("image", {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})

    def dna_tokenizer(self) -> KmerTokenizer:
        """The trainer's k-mer tokenizer with this model's layout (built once: index builds call per batch)."""
        if self._dna_tokenizer is None:
            self._dna_tokenizer = KmerTokenizer(TokenizerConfig(**self._encoder_entry("dna").tokenizer))
        return self._dna_tokenizer

    def embed_dna(self, sequences: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Normalised barcodes → unit embeddings, tokenised by the trainer's k-mer tokenizer."""
        tokenizer = self.dna_tokenizer()
        return self._embed_tokens("dna", sequences, lambda batch: tokenizer(list(batch)), batch_size)

    def text_tokenizer(self):
        """The text encoder's tokenizer (WordPiece, or CLIP's BPE), via `tokenizers` (no transformers needed)."""
        if self._text_tokenizer is None:
            from tokenizers import Tokenizer

            spec = self._checked("text").tokenizer
            tokenizer = Tokenizer.from_file(str(bundle_path(self.path, spec.tokenizer_json)))
            tokenizer.enable_truncation(max_length=spec.max_len)
            tokenizer.enable_padding(length=spec.max_len, pad_id=spec.pad_id, pad_token=spec.pad_token)
            self._text_tokenizer = tokenizer
        return self._text_tokenizer

    def tokenize_text(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        tokenizer = self.text_tokenizer()
        if self._encoder_entry("text").tokenizer.kind == "clip_bpe":
            texts = [clip_clean(text) for text in texts]
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def embed_text(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Taxonomy strings (``TEXT_TEMPLATE``) → unit embeddings.

        A model with ``prompts`` (BioCLIP) embeds each string in every prompt and averages the unit
        embeddings (then normalises again), as pybioclip does for a list of names.
        """
        spec = self._encoder_entry("text")
        if spec.drop_repeated_words:
            texts = [drop_repeated_words(text) for text in texts]
        if not spec.prompts:
            return self._embed_tokens("text", texts, self.tokenize_text, batch_size)
        prompts = spec.prompts
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = max(1, (batch_size or DEFAULT_BATCH["text"]) // len(prompts)) * 4  # strings per round
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            sentences = [prompt.replace("{}", text) for text in chunk for prompt in prompts]
            vectors = self._embed_tokens("text", sentences, self.tokenize_text, batch_size)
            mean = vectors.reshape(len(chunk), len(prompts), self.dim).mean(axis=1)
            out[start : start + len(chunk)] = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return out

    def _embed_tokens(self, modality: str, items: Sequence[str], tokenize, batch_size: int | None) -> np.ndarray:
        size = batch_size or DEFAULT_BATCH[modality]
        out = np.empty((len(items), self.dim), dtype=np.float32)
        wanted = {entry.name for entry in self.session(modality).get_inputs()}  # CLIP text takes no mask
        for start in range(0, len(items), size):
            ids, mask = tokenize(items[start : start + size])
            feeds = {"input_ids": ids, "attention_mask": mask}
            out[start : start + len(ids)] = self.run(modality, {k: v for k, v in feeds.items() if k in wanted})
        return out

    def encoder(self, modality: str) -> BundleEncoder:
        self._encoder_entry(modality)
        return BundleEncoder(self, modality)


class BundleEncoder:
    """One modality of a bundle behind the :class:`clibd_cli.encoders.Encoder` protocol.

    Items are barcodes (dna), taxonomy strings (text) or image file paths (image; decoded one by one here,
    `clibd classify` decodes in a worker pool instead).
    """

    name = "clibd-model"

    def __init__(self, bundle: ModelBundle, modality: str) -> None:
        self.bundle, self.modality, self.dim = bundle, modality, bundle.dim
        self.default_thresholds: dict[str, float] = {}
        self.workers: int | None = None  # photo-decoding threads (None: the pool's default)

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    def describe(self) -> dict:
        return {"name": self.name, "modality": self.modality, "dim": self.dim, "model": self.bundle.name,
                "space": self.bundle.fingerprint}

    def encode(self, items: Sequence[str]) -> np.ndarray:
        if self.modality == "dna":
            return self.bundle.embed_dna(items)
        if self.modality == "text":
            return self.bundle.embed_text(items)
        return self.encode_photos([Path(item) for item in items])

    def encode_photos(self, paths: Sequence[Path]) -> np.ndarray:
        """Reference photos → embeddings, decoded in a worker pool; an unreadable one is an error here
        (a reference library must not silently lose specimens)."""
        from clibd_cli.photos import Photo, iter_preprocessed

        out = np.empty((len(paths), self.dim), dtype=np.float32)
        start = 0
        photos = [Photo(id=str(path), path=Path(path)) for path in paths]
        for batch in iter_preprocessed(photos, self.bundle.preprocessing, workers=self.workers):
            if batch.errors:
                raise InputError(f"reference photo {batch.errors[0][1]} Fix or remove it from the references.")
            out[start : start + len(batch.photos)] = self.bundle.embed_pixels(batch.pixels)
            start += len(batch.photos)
        return out
