"""Import the published official CLIBD checkpoints (bioscan-ml/clibd ``best.pth``) into our :class:`CLIBDModel`.

Why: the paper's trained models exist only in the official research code's format; importing them lets
this project index and identify with the published weights (and compare its own training against them)
without that code.

The official format (see CLIBD_REFERENCE.md, "Official checkpoint layout") is one raw ``state_dict`` of the
whole model:

* ``image_encoder.base_image_encoder.*``: a timm ViT (``vit_base_patch16_224``) whose blocks wrap ``attn.qkv``
  for LoRA: ``attn.qkv.qkv.{weight,bias}`` plus rank-4 ``attn.qkv.linear_{a,b}_{q,v}.weight``; its timm ``head``
  (Linear 768→768) is the projection.  Input pixels are in [0, 1] without mean/std normalisation.
* ``dna_encoder.base_dna_encoder.*``: a transformers ``BertForMaskedLM`` (BarcodeBERT, legacy k=5 vocabulary)
  whose ``cls.predictions.decoder`` was replaced by Linear(768→768); the embedding is the softmax over those
  outputs averaged over all positions (our ``DNAEncoderConfig.pooling="softmax_mean"``).
* ``language_encoder.base_language_encoder.*`` (BERT-small ``BertModel``) and ``language_encoder.proj.*``.
* ``logit_scale``.

What is converted: LoRA is merged into qkv (q rows += B_q·A_q, v rows += B_v·A_v), so the imported model is
a plain ViT; names are mapped to ours (``image_encoder.backbone/head``, ``dna_encoder.bert/transform/head``,
``text_encoder.bert/head``); unused tensors (``cls.predictions.bias``, ``*position_ids``, the text pooler) are
dropped; BarcodeBERT's 512-row position table is cut to the positions our model has.  Every remaining
weight must load (strictly), so a checkpoint that is not what we expect fails loudly instead of leaving
random weights behind.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import BertTokenizerFast

from clibd_cli.errors import ClibdError, InputError
from clibd_cli.preprocess import ImagePreprocessing
from clibd_cli.tokenizer import KmerTokenizer
from clibd_training.models import (
    MODALITIES,
    CLIBDModel,
    DNAEncoderConfig,
    ImageEncoderConfig,
    ModelConfig,
    TextEncoderConfig,
    _dna_bert_config,
    _fit_position_table,
    _text_positions,
    build_model,
)
from clibd_training.text_tokenizer import load_text_tokenizer

__all__ = [
    "OFFICIAL_PREFIXES", "OFFICIAL_PREPROCESSING", "OFFICIAL_TEXT_TOKENIZER", "ImportedModel",
    "convert_official_state_dict", "load_official", "official_config", "read_official_state_dict",
]

IMAGE_PREFIX = "image_encoder.base_image_encoder."
DNA_PREFIX = "dna_encoder.base_dna_encoder."
TEXT_PREFIX = "language_encoder.base_language_encoder."
TEXT_PROJ_PREFIX = "language_encoder.proj."
OFFICIAL_PREFIXES: dict[str, str] = {"image": IMAGE_PREFIX, "dna": DNA_PREFIX, "text": TEXT_PREFIX}
OFFICIAL_TEXT_TOKENIZER = "prajjwal1/bert-small"  # BERT-small's uncased WordPiece vocabulary (30522 tokens)

# Resize the short side to 256, centre-crop 224, scale to [0, 1]; the official model saw no normalisation.
OFFICIAL_PREPROCESSING = ImagePreprocessing(size=224, resize=256, crop="center", mean=None, std=None,
                                            interpolation="bilinear")

# timm ViTs the official image encoder can be (all 12 blocks, patch 16), by width.
_VIT_BY_WIDTH: dict[int, str] = {768: "vit_base_patch16_224", 384: "vit_small_patch16_224",
                                 192: "vit_tiny_patch16_224"}
_VIT_DEPTH = 12
_VIT_PATCH = 16
_DNA_LEGACY_SPECIALS = 3  # <MASK>, <CLS>, <UNK>
_DNA_MAX_LEN = 660
_TEXT_MAX_LEN = 20
_LORA = re.compile(r"^(?P<block>.*\.attn\.qkv)\.linear_(?P<ab>[ab])_(?P<qv>[qv])\.weight$")


@dataclass
class ImportedModel:
    """An official checkpoint as our model, with how its inputs must be made."""

    model: CLIBDModel  # in eval mode
    preprocessing: ImagePreprocessing
    source_sha256: str
    text_tokenizer: BertTokenizerFast | None  # None when the checkpoint has no text encoder


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of an official ``best.pth`` (raw, or wrapped under "state_dict"/"model", "module." stripped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file; give the path of an official CLIBD best.pth.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, EOF, weights-only refusals)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot be read as a PyTorch checkpoint of tensors ({reason[:200]}); give an "
                         "official CLIBD best.pth, not another file.") from exc
    if isinstance(raw, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), Mapping):
                raw = raw[wrapper]
                break
    if not isinstance(raw, Mapping):
        raise InputError(f"{path}: holds a {type(raw).__name__}, not a state dict; give an official CLIBD best.pth.")
    state = {_strip_module(str(k)): v for k, v in raw.items() if isinstance(v, Tensor)}
    if not any(k.startswith(p) for k in state for p in OFFICIAL_PREFIXES.values()):
        raise InputError(f"{path}: not an official CLIBD checkpoint (no weights under "
                         f"{', '.join(repr(p) for p in OFFICIAL_PREFIXES.values())}); give the best.pth of the "
                         "official CLIBD code.")
    return state


def _strip_module(key: str) -> str:
    return key.removeprefix("module.")


def _present(state: Mapping[str, Tensor]) -> tuple[str, ...]:
    return tuple(m for m in MODALITIES if any(k.startswith(OFFICIAL_PREFIXES[m]) for k in state))


def _get(state: Mapping[str, Tensor], key: str) -> Tensor:
    try:
        return state[key]
    except KeyError:
        raise InputError(f"official checkpoint: weight {key!r} is missing, so the file is not a complete CLIBD "
                         "checkpoint; give the best.pth saved by the official code.") from None


def _count_layers(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    numbers = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not numbers or numbers != set(range(len(numbers))):
        raise InputError(f"official checkpoint: layers under {prefix!r} are missing or not numbered 0..N-1.")
    return len(numbers)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def official_config(state: Mapping[str, Tensor]) -> ModelConfig:
    """Our :class:`ModelConfig` for an official state dict, with every size read from the tensors' shapes."""
    modalities = _present(state)
    if not modalities:
        raise InputError("official checkpoint: no image, DNA or text encoder weights in it.")
    embed: dict[str, int] = {}
    image, dna, text = ImageEncoderConfig(pretrained=False), DNAEncoderConfig(), TextEncoderConfig()

    if "image" in modalities:
        patch = _get(state, IMAGE_PREFIX + "patch_embed.proj.weight")
        width, depth = patch.shape[0], _count_layers(state, IMAGE_PREFIX + "blocks.")
        name = _VIT_BY_WIDTH.get(width)
        if name is None or depth != _VIT_DEPTH or tuple(patch.shape[2:]) != (_VIT_PATCH, _VIT_PATCH):
            raise InputError(f"official checkpoint: a ViT with width {width}, {depth} blocks and patch "
                             f"{tuple(patch.shape[2:])} is none of the supported timm models "
                             f"({', '.join(_VIT_BY_WIDTH.values())}: {_VIT_DEPTH} blocks, patch {_VIT_PATCH}).")
        tokens = _get(state, IMAGE_PREFIX + "pos_embed").shape[1] - 1  # minus the CLS token
        grid = round(tokens**0.5)
        if grid * grid != tokens:
            raise InputError(f"official checkpoint: pos_embed holds {tokens} patches, not a square grid.")
        image = ImageEncoderConfig(model_name=name, pretrained=False, image_size=grid * _VIT_PATCH)
        embed["image"] = _get(state, IMAGE_PREFIX + "head.weight").shape[0]

    if "dna" in modalities:
        words = _get(state, DNA_PREFIX + "bert.embeddings.word_embeddings.weight")
        vocab, hidden = words.shape
        k = next((k for k in range(1, 9) if 4**k + _DNA_LEGACY_SPECIALS == vocab), None)
        if k is None:
            raise InputError(f"official checkpoint: a DNA vocabulary of {vocab} tokens is not the legacy k-mer "
                             "layout (4**k + 3 tokens).")
        dna = DNAEncoderConfig(
            hidden_size=hidden, num_layers=_count_layers(state, DNA_PREFIX + "bert.encoder.layer."),
            num_heads=max(1, hidden // 64),
            intermediate_size=_get(state, DNA_PREFIX + "bert.encoder.layer.0.intermediate.dense.weight").shape[0],
            k=k, layout="legacy", max_len=_DNA_MAX_LEN, pretrained=None, pooling="softmax_mean")
        embed["dna"] = _get(state, DNA_PREFIX + "cls.predictions.decoder.weight").shape[0]

    if "text" in modalities:
        words = _get(state, TEXT_PREFIX + "embeddings.word_embeddings.weight")
        vocab, hidden = words.shape
        text = TextEncoderConfig(
            hidden_size=hidden, num_layers=_count_layers(state, TEXT_PREFIX + "encoder.layer."),
            num_heads=max(1, hidden // 64),
            intermediate_size=_get(state, TEXT_PREFIX + "encoder.layer.0.intermediate.dense.weight").shape[0],
            max_len=_TEXT_MAX_LEN, pretrained=None, vocab_size=vocab)
        embed["text"] = _get(state, TEXT_PROJ_PREFIX + "weight").shape[0]

    if len(set(embed.values())) != 1:
        raise InputError(f"official checkpoint: the encoders' output sizes differ ({embed}); they must share one "
                         "embedding space.")
    extra = {}
    scale = state.get("logit_scale")
    if scale is not None and scale.numel() == 1 and not scale.is_meta:  # shapes-only ('meta') dicts have no value
        extra["init_logit_scale"] = float(scale.float().reshape(-1)[0])
    return ModelConfig(image=image, dna=dna, text=text, embed_dim=next(iter(embed.values())),
                       modalities=modalities, **extra)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


def convert_official_state_dict(state: Mapping[str, Tensor], config: ModelConfig | None = None) -> dict[str, Tensor]:
    """Official names → ours, LoRA merged into qkv, unused tensors dropped, position tables cut to our model's.

    ``config`` is the architecture the result loads into (default: :func:`official_config` of ``state``); it
    only decides how many position rows to keep.  Unknown official names are an :class:`InputError`.
    """
    config = config or official_config(state)
    out: dict[str, Tensor] = {}
    lora: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "logit_scale":
            out[key] = value
        elif key.startswith(IMAGE_PREFIX):
            rest = key[len(IMAGE_PREFIX):]
            if match := _LORA.match(rest):
                lora.setdefault(match["block"], {})[match["ab"] + match["qv"]] = value
            elif rest.startswith("head."):
                out["image_encoder.head." + rest[len("head."):]] = value
            else:
                out["image_encoder.backbone." + rest.replace(".attn.qkv.qkv.", ".attn.qkv.")] = value
        elif key.startswith(DNA_PREFIX):
            mapped = _dna_name(key[len(DNA_PREFIX):])
            if mapped:
                out[mapped] = value
        elif key.startswith(TEXT_PREFIX):
            rest = key[len(TEXT_PREFIX):]
            if not rest.startswith("pooler."):
                out["text_encoder.bert." + rest] = value
        elif key.startswith(TEXT_PROJ_PREFIX):
            out["text_encoder.head." + key[len(TEXT_PROJ_PREFIX):]] = value
        else:
            raise InputError(f"official checkpoint: unrecognised weight {key!r}; is this a CLIBD checkpoint?")
    for block, parts in lora.items():
        _merge_lora(out, "image_encoder.backbone." + block, parts)
    positions = {
        "dna_encoder.bert.": _dna_bert_config(config.dna, KmerTokenizer(config.dna.tokenizer_config()))
        .max_position_embeddings,
        "text_encoder.bert.": _text_positions(config.text),
    }
    for prefix, rows in positions.items():
        key = prefix + "embeddings.position_embeddings.weight"
        if key in out:
            out[key] = _fit_position_table(key, out[key], rows)
    return out


def _dna_name(rest: str) -> str | None:
    """Our name for a BertForMaskedLM weight of the official DNA encoder; None for dropped ones."""
    if rest == "cls.predictions.bias" or rest.startswith("bert.pooler."):
        return None  # the MLM vocabulary bias is unused once the decoder was replaced; no pooler is used
    for theirs, ours in (("bert.", "dna_encoder.bert."), ("cls.predictions.transform.", "dna_encoder.transform."),
                         ("cls.predictions.decoder.", "dna_encoder.head.")):
        if rest.startswith(theirs):
            return ours + rest[len(theirs):]
    raise InputError(f"official checkpoint: unrecognised DNA encoder weight {DNA_PREFIX + rest!r}.")


def _merge_lora(out: dict[str, Tensor], qkv: str, parts: Mapping[str, Tensor]) -> None:
    """W_q += B_q·A_q and W_v += B_v·A_v on the fused [q; k; v] weight (rows 0:D and 2D:3D), in float32."""
    weight_key = qkv + ".weight"
    if weight_key not in out:
        raise InputError(f"official checkpoint: LoRA weights for {qkv} but no {qkv}.qkv.weight to merge them into.")
    weight = out[weight_key].float().clone()
    dim = weight.shape[1]
    if weight.shape[0] != 3 * dim:
        raise InputError(f"official checkpoint: {qkv}.qkv.weight has shape {tuple(weight.shape)}, not [3D, D].")
    for which, rows in (("q", slice(0, dim)), ("v", slice(2 * dim, 3 * dim))):
        a, b = parts.get("a" + which), parts.get("b" + which)
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise InputError(f"official checkpoint: {qkv} has only one of linear_a_{which}/linear_b_{which}.")
        weight[rows] += b.float() @ a.float()
    out[weight_key] = weight.to(out[weight_key].dtype)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_official(path: str | Path, text_tokenizer: str | Path | BertTokenizerFast | None = None) -> ImportedModel:
    """Read, convert and strictly load an official checkpoint into our model (eval mode).

    ``text_tokenizer`` (checkpoints with a text encoder only): a local tokenizer directory, a hub id or a
    tokenizer; default :data:`OFFICIAL_TEXT_TOKENIZER`, read from the Hugging Face cache (a clear
    :class:`MissingPretrainedError` offline when it is not cached).
    """
    path = Path(path).expanduser()
    state = read_official_state_dict(path)
    config = official_config(state)
    tokenizer: BertTokenizerFast | None = None
    if "text" in config.modalities:
        source = OFFICIAL_TEXT_TOKENIZER if text_tokenizer is None else text_tokenizer
        tokenizer = source if isinstance(source, BertTokenizerFast) else load_text_tokenizer(source)
    converted = convert_official_state_dict(state, config)
    model = build_model(config, tokenizer, load_pretrained=False)
    _load_strict(model, converted, path)
    return ImportedModel(model=model.eval(), preprocessing=OFFICIAL_PREPROCESSING, source_sha256=_sha256(path),
                         text_tokenizer=tokenizer)


def _load_strict(model: CLIBDModel, state: Mapping[str, Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ClibdError(f"{path}: the converted checkpoint does not match the model ({len(missing)} weights "
                         f"missing, {len(unexpected)} unexpected; first {first}); is it an official CLIBD best.pth?")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ClibdError(f"{path}: weight {key!r} has shape {tuple(value.shape)} but the model needs "
                             f"{tuple(own[key].shape)}; the checkpoint's sizes are not supported.")
    model.load_state_dict(state, strict=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
