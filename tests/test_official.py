"""Importing official CLIBD checkpoints: our imported model must reproduce the official forward pass.

The official checkpoints cannot be downloaded here, so a random state dict with exactly their names and
shapes is built from transformers/timm modules (LoRA keys added as the official code names them).  The
reference forward below is written from that raw state dict, independently of our model classes: a
hand-written ViT that applies LoRA as x·Aᵀ·Bᵀ on q and v, transformers' BertForMaskedLM with the decoder
replaced by Linear(hidden → embed) + softmax + mean over all positions, and BertModel + proj with a masked mean.
The full-size (ViT-B/16, BarcodeBERT 12 × 768, BERT-small) comparison is slow; a reduced model with the same
names runs by default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from transformers import BertConfig, BertForMaskedLM, BertModel  # noqa: E402

from clibd_cli.errors import ClibdError, InputError  # noqa: E402
from clibd_cli.sequences import taxonomy_text  # noqa: E402
from clibd_cli.tokenizer import KmerTokenizer  # noqa: E402
from clibd_export.official import (  # noqa: E402
    OFFICIAL_PREPROCESSING,
    convert_official_state_dict,
    load_official,
    official_config,
    read_official_state_dict,
)
from clibd_training.models import MissingPretrainedError, ModelConfig, tiny_config  # noqa: E402
from clibd_training.text_tokenizer import train_text_tokenizer  # noqa: E402

IMAGE = "image_encoder.base_image_encoder."
DNA = "dna_encoder.base_dna_encoder."
TEXT = "language_encoder.base_language_encoder."
LORA_RANK = 4

LINEAGES = [
    ("Diptera", "Cecidomyiidae", "Lestodiplosis", "Lestodiplosis pallidicornis"),
    ("Lepidoptera", "Noctuidae", "Agrotis", "Agrotis ipsilon"),
    ("Coleoptera", "Carabidae", "Carabus", ""),
]
TEXTS = [taxonomy_text(dict(zip(("order", "family", "genus", "species"), lineage, strict=True)))
         for lineage in LINEAGES]
SEQUENCES = ["ACGTTGCA" * 83, "TTGACCGATAGGCT" * 40, "ACGTNACGTA" * 30 + "AC", "GATTACA" * 50]


@dataclass(frozen=True)
class Sizes:
    vit: str  # timm name: gives the official timm key names and shapes
    dna_hidden: int
    dna_layers: int
    dna_ffn: int
    text_hidden: int
    text_layers: int
    text_ffn: int
    text_vocab: int
    embed: int


FULL = Sizes("vit_base_patch16_224", 768, 12, 3072, 512, 4, 2048, 30522, 768)
SMALL = Sizes("vit_tiny_patch16_224", 128, 2, 256, 128, 2, 256, 1000, 96)


def _bert_config(vocab: int, hidden: int, layers: int, ffn: int) -> BertConfig:
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                      intermediate_size=ffn, max_position_embeddings=512, type_vocab_size=2,
                      tie_word_embeddings=False)


def dna_bert_config(s: Sizes) -> BertConfig:
    return _bert_config(4**5 + 3, s.dna_hidden, s.dna_layers, s.dna_ffn)


def text_bert_config(s: Sizes) -> BertConfig:
    return _bert_config(s.text_vocab, s.text_hidden, s.text_layers, s.text_ffn)


def official_shapes(s: Sizes) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every name and shape of an official checkpoint, taken from the real modules (built on 'meta')."""
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {"logit_scale": ((), torch.float32)}
    with torch.device("meta"):
        vit = timm.create_model(s.vit, pretrained=False, num_classes=s.embed)
        dna = BertForMaskedLM(dna_bert_config(s))
        text = BertModel(text_bert_config(s), add_pooling_layer=True)
    for key, value in vit.state_dict().items():
        if match := re.fullmatch(r"(blocks\.\d+\.attn\.qkv)\.(weight|bias)", key):
            block, dim = match[1], value.shape[-1]
            shapes[f"{IMAGE}{block}.qkv.{match[2]}"] = (tuple(value.shape), value.dtype)
            if match[2] == "weight":
                for qv in "qv":
                    shapes[f"{IMAGE}{block}.linear_a_{qv}.weight"] = ((LORA_RANK, dim), torch.float32)
                    shapes[f"{IMAGE}{block}.linear_b_{qv}.weight"] = ((dim, LORA_RANK), torch.float32)
        else:
            shapes[IMAGE + key] = (tuple(value.shape), value.dtype)
    for key, value in dna.state_dict().items():
        if key.startswith("cls.predictions.decoder."):  # the official code replaced it by Linear(hidden → embed)
            value = torch.empty((s.embed, s.dna_hidden) if key.endswith("weight") else (s.embed,), device="meta")
        shapes[DNA + key] = (tuple(value.shape), value.dtype)
    for key, value in text.state_dict().items():
        shapes[TEXT + key] = (tuple(value.shape), value.dtype)
    shapes["language_encoder.proj.weight"] = ((s.embed, s.text_hidden), torch.float32)
    shapes["language_encoder.proj.bias"] = ((s.embed,), torch.float32)
    # Older transformers saved the position_ids buffer, and the official checkpoints have it.
    for prefix in (DNA + "bert.", TEXT):
        shapes[prefix + "embeddings.position_ids"] = ((1, 512), torch.int64)
    return shapes


