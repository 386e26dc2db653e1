"""Model bundles: `clibd export` output, checksums, parity with PyTorch, int8, device choice."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clibd_cli.app import app
from clibd_cli.bundle import MANIFEST, BundleError, ModelBundle, make_session, sha256_file, write_manifest
from clibd_cli.errors import ClibdError, InputError
from clibd_cli.preprocess import preprocess_image
from clibd_cli.sequences import taxonomy_text
from clibd_export.onnx import _int8_verdict, load_checkpoint, neighbour_agreement, quantize_int8

runner = CliRunner()


def rows_of(sim):
    with open(sim / "specimens.tsv") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def cosines(a, b):
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_manifest_lists_checked_files_and_parity(tiny_model):
    manifest = json.loads((tiny_model.bundle / MANIFEST).read_text())
    assert manifest["format"] == "clibd-model" and manifest["format_version"] == 2
    assert list(manifest["modalities"]) == ["image", "dna", "text"]
    assert manifest["embed_dim"] == 64
    assert manifest["source"]["sha256"] == sha256_file(tiny_model.checkpoint)
    image = manifest["modalities"]["image"]
    assert image["preprocessing"]["size"] == 32 and image["preprocessing"]["resize"] == 36
    assert manifest["modalities"]["dna"]["tokenizer"] == {"k": 4, "layout": "current", "max_len": 660}
    for spec in manifest["modalities"].values():
        assert sha256_file(tiny_model.bundle / spec["file"]) == spec["sha256"]
    for modality, parity in manifest["parity"].items():
        assert set(parity) == {"random", "real"}, modality
        assert parity["real"]["n"] == 24
        assert min(p["cosine_min"] for p in parity.values()) >= 0.9999
    # int8: kept with its measured agreement, or rejected with the reason and no file left behind.
    rejected = manifest.get("int8_rejected", {})
    kept = {m: spec["int8"] for m, spec in manifest["modalities"].items() if "int8" in spec}
    assert set(kept) | set(rejected) == {"image", "dna", "text"} and not set(kept) & set(rejected)
    for modality, info in kept.items():
        assert sha256_file(tiny_model.bundle / info["file"]) == info["sha256"]
        assert info["agreement"]["real"]["cosine_mean"] >= 0.99, modality
        assert info["agreement"]["real"]["top1_neighbour_agreement"] >= 0.9
        assert info["kept"] is True
    for modality, info in rejected.items():
        assert "<" in info["reason"] and not (tiny_model.bundle / f"{modality}.int8.onnx").exists()


def test_runtime_embeddings_match_pytorch(tiny_model):
    """The bundle, run by the torch-free runtime (own tokenizers, own preprocessing), equals the torch model."""
    model, rows = tiny_model.model, rows_of(tiny_model.sim)[30:40]
    bundle = ModelBundle.load(tiny_model.bundle, device="cpu")
    sequences = [row["nucleotides"] for row in rows]
    with torch.no_grad():
        batch = model.dna_encoder.tokenize(sequences)
        expected = model.encode_dna(batch["input_ids"], batch["attention_mask"]).numpy()
    assert cosines(bundle.embed_dna(sequences, batch_size=3), expected).min() >= 0.9999
    texts = [taxonomy_text(row) for row in rows] + ["Unknownia neverseenus"]
    with torch.no_grad():
        batch = model.text_encoder.tokenize(texts)
        expected = model.encode_text(batch["input_ids"], batch["attention_mask"]).numpy()
    assert cosines(bundle.embed_text(texts), expected).min() >= 0.9999
    pixels = np.stack([preprocess_image(tiny_model.sim / row["image_file"], bundle.preprocessing) for row in rows])
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels)).numpy()
    assert cosines(bundle.embed_pixels(pixels), expected).min() >= 0.9999
    # Different inputs give different embeddings (the comparison above is not trivially satisfied).
    assert cosines(bundle.embed_dna(sequences[:5]), bundle.embed_dna(sequences[5:])).min() < 0.999


def test_int8_bundle_embeds_close_to_fp32(tiny_model, tmp_path):
    """The runtime runs a registered int8 variant and falls back to fp32 where a modality has none.

    Whether the export gate keeps a variant of an *untrained* model depends on numerics (its
    embeddings are nearly collinear, so neighbour agreement is a coin toss): here the variant is
    quantised and registered directly, so the test does not rest on the gate's verdict.
    """
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_model.bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for spec in manifest["modalities"].values():
        spec.pop("int8", None)
    quantize_int8(copy / "text.onnx", copy / "text.int8.onnx")
    manifest["modalities"]["text"]["int8"] = {"file": "text.int8.onnx", "sha256": sha256_file(copy / "text.int8.onnx")}
    write_manifest(copy, manifest)  # a deliberate change, sealed as export would
    texts = [taxonomy_text(row) for row in rows_of(tiny_model.sim)[:20]]
    fp32 = ModelBundle.load(copy, device="cpu").embed_text(texts)
    int8 = ModelBundle.load(copy, device="cpu", int8=True)
    assert int8.precision("text") == "int8" and int8.precision("dna") == "fp32"
    approx = int8.embed_text(texts)
    assert not np.array_equal(fp32, approx)  # it really ran another model
    assert cosines(fp32, approx).mean() >= 0.9  # ... and that model is the same encoder, quantised
    assert cosines(fp32, approx).mean() > cosines(fp32, fp32[::-1]).mean()


def test_int8_gate_verdicts():
    """Kept only when the mean cosine and, with real inputs, the top-1 neighbours agree with fp32."""
    good = {"random": {"cosine_mean": 0.999}, "real": {"cosine_mean": 0.995, "top1_neighbour_agreement": 0.95}}
    assert _int8_verdict(good) == (True, "agrees with fp32")
    far = {**good, "random": {"cosine_mean": 0.98}}
    assert _int8_verdict(far)[0] is False and "mean cosine" in _int8_verdict(far)[1]
    shuffled = {**good, "real": {"cosine_mean": 0.995, "top1_neighbour_agreement": 0.833}}
    assert _int8_verdict(shuffled) == (False, "top-1 neighbour agreement 0.833 < 0.9")
    assert _int8_verdict({"random": {"cosine_mean": 0.999}})[0] is True  # nothing real to compare neighbours on


def test_neighbour_agreement():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(30, 8))
    assert neighbour_agreement(reference, reference) == 1.0
    assert neighbour_agreement(reference, rng.normal(size=(30, 8))) < 0.5


def test_tampered_or_incomplete_bundle_is_refused(tiny_model, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_model.bundle, copy)
    data = bytearray((copy / "dna.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "dna.onnx").write_bytes(bytes(data))
    bundle = ModelBundle.load(copy)  # checksums are checked per modality, before its first use
    assert len(bundle.embed_text(["Diptera Sciaridae Bradysia sp"])) == 1  # untouched encoders still work
    with pytest.raises(BundleError, match=r"dna\.onnx: checksum does not match"):
        bundle.embed_dna(["ACGT" * 100])
    result = runner.invoke(app, ["embed", str(tiny_model.sim / "specimens.tsv"), "--modality", "dna", "--model",
                                 str(copy), "-o", str(tmp_path / "e.npy")])
    assert result.exit_code == 2 and "checksum does not match" in result.stderr
    assert not (tmp_path / "e.npy").exists()
    image = bytearray((copy / "image.onnx").read_bytes())
    image[-10] ^= 0xFF
    (copy / "image.onnx").write_bytes(bytes(image))
    photo = tiny_model.sim / rows_of(tiny_model.sim)[0]["image_file"]
    index = tmp_path / "index"
    assert runner.invoke(app, ["build-index", "-b", str(tiny_model.sim / "specimens.tsv"), "--model",
                               str(tiny_model.bundle), "-o", str(index)]).exit_code == 0
    result = runner.invoke(app, ["classify", str(photo), "--model", str(copy), "--index", str(index), "-o",
                                 str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and "image.onnx: checksum does not match" in result.stderr
    assert "Traceback" not in result.output and "Exception in thread" not in result.output
    assert result.stderr.startswith("error:") and not (tmp_path / "c.csv").exists()
    (copy / "dna.onnx").unlink()
    with pytest.raises(BundleError, match=r"dna\.onnx is missing"):
        ModelBundle.load(copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format_version"] = 7
    write_manifest(copy, manifest)  # a deliberate change, sealed as export would
    with pytest.raises(BundleError, match="version 7"):
        ModelBundle.load(copy)
    with pytest.raises(BundleError, match="not a clibd model bundle"):
        ModelBundle.load(tmp_path)


def test_device_choice(tiny_model):
    path = tiny_model.bundle / "dna.onnx"
    session, used = make_session(path, "auto")
    assert used in ("cpu", "cuda")
    assert session.get_providers()[0] == ("CUDAExecutionProvider" if used == "cuda" else "CPUExecutionProvider")
    assert make_session(path, "cpu")[1] == "cpu"
    if used == "cpu":  # no usable GPU here: asking for one must fail clearly instead of running on the CPU
        with pytest.raises(ClibdError, match="--device cuda"):
            make_session(path, "cuda")
    with pytest.raises(ClibdError, match="--device 'tpu'"):
        make_session(path, "tpu")


def test_export_cli_refuses_bad_input(tiny_model, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(tiny_model.checkpoint), "-o", str(existing)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    result = runner.invoke(app, ["export", str(tiny_model.checkpoint), "-o", str(existing), "--force"])
    assert result.exit_code == 2 and "not a clibd model bundle" in result.stderr
    assert (existing / "keep.txt").read_text() == "mine"
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    result = runner.invoke(app, ["export", str(junk), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "cannot be read as a PyTorch checkpoint" in result.stderr
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a 'clibd train' checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_bundle_without_int8_refuses_int8(tiny_model, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_model.bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for spec in manifest["modalities"].values():
        spec.pop("int8", None)
    write_manifest(copy, manifest)  # a deliberate change, sealed as export would
    with pytest.raises(BundleError, match="no int8 models"):
        ModelBundle.load(copy, int8=True)


# ---------------------------------------------------------------------------------------------
# fp16 variants (`clibd export --fp16`): made on the CPU, run only on CUDA unless asked for


@pytest.fixture(scope="module")
def fp16_bundle(tiny_model, tmp_path_factory):
    """The tiny bundle plus fp16 variants, added by the export's own gate on real samples (no re-export)."""
    from clibd_export.onnx import Samples, add_variants

    copy = tmp_path_factory.mktemp("fp16") / "bundle"
    shutil.copytree(tiny_model.bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    rows = rows_of(tiny_model.sim)[:24]
    samples = Samples(images=[tiny_model.sim / row["image_file"] for row in rows],
                      barcodes=[row["nucleotides"] for row in rows], texts=[taxonomy_text(row) for row in rows])
    add_variants(load_checkpoint(tiny_model.checkpoint), copy, manifest, samples, lambda _: None, int8=False,
                 fp16=True)
    write_manifest(copy, manifest)
    return copy


def test_fp16_export_keeps_variants_with_agreement(fp16_bundle):
    import onnx

    from clibd_cli.bundle import read_manifest

    manifest = read_manifest(fp16_bundle)  # validated (BundleManifest), checksum sealed
    assert not manifest.get("fp16_rejected")
    for modality, spec in manifest["modalities"].items():
        fp16 = spec["fp16"]
        assert fp16["file"] == f"{modality}.fp16.onnx" and fp16["kept"] is True
        assert sha256_file(fp16_bundle / fp16["file"]) == fp16["sha256"]
        assert set(fp16["agreement"]) == {"random", "real"}
        assert fp16["agreement"]["real"]["n"] == 24 and fp16["agreement"]["real"]["cosine_min"] >= 0.999
        assert fp16["agreement"]["real"]["top1_neighbour_agreement"] >= 0.95
        graph = onnx.load(str(fp16_bundle / fp16["file"])).graph
        floats = [t.data_type for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT,
                                                                              onnx.TensorProto.FLOAT16)]
        assert floats and set(floats) == {onnx.TensorProto.FLOAT16}, modality  # weights really halved
        # ... while callers still feed and read float32 (ids stay int64)
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        if modality == "image":
            assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        # the L2 normalisation stays float32 (a float16 sum of squares overflows past norm 256)
        norm = next(n for n in graph.node if n.op_type == "ReduceL2")
        producer = next(n for n in graph.node if norm.input[0] in n.output)
        assert producer.op_type == "Cast" and producer.attribute[0].i == onnx.TensorProto.FLOAT


