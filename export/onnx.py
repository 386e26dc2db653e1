"""Checkpoint → ONNX model bundle (see :mod:`clibd_cli.bundle` for the layout the runtime reads).

One ONNX file per modality, exported with the torch.export-based exporter because it keeps the batch
*and* sequence length symbolic (the TorchScript tracer bakes BERT's position ids into constants of the
traced length).  Nothing is trusted blindly: every exported encoder is run with onnxruntime through the
runtime's own code path (:class:`clibd_cli.bundle.ModelBundle`, including the `tokenizers`-based text
tokenizer) and compared with eager PyTorch on random and, when given, real inputs; the export fails
below :data:`PARITY_MIN_COSINE`.  int8 variants (onnxruntime dynamic quantisation of the weights) are
kept only when they agree with fp32 well enough — mean cosine and, on real inputs, whether each
item's nearest neighbour stays the same — and the measured agreement goes into the manifest.  fp16
variants (for CUDA) go through the same kind of gate, with fp16's tighter thresholds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clibd_cli import __version__
from clibd_cli.atomic import atomic_dir
from clibd_cli.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    TEXT_TEMPLATE,
    ModelBundle,
    sha256_file,
    write_manifest,
)
from clibd_cli.errors import ClibdError, InputError
from clibd_cli.preprocess import ImageError, ImagePreprocessing, preprocess_image
from clibd_training.models import CLIBDModel, build_model

PARITY_MIN_COSINE = 0.9999
INT8_MIN_MEAN_COSINE = 0.99
INT8_MIN_NEIGHBOUR_AGREEMENT = 0.90
# fp16 rounds weights and activations to 11 significant bits: embeddings of a sound conversion agree to
# ~0.9999 cosine (measured: ≥ 0.99999 on the tiny model); 0.999 on the *minimum* leaves an order of
# magnitude for a larger model while catching an overflow (inf/NaN) or a broken graph at once.
FP16_MIN_COSINE = 0.999
FP16_MIN_NEIGHBOUR_AGREEMENT = 0.95
# Two references whose fp32 similarities to an item differ by less than this are a tie at fp16's precision:
# picking the other one is not a disagreement (random-init models embed real photos almost alike).
FP16_NEIGHBOUR_TIE = 1e-3
OPSET = 18
RANDOM_ITEMS = 4


@dataclass
class ExportSource:
    """A model ready to export, with what the runtime needs to feed it."""

    model: CLIBDModel
    preprocessing: ImagePreprocessing
    text_tokenizer: Any  # transformers BertTokenizerFast, or None without a text encoder
    checkpoint: Path
    sha256: str
    kind: str = "clibd"  # or "official"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Samples:
    """Real inputs for the parity and int8 checks (any may be empty)."""

    images: list[Path] = field(default_factory=list)
    barcodes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def load_checkpoint(path: str | Path, *, trust: bool = False) -> ExportSource:
    """A checkpoint written by `clibd train` (``RUN/checkpoints/*.pt``) as an :class:`ExportSource`.

    Read as plain data (:mod:`clibd_training.checkpoint`): a pickle that would import code is refused unless
    ``trust`` (--trust-checkpoint) says the user vouches for the file.
    """
    from clibd_training.checkpoint import load_state

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file. Give RUN/checkpoints/best.pt from 'clibd train' "
                         "(or --from-official for a published CLIBD checkpoint).")
    state = load_state(path, trust=trust)
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise InputError(f"{path}: not a 'clibd train' checkpoint (no model/model_config). For the published "
                         "CLIBD weights use --from-official.")
    from clibd_training.models import ModelConfig, without_pretrained

    config = without_pretrained(ModelConfig.from_dict(state["model_config"]))
    tokenizer = None
    if "text" in config.modalities:
        tokenizer = _checkpoint_text_tokenizer(path, state)
    model = build_model(config, tokenizer, load_pretrained=False)
    model.load_state_dict(state["model"])
    model.eval()
    image = (state.get("config") or {}).get("data", {}).get("image") or {}
    preprocessing = ImagePreprocessing.from_dict(image) if image else ImagePreprocessing()
    info = {"step": state.get("step"), "epoch": state.get("epoch"), "best": state.get("best"),
            "run": (state.get("config") or {}).get("name")}
    return ExportSource(model, preprocessing, tokenizer, path, sha256_file(path), "clibd", info)


def _checkpoint_text_tokenizer(path: Path, state: dict):
    """The run's text tokenizer: RUN/text_tokenizer beside RUN/checkpoints/, else the path it recorded."""
    from clibd_training.text_tokenizer import load_text_tokenizer

    beside = path.parent.parent / "text_tokenizer"
    recorded = state.get("text_tokenizer")
    for candidate in (beside, Path(recorded) if recorded else None):
        if candidate is not None and candidate.is_dir():
            return load_text_tokenizer(candidate)
    raise InputError(f"{path}: its text tokenizer is not at {beside} nor at {recorded}. Keep the run folder "
                     "together (RUN/checkpoints and RUN/text_tokenizer).")


# ---------------------------------------------------------------------------------------------
# ONNX export


class _ImageModule(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.encoder(pixel_values)


class _TokenModule(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(input_ids, attention_mask)


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warns about internals; a user running `clibd export` needs neither."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "root")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _export_module(module: nn.Module, args: tuple[Tensor, ...], names: Sequence[str],
                   dynamic: dict[str, dict[int, Any]], path: Path) -> None:
    module.eval()  # the exporter restores the wrapper's mode afterwards; a train-mode wrapper would leak dropout
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=list(names), output_names=["embeddings"],
                          dynamic_shapes=dynamic, dynamo=True, external_data=False, opset_version=OPSET,
                          verbose=False)


def export_encoder(model: CLIBDModel, modality: str, path: Path, image_size: int | None = None) -> None:
    """Write one modality's encoder as ONNX: dynamic batch (and length for token inputs)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=65536)
    if modality == "image":
        size = image_size or model.config.image.image_size
        _export_module(_ImageModule(model.image_encoder), (torch.rand(2, 3, size, size),), ["pixel_values"],
                       {"pixel_values": {0: batch}}, path)
        return
    encoder = model.dna_encoder if modality == "dna" else model.text_encoder
    positions = encoder.bert.config.max_position_embeddings
    length = Dim("length", min=1, max=positions)
    ids = torch.randint(0, encoder.bert.config.vocab_size, (2, min(positions, 8 if modality == "text" else 64)))
    _export_module(_TokenModule(encoder), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"],
                   {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}, path)


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime dynamic quantisation: int8 weights, activations quantised on the fly (CPU speed-up)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    del model.graph.value_info[:]  # stale shapes left by the exporter break the quantiser's shape inference
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        clean = Path(tmp) / "model.onnx"
        onnx.save(model, str(clean))
        quantize_dynamic(str(clean), str(target), weight_type=QuantType.QInt8)


def convert_fp16(source: Path, target: Path) -> None:
    """float16 weights and activations, float32 inputs and outputs (callers unchanged), for CUDA.

    onnxruntime's converter (``onnxruntime.transformers.float16``) rewrites the dynamo-exported graphs
    as they are.  ``ReduceL2`` (the final L2 normalisation's norm) stays float32: a float16 sum of squares
    overflows (65504) as soon as the projection's norm passes 256.  (Blocking the whole normalisation
    instead makes the converter name two casts alike, an invalid graph.)
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    with _quiet():
        converted = convert_float_to_float16(model, keep_io_types=True,
                                             op_block_list=[*DEFAULT_OP_BLOCK_LIST, "ReduceL2"])
    onnx.save(converted, str(target))


# ---------------------------------------------------------------------------------------------
# Parity inputs and checks


def random_sequences(n: int, rng: np.random.Generator, length: int = 658) -> list[str]:
    bases = np.array(list("ACGT"))
    out = []
    for i in range(n):
        seq = bases[rng.integers(0, 4, size=length - 37 * i)]
        seq[rng.integers(0, len(seq), size=3)] = "N"
        out.append("".join(seq))
    return out


def random_texts(n: int, rng: np.random.Generator) -> list[str]:
    words = ["Diptera", "Hymenoptera", "Coleoptera", "Cecidomyiidae", "Formicidae", "Sciaridae", "Apis",
             "Bradysia", "Camponotus", "mellifera", "impatiens", "sp.", "Lepidoptera", "Noctuidae"]
    return [" ".join(rng.choice(words, size=4)) for _ in range(n)]


def _pixels(paths: Sequence[Path], spec: ImagePreprocessing) -> np.ndarray:
    arrays = []
    for path in paths:
        with contextlib.suppress(ImageError):
            arrays.append(preprocess_image(path, spec))
    size = spec.size
    return np.stack(arrays) if arrays else np.empty((0, 3, size, size), dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def neighbour_agreement(reference: np.ndarray, approx: np.ndarray, tie: float = 0.0) -> float:
    """Share of items whose nearest *other* item is the same with approx queries against reference keys.

    With ``tie`` > 0 a different pick counts as the same when its exact similarity is within ``tie`` of
    the exact nearest one's (a tie at the approximation's precision).
    """
    if len(reference) < 3:
        return float("nan")
    exact = reference @ reference.T
    mixed = approx @ reference.T
    np.fill_diagonal(exact, -np.inf)
    np.fill_diagonal(mixed, -np.inf)
    rows = np.arange(len(reference))
    best, picked = exact.argmax(axis=1), mixed.argmax(axis=1)
    return float(np.mean((best == picked) | (exact[rows, best] - exact[rows, picked] <= tie)))


def _torch_embed(model: CLIBDModel, modality: str, items: Any) -> np.ndarray:
    with torch.no_grad():
        if modality == "image":
            return model.encode_image(torch.from_numpy(items)).numpy()
        if modality == "dna":
            batch = model.dna_encoder.tokenize(items)
            return model.encode_dna(batch["input_ids"], batch["attention_mask"]).numpy()
        batch = model.text_encoder.tokenize(items)
        return model.encode_text(batch["input_ids"], batch["attention_mask"]).numpy()


def _bundle_embed(bundle: ModelBundle, modality: str, items: Any) -> np.ndarray:
    if modality == "image":
        return bundle.embed_pixels(items)
    if modality == "dna":
        return bundle.embed_dna(items)
    return bundle.embed_text(items)


def _summary(cos: np.ndarray) -> dict[str, float | int]:
    return {"n": len(cos), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


# ---------------------------------------------------------------------------------------------
# The bundle


def export_bundle(source: ExportSource, output: str | Path, *, int8: bool = False, samples: Samples | None = None,
                  force: bool = False, name: str | None = None,
                  progress: Callable[[str], None] | None = None, fp16: bool = False) -> dict[str, Any]:
    """Write a verified model bundle to ``output`` (atomically) and return its manifest."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not force:
            raise ClibdError(f"{output}: already exists. Use --force to replace it.")
        if not (output / MANIFEST).exists():
            raise ClibdError(f"{output}: exists and is not a clibd model bundle; refusing to replace it.")
    samples = samples or Samples()
    say = progress or (lambda _message: None)
    model = source.model.eval()
    with atomic_dir(output) as tmp:
        manifest = _write_bundle(model, source, tmp, int8, samples, name or output.name, say, fp16)
    return manifest


def _write_bundle(model: CLIBDModel, source: ExportSource, tmp: Path, int8: bool, samples: Samples, name: str,
                  say: Callable[[str], None], fp16: bool = False) -> dict[str, Any]:
    modalities: dict[str, dict[str, Any]] = {}
    for modality in model.config.modalities:
        say(f"exporting the {modality} encoder")
        file = f"{modality}.onnx"
        export_encoder(model, modality, tmp / file, image_size=source.preprocessing.size)
        spec: dict[str, Any] = {"file": file, "sha256": sha256_file(tmp / file)}
        if modality == "image":
            spec["inputs"] = {"pixel_values": ["batch", 3, source.preprocessing.size, source.preprocessing.size]}
            spec["preprocessing"] = source.preprocessing.to_dict()
        elif modality == "dna":
            spec["inputs"] = {"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]}
            spec["tokenizer"] = model.dna_encoder.tokenizer.config.to_dict()
            spec["pooling"] = getattr(model.config.dna, "pooling", "mean")
        else:
            spec["inputs"] = {"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]}
            spec["template"] = TEXT_TEMPLATE
            spec["tokenizer"] = _save_text_tokenizer(source.text_tokenizer, model.config.text.max_len, tmp)
        modalities[modality] = spec
    space = hashlib.sha256(f"{source.sha256}:{model.config.embed_dim}".encode()).hexdigest()[:16]
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "clibd_version": __version__, "name": name,
        "embed_dim": model.config.embed_dim, "fingerprint": space, "modalities": modalities,
        "source": {"kind": source.kind, "checkpoint": source.checkpoint.name, "sha256": source.sha256,
                   **{k: v for k, v in source.info.items() if v is not None}},
        "model_config": model.config.to_dict(),
    }
    write_manifest(tmp, manifest)
    say("checking ONNX against PyTorch")
    manifest["parity"] = check_parity(model, source, tmp, manifest, samples)
    add_variants(source, tmp, manifest, samples, say, int8=int8, fp16=fp16)
    write_manifest(tmp, manifest)
    return manifest


def _save_text_tokenizer(tokenizer, max_len: int, directory: Path) -> dict[str, Any]:
    folder = directory / "text_tokenizer"
    tokenizer.save_pretrained(str(folder))
    files = {f"text_tokenizer/{p.name}": sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    if "text_tokenizer/tokenizer.json" not in files:
        raise ClibdError("the text tokenizer has no tokenizer.json (a fast tokenizer is needed for the runtime).")
    pad = tokenizer.pad_token or "[PAD]"
    return {"tokenizer_json": "text_tokenizer/tokenizer.json", "files": files, "max_len": int(max_len),
            "pad_id": int(tokenizer.pad_token_id or 0), "pad_token": pad}


def _inputs(modality: str, source: ExportSource, samples: Samples, rng: np.random.Generator) -> dict[str, Any]:
    """Random and (when given) real inputs of one modality."""
    spec = source.preprocessing
    if modality == "image":
        random = rng.random((RANDOM_ITEMS, 3, spec.size, spec.size), dtype=np.float32)
        if spec.mean is not None:
            random = (random - np.array(spec.mean, np.float32)[:, None, None]) / np.array(spec.std, np.float32)[
                :, None, None]
        real = _pixels(samples.images, spec)
    elif modality == "dna":
        random, real = random_sequences(RANDOM_ITEMS, rng), list(samples.barcodes)
    else:
        random, real = random_texts(RANDOM_ITEMS, rng), list(samples.texts)
    out = {"random": random}
    if len(real):
        out["real"] = real
    return out


def check_parity(model: CLIBDModel, source: ExportSource, directory: Path, manifest: dict[str, Any],
                 samples: Samples) -> dict[str, Any]:
    """Cosine between eager PyTorch and the ONNX files run through the runtime; raises below the minimum."""
    bundle = ModelBundle(directory, manifest, device="cpu", verify=False)  # hashed a moment ago
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {}
    for modality in model.config.modalities:
        report[modality] = {}
        for kind, items in _inputs(modality, source, samples, rng).items():
            cos = _cosines(_torch_embed(model, modality, items),
                           _bundle_embed(bundle, modality, items))
            report[modality][kind] = _summary(cos)
            if cos.min() < PARITY_MIN_COSINE:
                raise ClibdError(f"ONNX export of the {modality} encoder disagrees with PyTorch on {kind} inputs "
                                 f"(cosine {cos.min():.6f} < {PARITY_MIN_COSINE}); the bundle was not written. "
                                 "This is a bug: please report it with the checkpoint's model config.")
    return report


def add_variants(source: ExportSource, directory: Path, manifest: dict[str, Any], samples: Samples,
                 say: Callable[[str], None], *, int8: bool, fp16: bool) -> None:
    """The int8 and fp16 variants asked for, each kept only where it passes its gate."""
    if int8:
        say("quantising to int8")
        _add_variant("int8", quantize_int8, {"int8": True}, _int8_verdict, 0.0, 1, source, directory, manifest,
                     samples)
    if fp16:
        say("converting to fp16")
        _add_variant("fp16", convert_fp16, {"fp16": True}, _fp16_verdict, FP16_NEIGHBOUR_TIE, 2, source, directory,
                     manifest, samples)


def _add_variant(kind: str, make: Callable[[Path, Path], None], options: dict[str, bool],
                 verdict: Callable[[dict[str, Any]], tuple[bool, str]], tie: float, seed: int, source: ExportSource,
                 directory: Path, manifest: dict[str, Any], samples: Samples) -> None:
    """Make each encoder's ``kind`` variant, measure its agreement with fp32 through the runtime's own code
    (on the CPU, so the verdict needs no GPU and is the same wherever the export runs), keep those that
    pass ``verdict``; the agreement goes into the manifest, a rejected variant under ``<kind>_rejected``."""
    rng = np.random.default_rng(seed)
    fp32 = ModelBundle(directory, manifest, device="cpu", verify=False, fp16=False)
    for modality, spec in manifest["modalities"].items():
        file = f"{modality}.{kind}.onnx"
        make(directory / spec["file"], directory / file)
        spec[kind] = {"file": file, "sha256": sha256_file(directory / file)}
        variant = ModelBundle(directory, manifest, device="cpu", verify=False, **options)
        agreement: dict[str, Any] = {}
        for input_kind, items in _inputs(modality, source, samples, rng).items():
            reference, approx = _bundle_embed(fp32, modality, items), _bundle_embed(variant, modality, items)
            agreement[input_kind] = _summary(_cosines(reference, approx))
            if input_kind == "real":
                agreement[input_kind]["top1_neighbour_agreement"] = neighbour_agreement(reference, approx, tie=tie)
        keep, why = verdict(agreement)
        spec[kind].update({"agreement": agreement, "kept": keep, "reason": why})
        if not keep:
            (directory / file).unlink()
            manifest.setdefault(f"{kind}_rejected", {})[modality] = {"agreement": agreement, "reason": why}
            del spec[kind]


def _verdict(agreement: dict[str, Any], statistic: str, minimum: float, neighbours_minimum: float,
             label: str, digits: int) -> tuple[bool, str]:
    """Keep a variant when the worst ``statistic`` (a cosine to fp32) over the input kinds reaches ``minimum``
    (NaN or inf never does) and, on real inputs, its top-1 neighbour agreement reaches ``neighbours_minimum``."""
    worst = min(part[statistic] for part in agreement.values())
    if not np.isfinite(worst) or worst < minimum:
        return False, f"{label} to fp32 {worst:.{digits}f} < {minimum}"
    neighbours = agreement.get("real", {}).get("top1_neighbour_agreement")
    if neighbours is None or not np.isfinite(neighbours):
        return True, "cosine only (no real inputs to measure neighbour agreement)"
    if neighbours < neighbours_minimum:
        return False, f"top-1 neighbour agreement {neighbours:.3f} < {neighbours_minimum}"
    return True, "agrees with fp32"


def _int8_verdict(agreement: dict[str, Any]) -> tuple[bool, str]:
    return _verdict(agreement, "cosine_mean", INT8_MIN_MEAN_COSINE, INT8_MIN_NEIGHBOUR_AGREEMENT, "mean cosine", 4)


def _fp16_verdict(agreement: dict[str, Any]) -> tuple[bool, str]:
    return _verdict(agreement, "cosine_min", FP16_MIN_COSINE, FP16_MIN_NEIGHBOUR_AGREEMENT, "min cosine", 5)
