"""`clibd models get bioclip`, offline, on a small open_clip CLIP of BioCLIP's layout in a local hub cache.

BioCLIP itself (600 MB) cannot be downloaded here, so the test saves a shrunk ViT-B/16-style open_clip CLIP
(2 layers, width 64, embed_dim 32; vocabulary 49,408 and 77 positions as the real one) as
``open_clip_config.json`` + ``open_clip_model.safetensors`` in a hub cache, points the name ``bioclip`` at it
with ``CLIBD_MODEL_CATALOGUE`` (the catalogue's file is the .bin, as for the real repository: a cached
safetensors file is preferred), installs it once for the module and checks the bundle against open_clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("onnx")

from conftest import invoke, one_error_line, read_rows  # noqa: E402
from test_models_get import listed, put_in_hub_cache  # noqa: E402

from clibd_cli.errors import InputError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REPO = "test-org/bioclip-small"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
CONFIG = {"model_cfg": {"embed_dim": 32,
                        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
          "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                             "std": [0.26862954, 0.26130258, 0.27577711]}}
TAXA = ["Coleoptera Carabidae Poecilus Poecilus lepidus", "Animalia Arthropoda Insecta Coleoptera Carabidae",
        "Diptera Cecidomyiidae sp. 1", "Hymenoptera Formicidae Camponotus sp. BIOUG12345-A7",
        "Lepidoptera Noctuidae Agrotis ipsilon (Hufnagel, 1766)", "d'Orbigny's beetle", "d’Orbigny’s beetle",
        "  Apis   mellifera\tL. ", "Müller's Käfer Œdemera", "ALLCAPS Genus-Species 3-spot", "Naïve café 12,345.6",
        "Ephemeroptera&amp;Odonata", "ﬁne ligature ＡＢＣ", "Trichoptera Hydropsychidae Cheumatopsyche sp. 'ML1'",
        "x", "", "Curculionidae " * 40, "a bad photo of a Coleoptera Carabidae Poecilus lepidus."]


def catalogue_entry(**extra) -> dict:
    return {"name": "bioclip", "description": "small BioCLIP-layout test model; no barcodes",
            "modalities": ["image", "text"], "repo": REPO, "filename": "open_clip_pytorch_model.bin",
            "kind": "open_clip", **extra}


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """(the small open_clip CLIP, the bytes of its safetensors file)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**CONFIG["model_cfg"]).eval()
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path.read_bytes()


def _environment(tmp_path, monkeypatch) -> tuple:
    hub, home = tmp_path / "hf" / "hub", tmp_path / "clibd-home"
    hub.mkdir(parents=True)
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"models": [catalogue_entry()]}))
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_HOME": tmp_path / "hf", "HF_HUB_CACHE": hub, "CLIBD_HOME": home,
                       "CLIBD_MODEL_CATALOGUE": catalogue, "COLUMNS": "250"}.items():
        monkeypatch.setenv(key, str(value))
    return hub, home


@pytest.fixture(scope="module")
def installed(tmp_path_factory, small_clip):
    """`clibd models get bioclip` run once, offline, from the cache: (home, result, env folder)."""
    tmp_path = tmp_path_factory.mktemp("bioclip")
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub, home = _environment(tmp_path, monkeypatch)
        put_in_hub_cache(hub, REPO, COMMIT, "open_clip_config.json", json.dumps(CONFIG).encode())
        put_in_hub_cache(hub, REPO, COMMIT, "open_clip_model.safetensors", small_clip[1])
        before = listed(invoke("models", "list"))
        result = invoke("models", "get", "bioclip")
        yield home, result, before, tmp_path, monkeypatch


@pytest.fixture
def bundle(installed):
    from clibd_cli.bundle import ModelBundle

    home, result, *_ = installed
    assert result.exit_code == 0, result.output
    return ModelBundle.load(home / "models" / "bioclip", device="cpu")


def test_get_installs_image_and_text_and_no_dna(installed, bundle):
    home, result, before, *_ = installed
    assert before["bioclip"][1] == "no" and before["bioclip"][2] == "photos, taxonomy text"
    assert "no barcodes" in before["bioclip"][3]
    assert bundle.modalities == ("image", "text") and bundle.name == "bioclip"
    folder = home / "models" / "bioclip"
    assert not (folder / "dna.onnx").exists() and "dna" not in bundle.manifest["modalities"]
    source = bundle.manifest["source"]
    assert (source["kind"], source["hub_repo"], source["hub_file"], source["hub_revision"]) == \
        ("open_clip", REPO, "open_clip_model.safetensors", COMMIT)  # the cached safetensors, not the .bin
    text = bundle.manifest["modalities"]["text"]
    assert text["tokenizer"]["kind"] == "clip_bpe" and len(text["prompts"]) == 80
    assert bundle.preprocessing.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert (bundle.preprocessing.size, bundle.preprocessing.resize, bundle.preprocessing.interpolation) == \
        (224, 224, "bicubic")
    assert all(p["cosine_min"] >= 0.9999 for parts in bundle.manifest["parity"].values() for p in parts.values())
    assert "--model bioclip" in result.stderr
    assert listed(invoke("models", "list"))["bioclip"][1] == "yes"


