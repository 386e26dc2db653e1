"""`clibd models list/get` and `--model NAME`, offline, on a small checkpoint in the official layout.

The published checkpoints cannot be downloaded here, so a Hugging Face hub cache is built in the test with the
cache's real layout (``models--ORG--NAME/refs/main`` and ``snapshots/<commit>/FILE``) holding a small random
checkpoint with the official names (the helper of test_official.py) and a WordPiece ``vocab.txt`` under
``prajjwal1/bert-small``.  ``CLIBD_MODEL_CATALOGUE`` points a model name at that repository, ``HF_HUB_OFFLINE=1``
forbids the network, and ``CLIBD_HOME`` keeps installs in the test's folder.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")

from conftest import invoke, jpeg, one_error_line, read_rows  # noqa: E402
from PIL import Image  # noqa: E402
from test_official import SEQUENCES, SMALL, TEXTS, official_state  # noqa: E402

from clibd_training.text_tokenizer import train_text_tokenizer  # noqa: E402

NAME = "tiny-clibd"
REPO = "test-org/clibd-small"
FILE = "ckpt/bioscan_clip/ver_1_0/tiny/image_dna_text_4gpu/best.pth"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKENIZER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def put_in_hub_cache(hub, repo: str, commit: str, filename: str, data: bytes):
    """A file as huggingface_hub caches it: the snapshot of ``commit``, with refs/main naming that commit."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return path


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """(bytes of a small official-layout best.pth, its state dict, a vocab.txt for its text encoder)."""
    folder = tmp_path_factory.mktemp("official")
    state = official_state(SMALL)
    torch.save(state, folder / "best.pth")
    tokenizer = train_text_tokenizer(TEXTS * 3, vocab_size=300, lowercase=True)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])  # vocab.txt: one token per line, by id
    return (folder / "best.pth").read_bytes(), state, "".join(f"{token}\n" for token, _ in vocab).encode()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty hub cache and clibd cache, offline, with a catalogue naming the small model; returns the folders."""
    hub, home = tmp_path / "hf" / "hub", tmp_path / "clibd-home"
    hub.mkdir(parents=True)
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"models": [
        {"name": NAME, "description": "small random test model", "modalities": ["image", "dna", "text"],
         "repo": REPO, "filename": FILE}]}))
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_HOME": tmp_path / "hf", "HF_HUB_CACHE": hub, "CLIBD_HOME": home,
                       "CLIBD_MODEL_CATALOGUE": catalogue, "COLUMNS": "250"}.items():
        monkeypatch.setenv(key, str(value))
    return hub, home


@pytest.fixture
def cached(offline, small_checkpoint):
    """The hub cache holding the small checkpoint and its tokenizer vocabulary."""
    hub, home = offline
    data, _, vocab = small_checkpoint
    checkpoint = put_in_hub_cache(hub, REPO, COMMIT, FILE, data)
    put_in_hub_cache(hub, "prajjwal1/bert-small", TOKENIZER_COMMIT, "vocab.txt", vocab)
    return hub, home, checkpoint


def listed(result) -> dict[str, list[str]]:
    """`models list` table rows by model name (cells split on the table's vertical bars)."""
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) >= 6 and cells[0] and cells[0] != "name":
            rows[cells[0]] = cells
    return rows


def photos(folder, n: int = 3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(80 + 10 * i, 96, 3), dtype=np.uint8)
        (folder / f"p{i}.jpg").write_bytes(jpeg(Image.fromarray(pixels)))
    return folder


# ---------------------------------------------------------------------------------------------


