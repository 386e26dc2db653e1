"""CLIBD's three encoders (image, DNA barcode, taxonomy text) and the model that aligns them.

Each encoder ends in a Linear head to ``embed_dim`` and returns L2-normalised embeddings, so a dot
product is a cosine similarity and the contrastive logits are ``scale() * a @ b.T``.

* image: a timm backbone (ViT-B/16 in the paper) pooled on its CLS token, then Linear → embed_dim.
* DNA: a BarcodeBERT-style BERT over non-overlapping k-mers made by :class:`clibd_cli.tokenizer.KmerTokenizer`
  (the same code the inference runtime uses), masked mean over attended tokens, then Linear
  (``pooling="mean"``).  ``pooling="softmax_mean"`` reproduces the official CLIBD checkpoints: the MLM head's
  transform (dense + activation + LayerNorm), Linear → embed_dim, softmax over those outputs, masked mean.
* text: a BERT (BERT-small in the paper) over WordPiece tokens of ``"{order} {family} {genus} {species}"``,
  masked mean, then Linear.  ``TextEncoderConfig.vocab_size`` fixes the embedding table's size (an imported
  BERT's) instead of taking it from the tokenizer.

Weights are never fetched behind the user's back: pretrained sources are local paths or hub ids read from
the cache first, and a missing download is a :class:`MissingPretrainedError` that says what to do.
:class:`DNAMaskedLM` is the BarcodeBERT pretraining model whose ``save_pretrained`` directory a
:class:`DNAEncoder` can start from.

State-dict names (for checkpoint importers): ``logit_scale``, ``image_encoder.backbone.*`` (timm, no
classifier), ``image_encoder.head.*``, ``dna_encoder.bert.*`` (BertModel, no pooler), ``dna_encoder.transform.*``
(``softmax_mean`` only: BertPredictionHeadTransform), ``dna_encoder.head.*``, ``text_encoder.bert.*``,
``text_encoder.head.*``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast
from transformers.models.bert.modeling_bert import BertEncoder, BertPredictionHeadTransform

from clibd_cli.errors import ClibdError
from clibd_cli.schema import MODALITIES
from clibd_cli.tokenizer import KmerTokenizer, TokenizerConfig
from clibd_training.text_tokenizer import (
    MissingPretrainedError,
    from_local_or_hub,
    hub_reachable,
    load_text_tokenizer,
    missing_message,
    offline_mode,
)

__all__ = [
    "DNA_POOLINGS", "MODALITIES", "CLIBDModel", "DNAEncoder", "DNAEncoderConfig", "DNAMaskedLM", "ImageEncoder",
    "ImageEncoderConfig", "MissingPretrainedError", "ModelConfig", "TextEncoder", "TextEncoderConfig",
    "build_model", "count_parameters", "mask_tokens", "masked_mean", "paper_config", "tiny_config",
    "without_pretrained",
]

logger = logging.getLogger(__name__)

DNA_POOLINGS: tuple[str, ...] = ("mean", "softmax_mean")  # see DNAEncoder
DNA_TOKENIZER_FILE = "clibd_dna_tokenizer.json"  # written next to a DNAMaskedLM's weights
TEXT_MAX_POSITIONS = 512  # BERT-small's table, so hub weights load into a from-scratch architecture unchanged


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageEncoderConfig:
    """A timm backbone; ``pretrained`` is True (timm hub weights), False, or a local weights file/dir."""

    model_name: str = "vit_base_patch16_224"
    pretrained: bool | str = False
    image_size: int = 224
    drop_path_rate: float = 0.0


@dataclass
class DNAEncoderConfig:
    """BarcodeBERT sizes plus the k-mer tokenizer; ``pretrained`` is a local DNAMaskedLM/BertForMaskedLM dir.

    ``pooling``: ``"mean"`` (masked mean of the last hidden state, then Linear) or ``"softmax_mean"`` (the
    official CLIBD checkpoints: MLM-head transform, Linear, softmax over its outputs, then masked mean).
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    k: int = 4
    layout: str = "current"
    max_len: int = 660
    pretrained: str | None = None
    pooling: str = "mean"

    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(k=self.k, layout=self.layout, max_len=self.max_len)