def official_state(s: Sizes, seed: int = 0, device: str = "cpu") -> dict[str, Tensor]:
    """Random weights with the official names: std 0.02, LayerNorm scales near 1, strong LoRA deltas."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, (shape, dtype) in official_shapes(s).items():
        if device == "meta":
            state[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif key.endswith("position_ids"):
            state[key] = torch.arange(shape[-1]).reshape(shape)
        elif key == "logit_scale":
            state[key] = torch.tensor(math.log(1 / 0.07))
        elif ".linear_" in key or key.endswith("cls.predictions.decoder.weight"):
            # LoRA A and B large enough to change the output clearly; a DNA decoder giving a peaky softmax,
            # so that DNA embeddings of different inputs differ clearly
            state[key] = torch.randn(shape, generator=gen) * 0.15
        elif "norm" in key.lower() and key.endswith("weight"):
            state[key] = 1.0 + torch.randn(shape, generator=gen) * 0.02
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    return state


# ---------------------------------------------------------------------------------------------
# The independent reference forward
# ---------------------------------------------------------------------------------------------


def strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.endswith("position_ids")}


def reference_image(state: dict[str, Tensor], pixels: Tensor, lora: bool = True) -> Tensor:
    """A hand-written timm ViT (pre-norm, LayerNorm eps 1e-6, exact GELU, CLS token) with LoRA on q and v."""
    p = strip(state, IMAGE)
    dim = p["cls_token"].shape[-1]
    heads = dim // 64
    x = F.conv2d(pixels, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + p["pos_embed"]
    depth = len({k.split(".")[1] for k in p if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), p[b + "norm1.weight"], p[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, p[b + "attn.qkv.qkv.weight"], p[b + "attn.qkv.qkv.bias"]).split(dim, dim=-1)
        if lora:
            q = q + h @ p[b + "attn.qkv.linear_a_q.weight"].T @ p[b + "attn.qkv.linear_b_q.weight"].T
            v = v + h @ p[b + "attn.qkv.linear_a_v.weight"].T @ p[b + "attn.qkv.linear_b_v.weight"].T
        q, k, v = (t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in (q, k, v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(out, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        h = F.layer_norm(x, (dim,), p[b + "norm2.weight"], p[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"])),
                     p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
        x = x + h
    cls = F.layer_norm(x, (dim,), p["norm.weight"], p["norm.bias"], eps=1e-6)[:, 0]
    return F.normalize(F.linear(cls, p["head.weight"], p["head.bias"]), dim=-1)


def reference_dna(state: dict[str, Tensor], s: Sizes, sequences: list[str]) -> Tensor:
    """BertForMaskedLM with the decoder replaced, on [0] + k-mer ids, softmax, mean over all 133 positions."""
    mlm = BertForMaskedLM(dna_bert_config(s))
    mlm.cls.predictions.decoder = nn.Linear(s.dna_hidden, s.embed)
    mlm.load_state_dict(strip(state, DNA), strict=True)
    ids, _ = KmerTokenizer(k=5, layout="legacy")(sequences)
    assert ids.shape[1] == 133 and (ids[:, 0] == 0).all()
    logits = mlm.eval()(input_ids=torch.from_numpy(ids)).logits
    return F.normalize(torch.softmax(logits, dim=-1).mean(dim=1), dim=-1)


def reference_text(state: dict[str, Tensor], s: Sizes, input_ids: Tensor, mask: Tensor) -> Tensor:
    bert = BertModel(text_bert_config(s), add_pooling_layer=True)
    bert.load_state_dict(strip(state, TEXT), strict=True)
    hidden = bert.eval()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    mean = (hidden * weights).sum(1) / weights.sum(1)
    return F.normalize(F.linear(mean, state["language_encoder.proj.weight"], state["language_encoder.proj.bias"]),
                       dim=-1)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    train_text_tokenizer(TEXTS * 3, vocab_size=300, out_dir=directory)
    return directory


def _official(tmp_path_factory, sizes: Sizes):
    state = official_state(sizes)
    path = tmp_path_factory.mktemp("official") / "best.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _official(tmp_path_factory, SMALL)


def compare_with_reference(path, state, sizes: Sizes, tokenizer_dir) -> dict[str, float]:
    """Our imported model vs the reference on a few inputs; returns each modality's worst |difference|."""
    imported = load_official(path, text_tokenizer=tokenizer_dir)
    model = imported.model
    assert not model.training
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 224, 224)  # official input: [0, 1], no normalisation
    dna = model.dna_encoder.tokenize(SEQUENCES)
    text = model.text_encoder.tokenize(TEXTS)
    with torch.no_grad():
        ours = {"image": model.encode_image(pixels), "dna": model.encode_dna(**dna), "text": model.encode_text(**text)}
        ref = {"image": reference_image(state, pixels), "dna": reference_dna(state, sizes, SEQUENCES),
               "text": reference_text(state, sizes, text["input_ids"], text["attention_mask"])}
        no_lora = reference_image(state, pixels, lora=False)
    worst = {}
    for modality, embedding in ours.items():
        assert embedding.shape == ref[modality].shape == (ref[modality].shape[0], sizes.embed)
        worst[modality] = (embedding - ref[modality]).abs().max().item()
        assert worst[modality] < 1e-4, (modality, worst[modality])
        assert F.cosine_similarity(embedding, ref[modality]).min() > 0.9999
        # the comparison means something: different inputs give clearly different embeddings
        spread = (ref[modality][0] - ref[modality][1]).abs().max().item()
        assert spread > 100 * max(worst[modality], 1e-7), (modality, spread, worst[modality])
    # LoRA was merged: ignoring it gives a clearly different image embedding
    assert (no_lora - ours["image"]).abs().max() > 100 * max(worst["image"], 1e-7)
    assert imported.preprocessing == OFFICIAL_PREPROCESSING
    assert imported.text_tokenizer is model.text_encoder.tokenizer
    assert len(imported.source_sha256) == 64
    return worst


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_imported_small_model_matches_the_official_forward(small, tokenizer_dir):
    path, state = small
    compare_with_reference(path, state, SMALL, tokenizer_dir)