def test_get_installs_a_verified_bundle_that_list_and_model_name_use(cached, small_checkpoint, tmp_path):
    import hashlib

    from clibd_cli.bundle import ModelBundle
    from clibd_cli.preprocess import preprocess_image
    from clibd_export.official import load_official

    _hub, home, checkpoint = cached
    before = listed(invoke("models", "list"))
    assert before[NAME][1] == "no" and before[NAME][4] == REPO and before[NAME][5] == FILE
    assert before[NAME][2:4] == ["photos, barcodes, taxonomy text", "small random test model"]

    result = invoke("models", "get", NAME)
    assert result.exit_code == 0, result.output
    folder = home / "models" / NAME
    bundle = ModelBundle.load(folder, device="cpu")
    source = bundle.manifest["source"]
    assert source["kind"] == "official"
    assert (source["hub_repo"], source["hub_file"], source["hub_revision"]) == (REPO, FILE, COMMIT)
    assert source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert bundle.modalities == ("image", "dna", "text") and bundle.name == NAME
    assert all(part["cosine_min"] >= 0.9999 for parts in bundle.manifest["parity"].values() for part in parts.values())
    assert "ONNX vs PyTorch" in result.stdout and f"--model {NAME}" in result.stderr
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]  # no staging left behind
    # the text tokenizer is the vocabulary from the cache (not a default one)
    vocab = small_checkpoint[2].decode().split()
    assert json.loads((folder / "text_tokenizer" / "tokenizer.json").read_text())["model"]["vocab"].keys() == set(vocab)

    after = listed(invoke("models", "list"))
    assert after[NAME][1] == "yes"

    # --model NAME: embed photos and barcodes with the installed bundle; the vectors are the imported model's
    images = photos(tmp_path / "photos")
    out = tmp_path / "photos.npy"
    result = invoke("embed", images, "--model", NAME, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    model = load_official(checkpoint, text_tokenizer=folder / "text_tokenizer").model
    ids = [row["id"] for row in read_rows(tmp_path / "photos.ids.tsv")]
    assert vectors.shape == (3, SMALL.embed) and len(ids) == 3
    files = [next(f for f in images.iterdir() if f.stem == ident or f.name == ident or str(f) == ident)
             for ident in ids]
    pixels = np.stack([preprocess_image(f, bundle.preprocessing) for f in files])
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels)).numpy()
    assert (vectors * expected).sum(axis=1).min() >= 0.9999

    fasta = tmp_path / "dna.fasta"
    fasta.write_text("".join(f">s{i}\n{seq}\n" for i, seq in enumerate(SEQUENCES)))
    by_name, by_path = tmp_path / "name.npy", tmp_path / "path.npy"
    assert invoke("embed", fasta, "--modality", "dna", "--model", NAME, "-o", by_name).exit_code == 0
    assert invoke("embed", fasta, "--modality", "dna", "--model", folder, "-o", by_path).exit_code == 0
    np.testing.assert_array_equal(np.load(by_name), np.load(by_path))  # a folder path still works, same model

    # a second get keeps the installed copy
    stamp = (folder / "clibd-model.json").stat().st_mtime_ns
    again = invoke("models", "get", NAME)
    assert again.exit_code == 0 and "already installed" in again.stderr
    assert (folder / "clibd-model.json").stat().st_mtime_ns == stamp
    # --force installs again over it (the old copy is swapped out, nothing is left beside it)
    forced = invoke("models", "get", NAME, "--force")
    assert forced.exit_code == 0, forced.output
    assert (folder / "clibd-model.json").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in (home / "models").iterdir()) == [NAME]
    np.testing.assert_array_equal(ModelBundle.load(folder, device="cpu").embed_dna(SEQUENCES), np.load(by_path))


def test_get_offline_with_an_empty_cache_names_the_files_to_get(offline):
    hub, home = offline
    line = one_error_line(invoke("models", "get", NAME), f"https://huggingface.co/{REPO}/resolve/main/{FILE}",
                          "https://huggingface.co/prajjwal1/bert-small/resolve/main/vocab.txt", str(hub),
                          "HF_HUB_OFFLINE", f"hf download {REPO} {FILE}", "clibd export best.pth --from-official")
    assert "--text-tokenizer" in line
    assert not (home / "models" / NAME).exists()


def test_get_offline_names_only_what_is_missing(offline, small_checkpoint):
    hub, _home = offline
    put_in_hub_cache(hub, "prajjwal1/bert-small", TOKENIZER_COMMIT, "vocab.txt", small_checkpoint[2])
    line = one_error_line(invoke("models", "get", NAME), FILE)
    assert "bert-small" not in line