def test_tokenizer_ids_equal_open_clip(bundle):
    from open_clip.tokenizer import SimpleTokenizer

    ids, _ = bundle.tokenize_text(TAXA)
    expected = SimpleTokenizer(context_length=77)(TAXA).numpy()
    np.testing.assert_array_equal(ids, expected)
    assert ids[TAXA.index("Curculionidae " * 40), -1] == 49407  # truncated, <end_of_text> kept last


def test_onnx_embeddings_match_open_clip(bundle, small_clip):
    from PIL import Image

    from clibd_cli.preprocess import preprocess_image

    model = small_clip[0]
    photos = sorted((EXAMPLES / "photos").glob("*.jpg"))[:4]
    pixels = np.stack([preprocess_image(p, bundle.preprocessing) for p in photos])
    _, _, transform = open_clip.create_model_and_transforms("ViT-B-16")  # open_clip's own eval transform
    theirs = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos]).numpy()
    assert np.abs(pixels - theirs).mean() < 0.02  # same recipe (PIL bicubic, short side, centre crop)
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels), normalize=True).numpy()
    assert (bundle.embed_pixels(pixels) * expected).sum(axis=1).min() >= 0.9999

    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    prompts = bundle.manifest["modalities"]["text"]["prompts"]
    names = ["Coleoptera Carabidae Poecilus lepidus", "Diptera Sciaridae Bradysia sp.", "Hymenoptera Apidae Apis"]
    with torch.no_grad():
        rows = [model.encode_text(tokenizer([p.replace("{}", n) for p in prompts]), normalize=True).mean(0)
                for n in names]
    expected = torch.nn.functional.normalize(torch.stack(rows), dim=-1).numpy()
    given = ["Coleoptera Carabidae Poecilus Poecilus lepidus", "Diptera Sciaridae Bradysia sp.",
             "Hymenoptera Apidae Apis"]  # taxonomy strings as the index holds them: the repeated genus is said once
    assert (bundle.embed_text(given) * expected).sum(axis=1).min() >= 0.9999


def test_classify_photos_against_taxonomy_text(bundle, tmp_path):
    index = tmp_path / "idx"
    built = invoke("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--text-keys", "--model", "bioclip",
                   "-o", index, "--device", "cpu")
    assert built.exit_code == 0, built.output
    assert "no barcode encoder" in built.output
    out = tmp_path / "calls.tsv"
    photos = sorted((EXAMPLES / "photos").glob("*.jpg"))[:3]
    result = invoke("classify", *photos, "--model", "bioclip", "--index", index, "--against", "text", "-o", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 3 and all(r["against"] == "text" and r["status"] != "error" for r in rows)


def test_offline_without_the_files_names_them(tmp_path, monkeypatch):
    hub, home = _environment(tmp_path, monkeypatch)
    line = one_error_line(invoke("models", "get", "bioclip"),
                          f"https://huggingface.co/{REPO}/resolve/main/open_clip_config.json",
                          f"https://huggingface.co/{REPO}/resolve/main/open_clip_pytorch_model.bin", str(hub),
                          "HF_HUB_OFFLINE", f"hf download {REPO} open_clip_config.json")
    assert "--from-official" not in line
    assert not (home / "models" / "bioclip").exists()


def test_weights_holding_code_are_refused_not_run(tmp_path, small_clip):
    import io
    import pathlib

    from clibd_export.open_clip import load_open_clip

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    buffer = io.BytesIO()
    torch.save({"positional_embedding": torch.zeros(1), "extra": Payload()}, buffer)
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(buffer.getvalue())
    (tmp_path / "open_clip_config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(InputError, match="tensors only"):
        load_open_clip(tmp_path / "open_clip_config.json", tmp_path / "open_clip_pytorch_model.bin")
    assert not marker.exists()
    # a plain .bin state dict (what imageomics/bioclip publishes) loads
    torch.save(small_clip[0].state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model, _, _ = load_open_clip(tmp_path / "open_clip_config.json", tmp_path / "open_clip_pytorch_model.bin")
    assert torch.equal(model.text_projection, small_clip[0].text_projection)


def test_built_in_catalogue_has_bioclip(monkeypatch):
    from clibd_cli.published import find

    monkeypatch.delenv("CLIBD_MODEL_CATALOGUE", raising=False)
    entry = find("bioclip")
    assert entry is not None and entry.kind == "open_clip" and entry.repo == "imageomics/bioclip"
    assert entry.modalities == ("image", "text") and entry.filename == "open_clip_pytorch_model.bin"