@pytest.mark.slow
def test_imported_full_size_model_matches_the_official_forward(tmp_path_factory, tokenizer_dir):
    path, state = _official(tmp_path_factory, FULL)
    compare_with_reference(path, state, FULL, tokenizer_dir)
    del state
    check_official_bundle(path, tokenizer_dir, tmp_path_factory.mktemp("bundle") / "official", FULL)


def check_official_bundle(path, tokenizer_dir, bundle_dir, sizes: Sizes) -> None:
    """`clibd export --from-official` writes a bundle that embeds real BIOSCAN photos like the torch model."""
    import numpy as np
    from conftest import shared_path
    from typer.testing import CliRunner

    from clibd_cli.app import app
    from clibd_cli.bundle import ModelBundle
    from clibd_cli.photos import collect_photos
    from clibd_cli.preprocess import preprocess_image

    images = shared_path("images/bioscan1m_cropped_examples")
    result = CliRunner().invoke(app, ["export", str(path), "--from-official", "--text-tokenizer", str(tokenizer_dir),
                                      "-o", str(bundle_dir), "--sample-images", str(images)])
    assert result.exit_code == 0, result.output
    bundle = ModelBundle.load(bundle_dir, device="cpu")
    assert bundle.manifest["source"]["kind"] == "official"
    assert bundle.manifest["modalities"]["dna"]["tokenizer"] == {"k": 5, "layout": "legacy", "max_len": 660}
    assert bundle.preprocessing == OFFICIAL_PREPROCESSING
    assert bundle.manifest["parity"]["image"]["real"]["n"] >= 5
    photos, _ = collect_photos([images])
    pixels = np.stack([preprocess_image(photo.path, bundle.preprocessing) for photo in photos])
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0  # no normalisation, as the official model expects
    embeddings = bundle.embed_pixels(pixels)
    assert embeddings.shape == (len(photos), sizes.embed) and np.isfinite(embeddings).all()
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    model = load_official(path, text_tokenizer=tokenizer_dir).model
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels)).numpy()
    assert (embeddings * expected).sum(axis=1).min() >= 0.9999
    assert bundle.embed_dna(SEQUENCES).shape == (len(SEQUENCES), sizes.embed)


def test_official_bundle_embeds_real_photos(small, tokenizer_dir, tmp_path):
    check_official_bundle(small[0], tokenizer_dir, tmp_path / "official", SMALL)


