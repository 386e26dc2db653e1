"""An open_clip hub snapshot (``open_clip_config.json`` + weights) → a clibd model bundle with image and text.

For BioCLIP (``imageomics/bioclip``, what pybioclip runs): a user without CLIBD weights classifies photos
against taxonomy strings or reference photos.  BioCLIP has no barcode encoder, so the bundle has none.

* The model is built from the config's ``model_cfg`` with open_clip's :class:`~open_clip.model.CLIP` and its
  weights loaded strictly, from ``open_clip_model.safetensors`` (preferred) or ``open_clip_pytorch_model.bin``
  read as tensors only (``torch.load(weights_only=True)``: a file that holds code is refused, never run).
* ``image.onnx``: pixels [batch, 3, S, S] → the unit-normalised image embedding; the preprocessing is
  open_clip's for the config (OpenAI CLIP mean/std, bicubic resize of the short side to S, centre crop).
* ``text.onnx``: CLIP token ids int64 [batch, 77] (no attention mask: CLIP's causal mask is fixed) → the
  unit-normalised text embedding (the token at the end-of-text position, i.e. the argmax of the ids, then
  the projection).  The tokenizer is open_clip's SimpleTokenizer rebuilt as a `tokenizers` file from the
  same vocabulary (``bpe_simple_vocab_16e6``), so the runtime needs no torch (:func:`clip_tokenizer`).
* Taxonomy strings are embedded as pybioclip embeds a list of names: in each of the 80 OpenAI ImageNet
  templates, unit embeddings averaged (:data:`PROMPTS`); the genus a taxonomy string repeats before a
  binomial species is said once.
* Nothing is written unless ONNX, run through the runtime's own code (tokenizer and prompts included),
  agrees with open_clip in PyTorch (cosine ≥ 0.9999); the fingerprint is of this model's own space.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clibd_cli import __version__
from clibd_cli.atomic import atomic_dir
from clibd_cli.bundle import FORMAT, FORMAT_VERSION, MANIFEST, TEXT_TEMPLATE, ModelBundle, sha256_file, write_manifest
from clibd_cli.errors import ClibdError, InputError
from clibd_cli.preprocess import ImagePreprocessing
from clibd_cli.tokenizer import clip_clean, drop_repeated_words
from clibd_export.onnx import (
    PARITY_MIN_COSINE,
    ExportSource,
    Samples,
    _cosines,
    _export_module,
    _inputs,
    _summary,
    add_variants,
)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # preferred first
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77
START, END = "<start_of_text>", "<end_of_text>"
# open_clip's pre-tokenizer pattern (SimpleTokenizer.pat without the special tokens, which the tokenizer
# file matches as added tokens)
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# The OpenAI ImageNet templates, in pybioclip's order (bioclip/predict.py, OPENA_AI_IMAGENET_TEMPLATE): what
# its CustomLabelsClassifier averages for each name it is given.
PROMPTS: tuple[str, ...] = tuple(f"{t}." if not t.endswith(".") else t for t in (
    "a bad photo of a {}", "a photo of many {}", "a sculpture of a {}", "a photo of the hard to see {}",
    "a low resolution photo of the {}", "a rendering of a {}", "graffiti of a {}", "a bad photo of the {}",
    "a cropped photo of the {}", "a tattoo of a {}", "the embroidered {}", "a photo of a hard to see {}",
    "a bright photo of a {}", "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}",
    "a drawing of a {}", "a photo of my {}", "the plastic {}", "a photo of the cool {}",
    "a close-up photo of a {}", "a black and white photo of the {}", "a painting of the {}",
    "a painting of a {}", "a pixelated photo of the {}", "a sculpture of the {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a plastic {}", "a photo of the dirty {}", "a jpeg corrupted photo of a {}",
    "a blurry photo of the {}", "a photo of the {}", "a good photo of the {}", "a rendering of the {}",
    "a {} in a video game", "a photo of one {}", "a doodle of a {}", "a close-up photo of the {}",
    "a photo of a {}", "the origami {}", "the {} in a video game", "a sketch of a {}", "a doodle of the {}",
    "a origami {}", "a low resolution photo of a {}", "the toy {}", "a rendition of the {}",
    "a photo of the clean {}", "a photo of a large {}", "a rendition of a {}", "a photo of a nice {}",
    "a photo of a weird {}", "a blurry photo of a {}", "a cartoon {}", "art of a {}", "a sketch of the {}",
    "a embroidered {}", "a pixelated photo of a {}", "itap of the {}", "a jpeg corrupted photo of the {}",
    "a good photo of a {}", "a plushie {}", "a photo of the nice {}", "a photo of the small {}",
    "a photo of the weird {}", "the cartoon {}", "art of the {}", "a drawing of the {}",
    "a photo of the large {}", "a black and white photo of a {}", "the plushie {}", "a dark photo of a {}",
    "itap of a {}", "graffiti of the {}", "a toy {}", "itap of my {}", "a photo of a cool {}",
    "a photo of a small {}", "a tattoo of the {}",
))


def weights_file(folder: Path) -> Path | None:
    """The weights in a snapshot folder: the safetensors file if there, else the .bin, else None."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def load_open_clip(config_path: Path, weights_path: Path) -> tuple[nn.Module, dict[str, Any], ImagePreprocessing]:
    """(the open_clip CLIP model in eval mode, the config's ``model_cfg``, its image preprocessing)."""
    from open_clip.factory import load_checkpoint
    from open_clip.model import CLIP

    try:
        config = json.loads(Path(config_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{config_path}: not a readable open_clip config ({exc}). Download it again.") from exc
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= model_cfg.keys():
        raise InputError(f"{config_path}: no model_cfg with embed_dim, vision_cfg and text_cfg; not an open_clip "
                         "CLIP config.")
    if model_cfg.get("custom_text") or "hf_model_name" in model_cfg["text_cfg"] \
            or "timm_model_name" in model_cfg["vision_cfg"]:
        raise InputError(f"{config_path}: a CLIP with a custom (Hugging Face or timm) tower; only open_clip's own "
                         "ViT + text transformer (as BioCLIP's) can be converted.")
    model = CLIP(**model_cfg)
    try:
        load_checkpoint(model, str(weights_path), strict=True, weights_only=True)
    except Exception as exc:  # pickle refusal, truncated file, or weights of another shape
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InputError(f"{weights_path}: cannot be read as the open_clip weights of {config_path.name} "
                         f"(read as tensors only): {reason}") from exc
    model.eval()
    pre = config.get("preprocess_cfg") or {}
    size = model_cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    mean, std = pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD)
    interpolation = pre.get("interpolation", "bicubic")
    if pre.get("resize_mode", "shortest") != "shortest":
        raise InputError(f"{config_path}: resize_mode {pre['resize_mode']!r} is not supported (only 'shortest').")
    preprocessing = ImagePreprocessing(size=int(size), resize=int(size), crop="center", mean=tuple(mean),
                                       std=tuple(std), interpolation=interpolation)
    return model, model_cfg, preprocessing


def clip_tokenizer(bpe_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH):
    """open_clip's SimpleTokenizer as a `tokenizers` Tokenizer (saved into the bundle as tokenizer.json).

    Same vocabulary (byte symbols, the same with ``</w>``, the 48,894 merges, <start_of_text>,
    <end_of_text>: 49,408 ids), the same cleaning once :func:`clibd_cli.tokenizer.clip_clean` has run (NFC,
    whitespace runs to one space, stripped, lower case), the same regex and byte-level BPE with ``</w>`` at
    the end of a word; <start_of_text> … <end_of_text>, truncated to ``context_length`` keeping
    <end_of_text> last, padded with id 0 (the runtime sets padding and truncation from the manifest).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if bpe_path is None:
        from open_clip.tokenizer import default_bpe

        bpe_path = default_bpe()
    from open_clip.tokenizer import bytes_to_unicode

    with gzip.open(bpe_path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as SimpleTokenizer reads it
    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, end_of_word_suffix="</w>", continuing_subword_prefix="",
                                     fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                 normalizers.Strip(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.add_special_tokens([START, END])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])])
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    tokenizer.enable_truncation(context_length)
    tokenizer.enable_padding(length=context_length, pad_id=0, pad_token=words[0])
    return tokenizer


class _Image(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values, normalize=True)


class _Text(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model.encode_text(input_ids, normalize=True)


def _torch_text(model: nn.Module, texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """What pybioclip computes for names: open_clip's tokenizer, each prompt, mean of unit embeddings."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=CONTEXT_LENGTH)
    out = []
    with torch.no_grad():
        for text in texts:
            name = drop_repeated_words(text)
            vectors = model.encode_text(tokenizer([p.replace("{}", name) for p in prompts]), normalize=True)
            mean = vectors.mean(dim=0)
            out.append((mean / mean.norm()).numpy())
    return np.stack(out)


def export_open_clip(config_path: str | Path, weights_path: str | Path, output: str | Path, *,
                     int8: bool = False, samples: Samples | None = None, force: bool = False,
                     name: str | None = None, progress: Callable[[str], None] | None = None,
                     source_info: dict[str, Any] | None = None, fp16: bool = False,
                     prompts: Sequence[str] = PROMPTS) -> dict[str, Any]:
    """Write a verified image + text bundle from an open_clip snapshot to ``output``; returns its manifest."""
    config_path, weights_path, output = Path(config_path), Path(weights_path), Path(output)
    if output.exists() and any(output.iterdir()):
        if not force:
            raise ClibdError(f"{output}: already exists. Use --force to replace it.")
        if not (output / MANIFEST).exists():
            raise ClibdError(f"{output}: exists and is not a clibd model bundle; refusing to replace it.")
    say = progress or (lambda _message: None)
    say("loading the open_clip model")
    model, model_cfg, preprocessing = load_open_clip(config_path, weights_path)
    source = ExportSource(model, preprocessing, None, weights_path, sha256_file(weights_path), "open_clip",
                          {"config": config_path.name, "config_sha256": sha256_file(config_path),
                           **(source_info or {})})
    with atomic_dir(output) as tmp:
        manifest = _write(model, model_cfg, source, tmp, samples or Samples(), name or output.name, say, int8,
                          fp16, list(prompts))
    return manifest


def _write(model: nn.Module, model_cfg: dict[str, Any], source: ExportSource, tmp: Path, samples: Samples,
           name: str, say: Callable[[str], None], int8: bool, fp16: bool, prompts: list[str]) -> dict[str, Any]:
    from torch.export import Dim

    size = source.preprocessing.size
    context = int(model_cfg["text_cfg"].get("context_length", CONTEXT_LENGTH))
    batch = Dim("batch", min=1, max=65536)
    say("exporting the image encoder")
    _export_module(_Image(model), (torch.rand(2, 3, size, size),), ["pixel_values"], {"pixel_values": {0: batch}},
                   tmp / "image.onnx")
    say("exporting the text encoder")
    ids = torch.zeros(2, context, dtype=torch.long)
    ids[:, 0], ids[0, 1], ids[:, 2] = 49406, 320, 49407
    _export_module(_Text(model), (ids,), ["input_ids"], {"input_ids": {0: batch}}, tmp / "text.onnx")
    folder = tmp / "text_tokenizer"
    folder.mkdir()
    clip_tokenizer(context_length=context).save(str(folder / "tokenizer.json"))
    embed_dim = int(model_cfg["embed_dim"])
    weights_sha = source.sha256
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "clibd_version": __version__, "name": name,
        "embed_dim": embed_dim,
        "fingerprint": hashlib.sha256(f"open_clip:{weights_sha}:{embed_dim}".encode()).hexdigest()[:16],
        "modalities": {
            "image": {"file": "image.onnx", "sha256": sha256_file(tmp / "image.onnx"),
                      "inputs": {"pixel_values": ["batch", 3, size, size]},
                      "preprocessing": source.preprocessing.to_dict()},
            "text": {"file": "text.onnx", "sha256": sha256_file(tmp / "text.onnx"),
                     "inputs": {"input_ids": ["batch", context]}, "template": TEXT_TEMPLATE,
                     "prompts": prompts, "drop_repeated_words": True,
                     "tokenizer": {"kind": "clip_bpe", "tokenizer_json": "text_tokenizer/tokenizer.json",
                                   "files": {"text_tokenizer/tokenizer.json":
                                             sha256_file(folder / "tokenizer.json")},
                                   "max_len": context, "pad_id": 0, "pad_token": "!"}},
        },
        "source": {"kind": "open_clip", "checkpoint": source.checkpoint.name, "sha256": weights_sha,
                   **{k: v for k, v in source.info.items() if v is not None}},
        "model_config": model_cfg,
    }
    write_manifest(tmp, manifest)
    say("checking ONNX against PyTorch")
    manifest["parity"] = _parity(model, source, tmp, manifest, samples, prompts)
    add_variants(source, tmp, manifest, samples, say, int8=int8, fp16=fp16)
    write_manifest(tmp, manifest)
    return manifest