def test_unknown_and_uninstalled_names_for_model_are_one_line(offline, tmp_path, monkeypatch):
    fasta = tmp_path / "dna.fasta"
    fasta.write_text(">a\nACGT\n")
    one_error_line(invoke("embed", fasta, "--modality", "dna", "--model", "no-such-model", "-o", tmp_path / "a.npy"),
                   "no-such-model", "clibd models list")
    one_error_line(invoke("embed", fasta, "--modality", "dna", "--model", NAME, "-o", tmp_path / "b.npy"),
                   f"clibd models get {NAME}")
    one_error_line(invoke("models", "get", "no-such-model"), "no-such-model", NAME, "clibd models list")
    # a path (with a separator) that does not exist is still reported as a missing bundle folder
    one_error_line(invoke("embed", fasta, "--modality", "dna", "--model", tmp_path / "nowhere", "-o",
                          tmp_path / "c.npy"), "no such model bundle")
    # a folder named like a model comes first (here: one that is not a bundle)
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    one_error_line(invoke("embed", fasta, "--modality", "dna", "--model", NAME, "-o", tmp_path / "d.npy"),
                   "not a clibd model bundle")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG cache folder is Linux's")
def test_installs_go_to_the_user_cache_folder_unless_clibd_home_is_set(tmp_path, monkeypatch):
    from clibd_cli.model_cache import models_dir

    monkeypatch.delenv("CLIBD_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models_dir() == tmp_path / "xdg" / "clibd" / "models"
    monkeypatch.setenv("CLIBD_HOME", str(tmp_path / "elsewhere"))
    assert models_dir() == tmp_path / "elsewhere" / "models"


def test_a_checkpoint_holding_code_is_refused_not_run(offline, small_checkpoint, tmp_path):
    """The .pth is a pickle: the importer reads tensors only, so code hidden in it never runs."""
    import io
    import pathlib

    hub, home = offline
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    buffer = io.BytesIO()
    torch.save({"image_encoder.base_image_encoder.pos_embed": torch.zeros(1), "extra": Payload()}, buffer)
    put_in_hub_cache(hub, REPO, COMMIT, FILE, buffer.getvalue())
    put_in_hub_cache(hub, "prajjwal1/bert-small", TOKENIZER_COMMIT, "vocab.txt", small_checkpoint[2])
    one_error_line(invoke("models", "get", NAME), "best.pth", "cannot be read as a PyTorch checkpoint of tensors")
    assert not marker.exists()
    assert not (home / "models" / NAME).exists()


def test_missing_conversion_libraries_are_one_line(cached, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the 'export' extra were not installed
    one_error_line(invoke("models", "get", NAME), "onnxscript", "pip install 'clibd[train,export]'")


def test_a_broken_catalogue_file_is_one_line(offline, tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": [{"name": "x", "repo": "a/b", "filename": "f.pth", "modalities": ["photo"]}]}')
    monkeypatch.setenv("CLIBD_MODEL_CATALOGUE", str(bad))
    one_error_line(invoke("models", "list"), str(bad), "model 1", "modalities")
    bad.write_text("{not json")
    one_error_line(invoke("models", "get", "x"), str(bad), "not valid JSON")


def test_built_in_catalogue_follows_the_official_hub_layout(monkeypatch):
    """Each published name points at bioscan-ml/clibd, ckpt/bioscan_clip/ver_1_0/<dataset>/<run>/best.pth."""
    import re

    from clibd_cli.published import catalogue

    monkeypatch.delenv("CLIBD_MODEL_CATALOGUE", raising=False)
    entries = [e for e in catalogue() if e.kind == "official"]  # bioclip (open_clip) is tested in test_bioclip.py
    assert len({e.name for e in catalogue()}) == len(catalogue()) and len(entries) >= 4
    for entry in entries:
        assert entry.repo == "bioscan-ml/clibd" and entry.kind == "official"
        match = re.fullmatch(r"ckpt/bioscan_clip/ver_1_0/(bioscan_1m|bioscan_5m)/(image_dna_text|image_dna)_4gpu/"
                             r"best\.pth", entry.filename)
        assert match, entry.filename
        assert ("text" in entry.modalities) == (match[2] == "image_dna_text")
        assert entry.url == f"https://huggingface.co/bioscan-ml/clibd/resolve/main/{entry.filename}"