@dataclass
class TextEncoderConfig:
    """BERT sizes (BERT-small by default); ``pretrained`` is a hub id or a local directory.

    ``vocab_size``: the word-embedding table's rows; ``None`` takes ``len(tokenizer)``.  Set it for imported
    weights whose table is larger than the tokenizer (the official BERT-small has 30522 rows).
    """

    hidden_size: int = 512
    num_layers: int = 4
    num_heads: int = 8
    intermediate_size: int = 2048
    max_len: int = 20  # WordPiece tokens, [CLS] and [SEP] included
    pretrained: str | None = None
    vocab_size: int | None = None


@dataclass
class ModelConfig:
    """The whole CLIBD model; stored (as ``asdict``) in training configs and checkpoints."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    dna: DNAEncoderConfig = field(default_factory=DNAEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    embed_dim: int = 768
    modalities: tuple[str, ...] = MODALITIES
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ClibdError(f"model.modalities {list(self.modalities)}: use one or more of {', '.join(MODALITIES)}.")
        for name, sub in (("dna", self.dna), ("text", self.text)):
            if sub.hidden_size % sub.num_heads:
                raise ClibdError(f"model.{name}: hidden_size {sub.hidden_size} is not a multiple of "
                                 f"num_heads {sub.num_heads}.")
        try:
            self.dna.tokenizer_config()
        except ValueError as exc:
            raise ClibdError(f"model.dna: {exc}.") from exc
        if self.dna.pooling not in DNA_POOLINGS:
            raise ClibdError(f"model.dna.pooling {self.dna.pooling!r}: use one of {', '.join(DNA_POOLINGS)}.")
        if self.text.vocab_size is not None and self.text.vocab_size < 1:
            raise ClibdError(f"model.text.vocab_size must be positive or null, got {self.text.vocab_size}.")
        if self.embed_dim < 1:
            raise ClibdError(f"model.embed_dim must be positive, got {self.embed_dim}.")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ModelConfig:
        """Build from nested dicts (YAML, checkpoints); unknown keys are an error, not silently dropped."""
        raw = copy.deepcopy(dict(raw or {}))
        _check_keys(cls, raw, "model")
        for name, kind in (("image", ImageEncoderConfig), ("dna", DNAEncoderConfig), ("text", TextEncoderConfig)):
            value = raw.get(name) or {}
            if not isinstance(value, kind):
                _check_keys(kind, value, f"model.{name}")
                raw[name] = kind(**value)
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        """``asdict`` with lists instead of tuples, so YAML safe_dump and JSON accept it."""
        data = asdict(self)
        data["modalities"] = list(self.modalities)
        return data


def _check_keys(kind: type, raw: Mapping[str, Any], where: str) -> None:
    unknown = set(raw) - {f.name for f in fields(kind)}
    if unknown:
        raise ClibdError(f"unknown keys in '{where}': {', '.join(sorted(unknown))}.")


def paper_config(pretrained: bool = True) -> ModelConfig:
    """The CLIBD paper's model: ViT-B/16 at 224, BarcodeBERT (12 × 768, k=4, current layout), BERT-small.

    The official checkpoints use the legacy k=5 layout; new training uses the current one (k=4).
    ``pretrained=False`` gives the same architecture without fetching weights (sizes, tests, resuming).
    """
    return ModelConfig(
        image=ImageEncoderConfig("vit_base_patch16_224", pretrained=pretrained, image_size=224),
        dna=DNAEncoderConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, k=4,
                             layout="current", max_len=660),
        text=TextEncoderConfig(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048, max_len=20,
                               pretrained="prajjwal1/bert-small" if pretrained else None),
        embed_dim=768,
    )


def tiny_config() -> ModelConfig:
    """A few-million-parameter model (the ``tiny-cpu`` preset) that trains on 2 CPU cores in minutes."""
    return ModelConfig(
        image=ImageEncoderConfig("vit_tiny_patch16_224", pretrained=False, image_size=32),
        dna=DNAEncoderConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, k=4,
                             layout="current", max_len=660),
        text=TextEncoderConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_len=20),
        embed_dim=64,
    )


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def masked_mean(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean over attended positions only, so padding never moves an embedding (and an empty row gives 0).

    Summed in float32: under bf16 autocast a 165-token sum would lose the small differences that matter.
    """
    dtype, hidden = hidden.dtype, hidden.float()
    if attention_mask is None:
        return hidden.mean(dim=1).to(dtype)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return ((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)).to(dtype)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for loads whose outcome we check ourselves."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _bert_config(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int, positions: int,
                 pad_id: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=intermediate, max_position_embeddings=positions, pad_token_id=pad_id)