def _parity(model: nn.Module, source: ExportSource, directory: Path, manifest: dict[str, Any], samples: Samples,
            prompts: list[str]) -> dict[str, Any]:
    """ONNX through the runtime (tokenizer, prompts and all) against open_clip in PyTorch; raises below the gate."""
    bundle = ModelBundle(directory, manifest, device="cpu", verify=False)
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"image": {}, "text": {}}
    for modality in ("image", "text"):
        for kind, items in _inputs(modality, source, samples, rng).items():
            if modality == "image":
                with torch.no_grad():
                    expected = model.encode_image(torch.from_numpy(np.asarray(items)), normalize=True).numpy()
                got = bundle.embed_pixels(items)
            else:
                expected, got = _torch_text(model, items, prompts), bundle.embed_text(items)
            cos = _cosines(expected, got)
            report[modality][kind] = _summary(cos)
            if cos.min() < PARITY_MIN_COSINE:
                raise ClibdError(f"ONNX export of the {modality} encoder disagrees with open_clip in PyTorch on "
                                 f"{kind} inputs (cosine {cos.min():.6f} < {PARITY_MIN_COSINE}); the bundle was "
                                 "not written. This is a bug: please report it with the open_clip config.")
    return report


__all__ = ["CONFIG_FILE", "PROMPTS", "WEIGHT_FILES", "clip_clean", "clip_tokenizer", "export_open_clip",
           "load_open_clip", "weights_file"]