def test_official_config_reads_the_paper_architecture_from_shapes():
    state = official_state(FULL, device="meta")  # shapes only: official_config never reads values but the scale
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    config = official_config(state)
    assert config.modalities == ("image", "dna", "text")
    assert config.embed_dim == 768
    assert (config.image.model_name, config.image.image_size, config.image.pretrained) == \
        ("vit_base_patch16_224", 224, False)
    dna = config.dna
    assert (dna.k, dna.layout, dna.pooling, dna.max_len, dna.pretrained) == (5, "legacy", "softmax_mean", 660, None)
    assert (dna.num_layers, dna.hidden_size, dna.num_heads, dna.intermediate_size) == (12, 768, 12, 3072)
    text = config.text
    assert (text.num_layers, text.hidden_size, text.num_heads, text.intermediate_size) == (4, 512, 8, 2048)
    assert (text.vocab_size, text.max_len, text.pretrained) == (30522, 20, None)
    assert config.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_conversion_drops_unused_tensors_and_cuts_position_tables(small):
    _, state = small
    converted = convert_official_state_dict(state)
    assert not [k for k in converted if k.endswith("position_ids") or ".linear_" in k or "pooler" in k]
    assert "dna_encoder.head.weight" in converted and "dna_encoder.transform.dense.weight" in converted
    assert not [k for k in converted if k.startswith("dna_encoder.cls") or k.endswith("predictions.bias")]
    table = converted["dna_encoder.bert.embeddings.position_embeddings.weight"]
    assert table.shape[0] == 133 + 2  # ours: the legacy 133 tokens (+2 as in BERT); the official one has 512
    torch.testing.assert_close(table, state[DNA + "bert.embeddings.position_embeddings.weight"][:135])
    assert converted["text_encoder.bert.embeddings.position_embeddings.weight"].shape[0] == 512
    block = IMAGE + "blocks.0.attn.qkv."
    dim = state[block + "qkv.weight"].shape[1]
    merged = converted["image_encoder.backbone.blocks.0.attn.qkv.weight"]
    delta = merged - state[block + "qkv.weight"]
    torch.testing.assert_close(delta[:dim], state[block + "linear_b_q.weight"] @ state[block + "linear_a_q.weight"])
    torch.testing.assert_close(delta[2 * dim:], state[block + "linear_b_v.weight"] @ state[block + "linear_a_v.weight"])
    assert delta[dim:2 * dim].abs().max() == 0  # k is untouched


def test_wrapped_checkpoint_with_module_prefix_loads(tmp_path, small, tokenizer_dir):
    path, state = small
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert read_official_state_dict(wrapped).keys() == state.keys()
    first, second = load_official(path, tokenizer_dir).model, load_official(wrapped, tokenizer_dir).model
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_checkpoint_without_text_needs_no_tokenizer(tmp_path, small):
    _, state = small
    path = tmp_path / "image_dna.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("language_encoder.")}, path)
    imported = load_official(path)
    assert imported.model.config.modalities == ("image", "dna")
    assert imported.model.text_encoder is None and imported.text_tokenizer is None


def test_default_bert_small_tokenizer_fails_clearly_offline(small, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache" / "hub"))
    with pytest.raises(MissingPretrainedError, match="prajjwal1/bert-small"):
        load_official(small[0])


def test_files_that_are_not_official_checkpoints_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint file"):
        read_official_state_dict(tmp_path / "absent.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(InputError, match="cannot be read as a PyTorch checkpoint"):
        read_official_state_dict(text)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2), "logit_scale": torch.tensor(1.0)}, other)
    with pytest.raises(InputError, match="not an official CLIBD checkpoint") as info:
        load_official(other)
    assert str(other) in str(info.value)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(InputError, match="not a state dict"):
        read_official_state_dict(listed)


def test_unsupported_shapes_and_names_are_clear_errors(small):
    _, state = small
    deeper = {k: v for k, v in state.items() if ".blocks.11." not in k}
    with pytest.raises(InputError, match="none of the supported timm models"):
        official_config(deeper)
    with pytest.raises(InputError, match="unrecognised weight"):
        convert_official_state_dict({**state, "optimizer.step": torch.zeros(1)})


def test_new_config_fields_round_trip_and_are_validated():
    config = tiny_config()
    assert (config.dna.pooling, config.text.vocab_size) == ("mean", None)  # defaults unchanged
    raw = config.to_dict()
    raw["dna"]["pooling"] = "softmax_mean"
    raw["text"]["vocab_size"] = 512
    again = ModelConfig.from_dict(raw)
    assert (again.dna.pooling, again.text.vocab_size) == ("softmax_mean", 512)
    assert ModelConfig.from_dict(again.to_dict()) == again
    raw["dna"]["pooling"] = "max"
    with pytest.raises(ClibdError, match="pooling"):
        ModelConfig.from_dict(raw)