def test_fp16_runs_on_cuda_only_unless_asked(fp16_bundle, tiny_model):
    rows = rows_of(tiny_model.sim)[:12]
    cpu = ModelBundle.load(fp16_bundle, device="cpu")
    assert cpu.precision("image") == "fp32"  # fp16 is slower than fp32 on a CPU: ignored there
    pixels = np.stack([preprocess_image(tiny_model.sim / row["image_file"], cpu.preprocessing) for row in rows])
    fp32 = cpu.embed_pixels(pixels)
    assert cpu.precision("image") == "fp32" and cpu.used_device == "cpu"
    assert cpu.session("image")._model_path.endswith("image.onnx")
    half = ModelBundle.load(fp16_bundle, device="cpu", fp16=True)  # forced (the export gate's way)
    approx = half.embed_pixels(pixels)
    assert half.precision("image") == "fp16" and half.session("image")._model_path.endswith("image.fp16.onnx")
    assert not np.array_equal(fp32, approx) and cosines(fp32, approx).min() >= 0.999
    sequences = [row["nucleotides"] for row in rows]
    assert cosines(cpu.embed_dna(sequences), half.embed_dna(sequences)).min() >= 0.999
    never = ModelBundle.load(fp16_bundle, device="cuda", fp16=False)
    assert never.precision("image") == "fp32"  # decided without starting a session
    assert ModelBundle.load(fp16_bundle, device="cuda").precision("image") == "fp16"  # expected, if CUDA starts