def _fit_position_table(key: str, value: Tensor, positions: int) -> Tensor:
    """A BERT position table longer than ours (BarcodeBERT's 512) cut to ``positions`` rows; others unchanged.

    Positions beyond our sequence length are never used, so the cut loses nothing.
    """
    if key.endswith("position_embeddings.weight") and value.shape[0] > positions:
        return value[:positions]
    return value


def _copy_bert_weights(target: nn.Module, source: Mapping[str, Tensor], what: str) -> list[str]:
    """Copy a pretrained state dict into ``target`` (built from *our* config) and return missing keys.

    Our architecture is always built from the config, so a checkpoint resumed later without the pretrained
    source rebuilds exactly the same shapes.  A longer position table (BarcodeBERT used 512) is cut to ours,
    since the positions beyond our sequence length are never used; any other shape difference is an error.
    """
    own = target.state_dict()
    state: dict[str, Tensor] = {}
    for key, value in source.items():
        if key not in own or key.endswith("position_ids"):
            continue
        value = _fit_position_table(key, value, own[key].shape[0])
        if value.shape != own[key].shape:
            raise ClibdError(f"{what}: weight {key} has shape {tuple(value.shape)} but the configured model needs "
                             f"{tuple(own[key].shape)}; set the model sizes to those of the pretrained model.")
        state[key] = value
    if not state:
        raise ClibdError(f"{what}: no weight matches the model; is it a BERT checkpoint?")
    result = target.load_state_dict(state, strict=False)
    return [key for key in result.missing_keys if not key.endswith("position_ids")]


# ---------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """timm backbone (CLS token for ViTs, default pooling otherwise) → Linear → unit vector."""

    def __init__(self, config: ImageEncoderConfig, embed_dim: int, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        pretrained = config.pretrained if load_pretrained else False
        self.backbone = _create_backbone(config, hub_weights=pretrained is True)
        self.load_report: dict[str, list[str]] = {}
        if isinstance(pretrained, str):
            self.load_report = _load_image_weights(self.backbone, pretrained)
        # Some CNNs (MobileNetV3) end in a conv head wider than num_features; timm exposes its width.
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.head = nn.Linear(width, embed_dim)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(pixel_values)), dim=-1)


def _create_backbone(config: ImageEncoderConfig, hub_weights: bool) -> nn.Module:
    """Create the timm model without classifier; ViT options are dropped for models that reject them."""
    base: dict[str, Any] = {"num_classes": 0, "drop_path_rate": config.drop_path_rate}
    if hub_weights:
        base |= {"pretrained": True, **_timm_weights_source(config.model_name)}
    attempts = ({"img_size": config.image_size, "global_pool": "token"}, {"img_size": config.image_size}, {})
    for extra in attempts[:-1]:
        try:
            return _timm_create(config.model_name, base | extra)
        except (TypeError, AssertionError, ValueError) as exc:
            # CNNs take no img_size; models without a class token reject global_pool="token".
            logger.debug("timm %s rejected %s (%s); retrying without", config.model_name, sorted(extra), exc)
    return _timm_create(config.model_name, base)


def _timm_create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ClibdError(f"model.image.model_name: timm has no model {name!r}.") from exc
        raise
    except OSError as exc:  # hub download failed (no network)
        raise MissingPretrainedError(missing_message(f"timm/{name}", "image weights", "model.image.pretrained",
                                                     str(exc).splitlines()[0], off="false")) from exc


