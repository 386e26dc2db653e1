"""CLIBD encoders on the tiny configuration: shapes, pooling, temperature, tokenizers, pretrained loading."""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")

import yaml  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from clibd_cli.errors import ClibdError  # noqa: E402
from clibd_cli.schema import RANKS, taxonomy_text  # noqa: E402
from clibd_training.models import (  # noqa: E402
    CLIBDModel,
    DNAEncoder,
    DNAMaskedLM,
    ImageEncoder,
    ImageEncoderConfig,
    MissingPretrainedError,
    ModelConfig,
    TextEncoderConfig,
    build_model,
    compile_blocks,
    count_parameters,
    tiny_config,
)
from clibd_training.text_tokenizer import load_text_tokenizer, train_text_tokenizer  # noqa: E402

LINEAGES = [
    ("Diptera", "Cecidomyiidae", "Lestodiplosis", "Lestodiplosis pallidicornis"),
    ("Diptera", "Chironomidae", "Tanytarsus", "Tanytarsus pallidicornis"),
    ("Lepidoptera", "Noctuidae", "Agrotis", "Agrotis ipsilon"),
    ("Coleoptera", "Carabidae", "Carabus", "Carabus auratus"),
    ("Hymenoptera", "Formicidae", "Formica", ""),
]
TEXTS = [taxonomy_text(dict(zip(RANKS, lineage, strict=True))) for lineage in LINEAGES]
DNA = ["ACGT" * 150, "TTGACC" * 60, "ACGTNACGTA" * 20, "GATTACA" * 94]


@pytest.fixture(scope="module")
def text_tokenizer():
    return train_text_tokenizer(TEXTS * 3, vocab_size=300)


@pytest.fixture(scope="module")
def model(text_tokenizer) -> CLIBDModel:
    torch.manual_seed(0)
    return build_model(tiny_config(), text_tokenizer).eval()


def make_batch(model: CLIBDModel, n: int = 4) -> dict:
    batch = {"pixel_values": torch.randn(n, 3, 32, 32)}
    batch |= model.dna_encoder.tokenize(DNA[:n], prefix="dna_")
    batch |= model.text_encoder.tokenize(TEXTS[:n], prefix="text_")
    return batch


def test_outputs_are_unit_embeddings_for_every_modality(model):
    with torch.no_grad():
        out = model(make_batch(model))
    assert set(out) == {"image", "dna", "text"}
    for emb in out.values():
        assert emb.shape == (4, 64)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))


def test_forward_returns_only_modalities_in_the_batch(model):
    batch = make_batch(model, 2)
    with torch.no_grad():
        assert set(model({k: v for k, v in batch.items() if k.startswith("dna_")})) == {"dna"}
        assert set(model({k: v for k, v in batch.items() if not k.startswith("dna_")})) == {"image", "text"}


def test_model_without_a_modality_ignores_its_inputs():
    config = replace(tiny_config(), modalities=("image", "dna"))
    model = build_model(config).eval()
    assert model.text_encoder is None
    batch = {"pixel_values": torch.randn(2, 3, 32, 32), **model.dna_encoder.tokenize(DNA[:2], prefix="dna_"),
             "text_input_ids": torch.ones(2, 20, dtype=torch.long)}
    with torch.no_grad():
        assert set(model(batch)) == {"image", "dna"}
    with pytest.raises(ValueError, match="no text encoder"):
        model.encode_text(batch["text_input_ids"])


def test_dna_mean_pooling_ignores_padded_positions(model):
    ids = model.dna_encoder.tokenize(DNA[:3])
    assert (ids["attention_mask"] == 0).any()
    scrambled = ids["input_ids"].clone()
    padding = ids["attention_mask"] == 0
    scrambled[padding] = torch.randint(2, model.dna_encoder.tokenizer.vocab_size, (int(padding.sum()),))
    with torch.no_grad():
        a = model.encode_dna(ids["input_ids"], ids["attention_mask"])
        b = model.encode_dna(scrambled, ids["attention_mask"])
    torch.testing.assert_close(a, b)


def test_logit_scale_starts_at_clip_value_and_scale_is_capped(model):
    fresh = build_model(replace(tiny_config(), modalities=("dna",)))
    assert fresh.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert fresh.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        fresh.logit_scale.fill_(10.0)
    fresh.clamp_logit_scale()  # the engine does this after every optimizer step; forward uses the parameter as is
    assert fresh.logit_scale.item() == pytest.approx(math.log(100))
    assert fresh.scale().item() == pytest.approx(100.0, rel=1e-5)