def test_fp16_auto_falls_back_to_fp32_when_cuda_does_not_start(fp16_bundle, monkeypatch):
    """``auto`` on a machine that looked CUDA-capable but whose CUDA provider fails: fp32 on the CPU."""
    import clibd_cli.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "cuda_possible", lambda device: True)
    monkeypatch.setattr(bundle_module, "_gpu_present", lambda: False)  # make_session("auto") → CPU
    auto = ModelBundle.load(fp16_bundle, device="auto")
    assert auto.precision("image") == "fp16"  # expected before the session exists
    auto.embed_pixels(np.zeros((2, 3, 32, 32), np.float32))
    assert auto.precision("image") == "fp32" and auto.used_device == "cpu"
    assert auto.session("image")._model_path.endswith("image.onnx")


def test_fp16_tampered_file_is_refused(fp16_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(fp16_bundle, copy)
    data = bytearray((copy / "image.fp16.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "image.fp16.onnx").write_bytes(bytes(data))
    bundle = ModelBundle.load(copy, device="cpu")  # even where only fp32 runs, like int8 files
    with pytest.raises(BundleError, match=r"image\.fp16\.onnx: checksum does not match"):
        bundle.embed_pixels(np.zeros((1, 3, 32, 32), np.float32))
    (copy / "image.fp16.onnx").unlink()
    with pytest.raises(BundleError, match=r"image\.fp16\.onnx is missing"):
        ModelBundle.load(copy)


def test_fp16_gate_verdicts():
    from clibd_export.onnx import _fp16_verdict

    good = {"random": {"cosine_min": 0.99998}, "real": {"cosine_min": 0.9999, "top1_neighbour_agreement": 1.0}}
    assert _fp16_verdict(good) == (True, "agrees with fp32")
    assert _fp16_verdict({"random": {"cosine_min": 0.99998}})[0] is True
    overflow = {**good, "random": {"cosine_min": float("nan")}}  # inf/NaN from an overflow
    assert _fp16_verdict(overflow)[0] is False
    far = {**good, "real": {"cosine_min": 0.99, "top1_neighbour_agreement": 1.0}}
    assert _fp16_verdict(far) == (False, "min cosine to fp32 0.99000 < 0.999")
    flipped = {**good, "real": {"cosine_min": 0.9999, "top1_neighbour_agreement": 0.9}}
    assert _fp16_verdict(flipped) == (False, "top-1 neighbour agreement 0.900 < 0.95")


def test_neighbour_agreement_tolerates_ties():
    reference = np.array([[1.0, 0.0], [0.8, 0.6], [0.8001, 0.5999]])  # item 0: 1 and 2 are a near-tie
    approx = reference.copy()
    approx[0] = [0.5, 0.6]  # ... and its approximation picks 1 instead of 2
    assert neighbour_agreement(reference, approx) == pytest.approx(2 / 3)
    assert neighbour_agreement(reference, approx, tie=1e-3) == 1.0


def test_export_table_shows_fp16(fp16_bundle):
    from rich.console import Console

    from clibd_cli.bundle import read_manifest
    from clibd_cli.cli.models import _parity_table

    console = Console(width=200, record=True)
    console.print(_parity_table(fp16_bundle, read_manifest(fp16_bundle)))
    text = console.export_text()
    assert "fp16 min cosine" in text and "0.99" in text


def test_run_session_binds_io_on_cuda_only(tiny_model):
    from clibd_cli.bundle import run_session

    session, _ = make_session(tiny_model.bundle / "image.onnx", "cpu")
    pixels = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    expected = session.run(None, {"pixel_values": pixels})[0]
    assert np.array_equal(run_session(session, {"pixel_values": pixels}, "cpu"), expected)

    calls = []

    class Binding:  # what onnxruntime's IOBinding is asked, in order
        def bind_cpu_input(self, name, value):
            calls.append(("input", name, value.flags.c_contiguous))

        def bind_output(self, name, device):
            calls.append(("output", name, device))

        def copy_outputs_to_cpu(self):
            return [expected]

    class CudaSession:
        def io_binding(self):
            return Binding()

        def get_outputs(self):
            return session.get_outputs()

        def run_with_iobinding(self, binding):
            calls.append(("run",))

        def run(self, *args):
            raise AssertionError("a CUDA session is run through IO binding")

    got = run_session(CudaSession(), {"pixel_values": pixels[:, :, ::2, ::2]}, "cuda")
    assert np.array_equal(got, expected) and got.dtype == np.float32
    assert calls == [("input", "pixel_values", True), ("output", "embeddings", "cuda"), ("run",)]