def _timm_weights_source(name: str) -> dict[str, Any]:
    """Point timm at cached hub weights, or fail clearly when offline and nothing is cached."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(cached, str):
            return {"pretrained_cfg_overlay": {"file": cached}}
    if offline_mode():
        raise MissingPretrainedError(missing_message(hub_id or name, "image weights", "model.image.pretrained",
                                                     off="false"))
    if not hub_reachable():
        raise MissingPretrainedError(missing_message(hub_id or name, "image weights", "model.image.pretrained",
                                                     "no network connection", off="false"))
    return {}


def _load_image_weights(backbone: nn.Module, path: str) -> dict[str, list[str]]:
    """Load a local timm-compatible file (or a dir holding one), non-strictly, and report what did not match."""
    source = Path(path).expanduser()
    if source.is_dir():
        found = [source / n for n in ("model.safetensors", "pytorch_model.bin") if (source / n).exists()]
        if not found:
            raise ClibdError(f"{path}: no model.safetensors or pytorch_model.bin in this directory.")
        source = found[0]
    if not source.is_file():
        raise ClibdError(f"model.image.pretrained: {path} does not exist; give a timm weights file, "
                         "true for timm's hub weights, or false to train from scratch.")
    skipped: list[str] = []
    module_filter = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)

    def keep_matching(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        if module_filter is not None:  # timm's own conversions (position-embedding resampling, formats)
            state = module_filter(state, model)
        own = model.state_dict()
        skipped.extend(k for k, v in state.items() if k in own and v.shape != own[k].shape)
        return {k: v for k, v in state.items() if k not in own or v.shape == own[k].shape}

    result = timm.models.load_checkpoint(backbone, str(source), strict=False, filter_fn=keep_matching)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys), "shape": skipped}
    if len(report["missing"]) == len(backbone.state_dict()):
        raise ClibdError(f"{path}: no weight matches timm model {type(backbone).__name__}; wrong file?")
    if report["missing"] or skipped:
        warnings.warn(f"{path}: {len(report['missing'])} backbone weights not in the file "
                      f"({', '.join(report['missing'][:5])}…), {len(skipped)} skipped for shape; they stay random.",
                      stacklevel=3)
    return report


# ---------------------------------------------------------------------------------------------
# DNA
# ---------------------------------------------------------------------------------------------


def _dna_bert_config(config: DNAEncoderConfig, tokenizer: KmerTokenizer) -> BertConfig:
    return _bert_config(tokenizer.vocab_size, config.hidden_size, config.num_layers, config.num_heads,
                        config.intermediate_size, tokenizer.seq_len + 2, tokenizer.pad_id)


def _check_dna_source(config: DNAEncoderConfig) -> Path:
    """The pretrained DNA dir, refusing one made with another k-mer vocabulary (its ids would mean nothing)."""
    directory = Path(config.pretrained or "").expanduser()
    if not directory.is_dir():
        raise ClibdError(f"model.dna.pretrained: {config.pretrained} is not a directory; give the directory written "
                         "by DNAMaskedLM.save_pretrained (or a BertForMaskedLM), or null to train from scratch.")
    if not (directory / "config.json").exists():
        raise ClibdError(f"model.dna.pretrained: {directory} has no config.json; give a directory written by "
                         "DNAMaskedLM.save_pretrained or BertForMaskedLM.save_pretrained.")
    saved = directory / DNA_TOKENIZER_FILE
    if saved.exists():
        theirs = json.loads(saved.read_text())
        ours = config.tokenizer_config().to_dict()
        if (theirs.get("k"), theirs.get("layout")) != (ours["k"], ours["layout"]):
            raise ClibdError(f"{directory}: pretrained with k={theirs.get('k')} layout={theirs.get('layout')}, but "
                             f"model.dna says k={ours['k']} layout={ours['layout']}; make them agree.")
    return directory


def _tokenize_dna(tokenizer: KmerTokenizer, sequences: Sequence[str], prefix: str) -> dict[str, Tensor]:
    ids, mask = tokenizer(list(sequences))
    return {f"{prefix}input_ids": torch.from_numpy(ids), f"{prefix}attention_mask": torch.from_numpy(mask)}


class DNAEncoder(nn.Module):
    """BarcodeBERT over k-mer ids → pooling → unit vector.

    ``pooling="mean"``: masked mean of the last hidden state → Linear.  ``pooling="softmax_mean"`` (the official
    CLIBD checkpoints): MLM-head transform (dense, activation, LayerNorm) → Linear (the official checkpoints'
    replaced MLM decoder) → softmax over the embed_dim outputs → masked mean.  With the legacy layout's all-ones
    mask that is the official mean over every position.
    """

    def __init__(self, config: DNAEncoderConfig, embed_dim: int, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = KmerTokenizer(config.tokenizer_config())
        bert_config = _dna_bert_config(config, self.tokenizer)
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        if config.pretrained and load_pretrained:
            self._load_pretrained()
        self.transform = BertPredictionHeadTransform(bert_config) if config.pooling == "softmax_mean" else None
        self.head = nn.Linear(config.hidden_size, embed_dim)

    def _load_pretrained(self) -> None:
        directory = _check_dna_source(self.config)
        with _quiet_transformers():
            source = BertModel.from_pretrained(str(directory), add_pooling_layer=False)  # strips "bert."
        missing = _copy_bert_weights(self.bert, source.state_dict(), f"DNA weights {directory}")
        if missing:
            raise ClibdError(f"{directory}: not a BERT for this model, {len(missing)} weights missing "
                             f"(e.g. {missing[0]}).")

    def tokenize(self, sequences: Sequence[str], prefix: str = "") -> dict[str, Tensor]:
        """Normalised sequences → ``{prefix}input_ids`` and ``{prefix}attention_mask`` LongTensors."""
        return _tokenize_dna(self.tokenizer, sequences, prefix)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.transform is not None:
            # softmax and mean in float32: each of the embed_dim probabilities is ~1/embed_dim
            probabilities = torch.softmax(self.head(self.transform(hidden)).float(), dim=-1)
            return F.normalize(masked_mean(probabilities, attention_mask), dim=-1).to(hidden.dtype)
        return F.normalize(self.head(masked_mean(hidden, attention_mask)), dim=-1)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int, vocab_size: int,
                special_ids: Sequence[int], first_regular_id: int, mlm_probability: float = 0.5,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT masking: pick regular attended tokens with ``mlm_probability``; 80 % [MASK], 10 % random, 10 % kept.

    Returns (masked input ids, labels) with labels -100 wherever no prediction is asked.  Padding and
    special tokens ([MASK], [CLS], [UNK]: an unknown k-mer has no answer to learn) are never chosen.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    eligible = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    for special in special_ids:
        eligible &= input_ids != special

    def draw(shape: torch.Size) -> Tensor:
        return torch.rand(shape, generator=generator, device=input_ids.device)

    chosen = eligible & (draw(input_ids.shape) < mlm_probability)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = draw(input_ids.shape)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(first_regular_id, vocab_size, input_ids.shape, generator=generator,
                               device=input_ids.device)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    return torch.where(to_random, random_ids, masked), labels


class DNAMaskedLM(nn.Module):
    """BarcodeBERT pretraining: BertForMaskedLM over the k-mer vocabulary of a :class:`DNAEncoderConfig`."""

    def __init__(self, config: DNAEncoderConfig | None = None, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config or DNAEncoderConfig()
        self.tokenizer = KmerTokenizer(self.config.tokenizer_config())
        self.mlm = BertForMaskedLM(_dna_bert_config(self.config, self.tokenizer))
        if self.config.pretrained and load_pretrained:
            directory = _check_dna_source(self.config)
            with _quiet_transformers():
                source = BertForMaskedLM.from_pretrained(str(directory))
            _copy_bert_weights(self.mlm, source.state_dict(), f"DNA weights {directory}")

    @property
    def bert(self) -> BertModel:
        return self.mlm.bert

    def tokenize(self, sequences: Sequence[str], prefix: str = "") -> dict[str, Tensor]:
        return _tokenize_dna(self.tokenizer, sequences, prefix)

    def special_ids(self) -> list[int]:
        """Ids never masked nor used as labels: [MASK], [UNK] (also padding) and the legacy [CLS]."""
        return [i for i in (self.tokenizer.mask_id, self.tokenizer.unk_id, self.tokenizer.cls_id) if i is not None]

    def mask_tokens(self, input_ids: Tensor, attention_mask: Tensor | None = None, mlm_probability: float = 0.5,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """See :func:`mask_tokens`; random replacements are drawn from real k-mers only."""
        return mask_tokens(input_ids, attention_mask, mask_id=self.tokenizer.mask_id,
                           vocab_size=self.tokenizer.vocab_size, special_ids=self.special_ids(),
                           first_regular_id=self.tokenizer.offset, mlm_probability=mlm_probability,
                           generator=generator)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None):
        """transformers' MaskedLMOutput: ``loss`` (when labels are given) and ``logits`` [B, L, vocab]."""
        return self.mlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Weights + BERT config + k-mer tokenizer config; ``DNAEncoderConfig(pretrained=directory)`` reads it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():
            self.mlm.save_pretrained(str(directory))
        (directory / DNA_TOKENIZER_FILE).write_text(json.dumps(self.tokenizer.config.to_dict(), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DNAMaskedLM:
        """Rebuild from a saved directory (sizes from its config.json, k-mer layout from its tokenizer file)."""
        directory = Path(directory)
        bert = BertConfig.from_pretrained(str(directory))
        saved = directory / DNA_TOKENIZER_FILE
        tok = json.loads(saved.read_text()) if saved.exists() else {}
        config = DNAEncoderConfig(hidden_size=bert.hidden_size, num_layers=bert.num_hidden_layers,
                                  num_heads=bert.num_attention_heads, intermediate_size=bert.intermediate_size,
                                  **{k: tok[k] for k in ("k", "layout", "max_len") if k in tok},
                                  pretrained=str(directory))
        return cls(config)


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _text_positions(config: TextEncoderConfig) -> int:
    """Rows of the text BERT's position table (BERT-small's 512, or more for a longer max_len)."""
    return max(TEXT_MAX_POSITIONS, config.max_len)


def _text_bert_config(config: TextEncoderConfig, tokenizer: BertTokenizerFast) -> BertConfig:
    vocab_size = len(tokenizer) if config.vocab_size is None else config.vocab_size
    if vocab_size < len(tokenizer):
        raise ClibdError(f"model.text.vocab_size {vocab_size} is smaller than the text tokenizer's {len(tokenizer)} "
                         "tokens; use the tokenizer these weights were trained with, or raise vocab_size.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _bert_config(vocab_size, config.hidden_size, config.num_layers, config.num_heads,
                        config.intermediate_size, _text_positions(config), pad_id)


class TextEncoder(nn.Module):
    """BERT over WordPiece tokens of the taxonomy string → masked mean → Linear → unit vector."""

    def __init__(self, config: TextEncoderConfig, embed_dim: int, tokenizer: BertTokenizerFast,
                 load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.bert = BertModel(_text_bert_config(config, tokenizer), add_pooling_layer=False)
        if config.pretrained and load_pretrained:
            self._load_pretrained(config.pretrained)
        self.head = nn.Linear(config.hidden_size, embed_dim)

    def _load_pretrained(self, source_id: str) -> None:
        with _quiet_transformers():
            source = from_local_or_hub(BertModel.from_pretrained, source_id, what="text encoder weights",
                                       setting="model.text.pretrained", add_pooling_layer=False)
        missing = _copy_bert_weights(self.bert, source.state_dict(), f"text weights {source_id}")
        if missing:
            raise ClibdError(f"{source_id}: {len(missing)} text encoder weights missing (e.g. {missing[0]}).")

    def tokenize(self, texts: Sequence[str], prefix: str = "") -> dict[str, Tensor]:
        """Taxonomy strings → ``{prefix}input_ids`` / ``{prefix}attention_mask`` padded to ``max_len``."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.config.max_len,
                             return_tensors="pt")
        return {f"{prefix}input_ids": enc["input_ids"].long(), f"{prefix}attention_mask": enc["attention_mask"].long()}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.head(masked_mean(hidden, attention_mask)), dim=-1)


# ---------------------------------------------------------------------------------------------
# The CLIBD model
# ---------------------------------------------------------------------------------------------


class CLIBDModel(nn.Module):
    """The encoders of ``config.modalities`` plus the learnable contrastive temperature."""

    def __init__(self, config: ModelConfig, text_tokenizer: BertTokenizerFast | None = None,
                 load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        mods, dim = config.modalities, config.embed_dim
        self.image_encoder = ImageEncoder(config.image, dim, load_pretrained) if "image" in mods else None
        self.dna_encoder = DNAEncoder(config.dna, dim, load_pretrained) if "dna" in mods else None
        self.text_encoder = None
        if "text" in mods:
            tokenizer = text_tokenizer or _default_text_tokenizer(config.text)
            self.text_encoder = TextEncoder(config.text, dim, tokenizer, load_pretrained)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    def scale(self) -> Tensor:
        """exp(logit_scale), used as it is: the cap is applied to the parameter after each optimizer step.

        Clamping here instead (as this model once did) zeroes the gradient whenever the parameter is above
        the cap, so once an update overshoots, nothing ever brings it back and the optimizer's moments keep
        pushing it further; see :meth:`clamp_logit_scale`.
        """
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Cap logit_scale in place at ``max_logit_scale`` (OpenCLIP's log 100), after each optimizer step.

        As OpenCLIP does: the parameter itself never stays above the cap, so the temperature cannot
        collapse, and the forward pass keeps its gradient, so the optimizer can lower it again.
        """
        self.logit_scale.clamp_(max=self.config.max_logit_scale)

    def _encoder(self, modality: str) -> nn.Module:
        encoder = getattr(self, f"{modality}_encoder")
        if encoder is None:
            raise ValueError(f"this model has no {modality} encoder (modalities: {', '.join(self.config.modalities)})")
        return encoder

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        return self._encoder("image")(pixel_values)

    def encode_dna(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._encoder("dna")(input_ids, attention_mask)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._encoder("text")(input_ids, attention_mask)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unit embeddings for every modality this model has *and* the batch carries inputs for."""
        out: dict[str, Tensor] = {}
        if self.image_encoder is not None and "pixel_values" in batch:
            out["image"] = self.image_encoder(batch["pixel_values"])
        if self.dna_encoder is not None and "dna_input_ids" in batch:
            out["dna"] = self.dna_encoder(batch["dna_input_ids"], batch.get("dna_attention_mask"))
        if self.text_encoder is not None and "text_input_ids" in batch:
            out["text"] = self.text_encoder(batch["text_input_ids"], batch.get("text_attention_mask"))
        return out


def _default_text_tokenizer(config: TextEncoderConfig) -> BertTokenizerFast:
    """A pretrained text BERT brings its tokenizer; a from-scratch one needs a trained one passed in."""
    if config.pretrained:
        return load_text_tokenizer(config.pretrained)
    raise ClibdError("the text encoder is trained from scratch but no text tokenizer was given: build one with "
                     "clibd_training.text_tokenizer.train_text_tokenizer(texts) and pass it as text_tokenizer.")


def build_model(config: ModelConfig | Mapping[str, Any], text_tokenizer: BertTokenizerFast | None = None, *,
                load_pretrained: bool = True) -> CLIBDModel:
    """The CLIBD model for a config (or its dict); ``load_pretrained=False`` when weights come from a checkpoint."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    return CLIBDModel(config, text_tokenizer, load_pretrained)


def compile_blocks(model: nn.Module) -> int:
    """Compile each transformer block in place (regional ``torch.compile``); returns how many.

    Blocks rather than the whole model, as PyTorch's own guidance for transformers: the ViT's blocks and
    each BERT's layers are identical, so Inductor compiles one of each and reuses it (seconds, not
    minutes on the paper model); the HF wrapper code around the layers (masks, output classes) stays
    eager, so graph breaks cannot undo the gain; and ``Module.compile`` keeps parameter names, so
    checkpoints, resume and export see the same state dict.  Other backbones (CNNs) stay eager.
    """
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, BertEncoder):
            blocks += list(module.layer)
        elif isinstance(module, timm.models.vision_transformer.VisionTransformer):
            blocks += list(module.blocks)
    for block in blocks:
        block.compile()
    return len(blocks)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per encoder (image/dna/text present in the model), logit_scale and total."""
    counts: dict[str, int] = {}
    for modality in MODALITIES:
        encoder = getattr(model, f"{modality}_encoder", None)
        if encoder is not None:
            counts[modality] = sum(p.numel() for p in encoder.parameters())
    if isinstance(getattr(model, "logit_scale", None), nn.Parameter):
        counts["logit_scale"] = model.logit_scale.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def without_pretrained(config: ModelConfig) -> ModelConfig:
    """The same architecture with every pretrained source switched off (sizing, resuming, tests)."""
    return replace(config, image=replace(config.image, pretrained=False), dna=replace(config.dna, pretrained=None),
                   text=replace(config.text, pretrained=None))