def test_backward_reaches_every_encoder_and_the_temperature(text_tokenizer):
    torch.manual_seed(1)
    model = build_model(tiny_config(), text_tokenizer).train()
    out = model(make_batch(model))
    pairs = [("image", "dna"), ("image", "text"), ("dna", "text")]
    target = torch.arange(4)
    loss = sum(torch.nn.functional.cross_entropy(model.scale() * out[a] @ out[b].T, target) for a, b in pairs)
    loss.backward()
    for name in ("image_encoder", "dna_encoder", "text_encoder"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert all(g is not None for g in grads[:3]), name
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, name
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


def test_taxonomy_text_skips_empty_ranks():
    assert taxonomy_text({"order": "Diptera", "family": "", "genus": None, "species": "Aedes  aegypti "}) == \
        "Diptera Aedes aegypti"
    assert taxonomy_text({}) == ""


def test_text_tokenizer_round_trips_and_saves(tmp_path, text_tokenizer):
    for text in TEXTS:
        ids = text_tokenizer(text)["input_ids"]
        assert ids[0] == text_tokenizer.cls_token_id and ids[-1] == text_tokenizer.sep_token_id
        assert text_tokenizer.decode(ids, skip_special_tokens=True) == text
    unseen = "Odonata Zygopteridae Quxbrisia"
    assert text_tokenizer.unk_token_id not in text_tokenizer(unseen)["input_ids"]  # pieces, not [UNK]
    trained = train_text_tokenizer(TEXTS, vocab_size=300, out_dir=tmp_path / "tok")
    loaded = load_text_tokenizer(tmp_path / "tok")
    assert loaded([*TEXTS, unseen])["input_ids"] == trained([*TEXTS, unseen])["input_ids"]
    with pytest.raises(ClibdError, match="tokenizer"):
        load_text_tokenizer(tmp_path)  # a directory without tokenizer files
    assert [loaded.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_dna_encoder_starts_from_saved_masked_lm(tmp_path):
    config = tiny_config().dna
    torch.manual_seed(2)
    mlm = DNAMaskedLM(config)
    mlm.save_pretrained(tmp_path / "mlm")
    encoder = DNAEncoder(replace(config, pretrained=str(tmp_path / "mlm")), embed_dim=16)
    theirs = mlm.bert.state_dict()
    for key, value in encoder.bert.state_dict().items():
        torch.testing.assert_close(value, theirs[key], msg=key)
    again = DNAMaskedLM.from_pretrained(tmp_path / "mlm")
    torch.testing.assert_close(again.mlm.cls.predictions.transform.dense.weight,
                               mlm.mlm.cls.predictions.transform.dense.weight)
    with pytest.raises(ClibdError, match="k=4"):
        DNAEncoder(replace(config, k=5, pretrained=str(tmp_path / "mlm")), embed_dim=16)


def test_hub_ids_fail_clearly_when_offline(monkeypatch, text_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = "clibd-tests/no-such-bert"
    config = replace(tiny_config(), modalities=("text",), text=replace(tiny_config().text, pretrained=missing))
    with pytest.raises(MissingPretrainedError, match=missing) as info:
        build_model(config, text_tokenizer)
    assert isinstance(info.value, ClibdError) and isinstance(info.value, RuntimeError)
    with pytest.raises(MissingPretrainedError, match=missing):
        load_text_tokenizer(missing)
    with pytest.raises(MissingPretrainedError, match="vit_tiny_patch16_224"):
        ImageEncoder(ImageEncoderConfig("vit_tiny_patch16_224", pretrained=True, image_size=32), embed_dim=8)


def test_from_scratch_text_needs_a_tokenizer():
    with pytest.raises(ClibdError, match="train_text_tokenizer"):
        build_model(tiny_config())


def test_mask_tokens_never_masks_padding_or_specials():
    mlm = DNAMaskedLM(tiny_config().dna)
    batch = mlm.tokenize(DNA)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    generator = torch.Generator().manual_seed(0)
    masked, labels = mlm.mask_tokens(ids, mask, mlm_probability=1.0, generator=generator)
    special = (ids == mlm.tokenizer.unk_id) | (ids == mlm.tokenizer.mask_id)
    assert (labels[mask == 0] == -100).all() and (masked[mask == 0] == ids[mask == 0]).all()
    assert (labels[special] == -100).all()
    chosen = (mask == 1) & ~special
    assert torch.equal(labels[chosen], ids[chosen])  # probability 1: every regular token is a target
    assert 0.7 < (masked[chosen] == mlm.tokenizer.mask_id).float().mean() < 0.9
    masked, labels = mlm.mask_tokens(ids, mask, mlm_probability=0.5, generator=generator)
    assert 0.4 < (labels[chosen] != -100).float().mean() < 0.6
    out = mlm(masked, mask, labels=labels)
    assert out.logits.shape == (*ids.shape, mlm.tokenizer.vocab_size) and torch.isfinite(out.loss)


def test_legacy_layout_keeps_its_leading_token():
    mlm = DNAMaskedLM(replace(tiny_config().dna, k=5, layout="legacy"))
    batch = mlm.tokenize(DNA)
    masked, labels = mlm.mask_tokens(batch["input_ids"], batch["attention_mask"], mlm_probability=1.0)
    assert (labels[:, 0] == -100).all() and (masked[:, 0] == 0).all()
    assert mlm.mlm.config.vocab_size == 4**5 + 3


def test_image_encoder_works_for_cnns_and_loads_local_weights(tmp_path):
    cnn = ImageEncoder(ImageEncoderConfig("resnet18", image_size=32), embed_dim=8)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    config = ImageEncoderConfig("vit_tiny_patch16_224", image_size=32)
    source = ImageEncoder(config, embed_dim=8)
    save_file(source.backbone.state_dict(), str(tmp_path / "vit.safetensors"))
    loaded = ImageEncoder(replace(config, pretrained=str(tmp_path / "vit.safetensors")), embed_dim=8)
    assert loaded.load_report["missing"] == []
    for key, value in loaded.backbone.state_dict().items():
        torch.testing.assert_close(value, source.backbone.state_dict()[key], msg=key)
    with pytest.raises(ClibdError, match="does not exist"):
        ImageEncoder(replace(config, pretrained=str(tmp_path / "absent.pth")), embed_dim=8)


def test_config_round_trips_through_dicts_and_yaml():
    config = tiny_config()
    assert ModelConfig.from_dict(asdict(config)) == config
    assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    assert ModelConfig.from_dict({"text": {"max_len": 32}}).text == TextEncoderConfig(max_len=32)
    with pytest.raises(ClibdError, match="colour"):
        ModelConfig.from_dict({"image": {"colour": 1}})
    with pytest.raises(ClibdError, match="modalities"):
        ModelConfig.from_dict({"modalities": ["audio"]})
    with pytest.raises(ClibdError, match="layout"):
        ModelConfig.from_dict({"dna": {"layout": "sideways"}})


def test_count_parameters_per_encoder(model):
    counts = count_parameters(model)
    assert set(counts) == {"image", "dna", "text", "logit_scale", "total"}
    assert counts["total"] == counts["image"] + counts["dna"] + counts["text"] + 1


def fake_hub_snapshot(cache, monkeypatch, repo_id: str):
    """An empty snapshot folder laid out like the Hugging Face cache, which is then the only cache."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_cached_hub_text_bert_and_tokenizer_load_offline(tmp_path, monkeypatch, text_tokenizer):
    from transformers import BertConfig, BertModel

    repo_id = "clibd-tests/tiny-bert"
    snapshot = fake_hub_snapshot(tmp_path / "hub", monkeypatch, repo_id)
    text = tiny_config().text
    source = BertModel(BertConfig(vocab_size=len(text_tokenizer), hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=128), add_pooling_layer=False)
    source.save_pretrained(str(snapshot))
    text_tokenizer.save_pretrained(str(snapshot))
    config = replace(tiny_config(), modalities=("text",), text=replace(text, pretrained=repo_id))
    model = build_model(config)  # the tokenizer comes from the same cached repo
    assert len(model.text_encoder.tokenizer) == len(text_tokenizer)
    for key, value in model.text_encoder.bert.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], msg=key)
    wrong = replace(config, text=replace(config.text, hidden_size=32))
    with pytest.raises(ClibdError, match="shape"):
        build_model(wrong)


def test_cached_timm_weights_load_offline(tmp_path, monkeypatch):
    import timm

    snapshot = fake_hub_snapshot(tmp_path / "hub", monkeypatch, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    source = timm.create_model("vit_tiny_patch16_224")  # as published: 224 px, 1000-class head
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    encoder = ImageEncoder(ImageEncoderConfig("vit_tiny_patch16_224", pretrained=True, image_size=32), embed_dim=8)
    theirs = source.state_dict()
    torch.testing.assert_close(encoder.backbone.blocks[0].attn.qkv.weight, theirs["blocks.0.attn.qkv.weight"])
    assert encoder.backbone.pos_embed.shape[1] == 1 + 2 * 2  # resampled to a 2 × 2 patch grid


def test_compile_blocks_compiles_every_transformer_block_and_keeps_parameter_names(text_tokenizer):
    """`compile: true` compiles the ViT's blocks and both BERTs' layers in place: a checkpoint saved from a
    compiled run must load into an eager model (and export), so no key may gain an ``_orig_mod`` prefix."""
    model = build_model(tiny_config(), text_tokenizer)
    keys = list(model.state_dict())
    expected = (len(model.image_encoder.backbone.blocks) + model.dna_encoder.bert.config.num_hidden_layers
                + model.text_encoder.bert.config.num_hidden_layers)
    assert compile_blocks(model) == expected > 0
    assert list(model.state_dict()) == keys
    assert all(block._compiled_call_impl is not None for block in model.image_encoder.backbone.blocks)


def test_compile_is_refused_with_accumulation():
    from clibd_training.config import load_config

    assert load_config("tiny-cpu", ["compile=true"]).compile
    with pytest.raises(ClibdError, match="compile and grad_accum > 1"):
        load_config("tiny-cpu", ["compile=true", "grad_accum=2"])
