"""`clibd classify`, `build-index --model/--images/--text-keys`, `check` and `embed` on a tiny bundle.

The bundle here is untrained (accuracy is tested in test_photo_pipeline.py, slow); these tests check
behaviour: rows, statuses, errors as rows, grouping, modalities, calibration bookkeeping, formats.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import encoded, jpeg, png_header_only, read_rows, write_dicts
from PIL import Image
from typer.testing import CliRunner

from clibd_cli.app import app
from clibd_cli.bundle import ModelBundle
from clibd_cli.index import ReferenceIndex, index_modalities

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def specimens(sim):
    return read_rows(sim / "specimens.tsv")


@pytest.fixture(scope="module")
def library(tiny_model, tmp_path_factory):
    """Keys (barcodes + photos + taxonomy strings) in one index, and the test queries as a manifest."""
    root = tmp_path_factory.mktemp("library")
    rows = specimens(tiny_model.sim)
    keys = [dict(r, image_file=str(tiny_model.sim / r["image_file"])) for r in rows if r["split"].endswith("keys")]
    queries = [dict(r, image_file=str(tiny_model.sim / r["image_file"])) for r in rows
               if r["split"] in ("test_seen", "test_unseen", "val_seen", "val_unseen")]
    keys_tsv = write_dicts(root / "keys.tsv", keys)
    queries_tsv = write_dicts(root / "queries.tsv", queries)
    index = root / "index"
    result = invoke("build-index", "-b", keys_tsv, "--images", keys_tsv, "--text-keys", "--model",
                    tiny_model.bundle, "-o", index)
    assert result.exit_code == 0, result.output
    return {"root": root, "keys": keys, "queries": queries, "keys_tsv": keys_tsv, "queries_tsv": queries_tsv,
            "index": index}


def test_build_index_with_model_holds_three_modalities(tiny_model, library):
    index = library["index"]
    assert index_modalities(index) == ["dna", "image", "text"]
    dna, image, text = (ReferenceIndex.load(index, m) for m in ("dna", "image", "text"))
    n_keys = len(library["keys"])
    assert dna.size == image.size == n_keys
    lineages = {tuple(r[k] for k in ("order", "family", "genus", "species")) for r in library["keys"]}
    assert text.size == len(lineages)
    assert all(record_id.startswith("taxon:") for record_id in text.labels.record_id)
    bundle = ModelBundle.load(tiny_model.bundle)
    for part in (dna, image, text):
        assert part.encoder_fingerprint == bundle.fingerprint
    # The stored image vectors are the bundle's embeddings of the reference photos.
    first = ModelBundle.load(tiny_model.bundle).encoder("image").encode([library["keys"][0]["image_file"]])
    assert np.allclose(image.vectors()[image.labels.vector[0]], first[0], atol=1e-5)
    # A photo is never a query against taxonomy-string thresholds of its own; cross pairs are recorded or absent.
    assert image.thresholds_for("image") == image.thresholds
    for part in (dna, text):
        cross = part.manifest.get("cross_thresholds", {})
        assert set(cross) <= {"image", "dna"}


def test_build_index_refusals(tiny_model, library, tmp_path):
    result = invoke("build-index", "--images", library["keys_tsv"], "-o", tmp_path / "x")
    assert result.exit_code == 2 and "need a model bundle" in result.stderr
    result = invoke("build-index", "-o", tmp_path / "x", "--model", tiny_model.bundle)
    assert result.exit_code == 2 and "nothing to index" in result.stderr
    result = invoke("build-index", "-b", library["keys_tsv"], "--model", tiny_model.bundle, "--kmer", 5,
                    "-o", tmp_path / "x")
    assert result.exit_code == 2 and "--kmer" in result.stderr
    # A k-mer index cannot take photo queries: another embedding space.
    kmer_index = tmp_path / "kmer"
    assert invoke("build-index", "-b", library["keys_tsv"], "-o", kmer_index).exit_code == 0
    result = invoke("classify", library["keys"][0]["image_file"], "--model", tiny_model.bundle, "--index",
                    kmer_index, "-o", tmp_path / "out.csv")
    assert result.exit_code == 2 and "fingerprint" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_classify_rows_per_photo(tiny_model, library, tmp_path):
    out = tmp_path / "out.csv"
    result = invoke("classify", "--manifest", library["queries_tsv"], "--model", tiny_model.bundle, "--index",
                    library["index"], "--against", "dna", "-o", out, "--hits", tmp_path / "hits.tsv")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert [r["query_id"] for r in rows] == [q["processid"] for q in library["queries"]]
    assert {r["against"] for r in rows} == {"dna"}
    assert all(r["status"] in ("assigned", "rolled_up", "novel_candidate", "no_match") for r in rows)
    key_ids = {k["processid"] for k in library["keys"]}
    assert all(r["top_hit_id"] in key_ids for r in rows)
    hits = read_rows(tmp_path / "hits.tsv")
    assert len(hits) == 5 * len(rows)
    assert all(float(h["similarity"]) <= 1.0001 for h in hits)
    # The top hit really is the key barcode nearest to the photo's embedding.
    bundle = ModelBundle.load(tiny_model.bundle)
    photo = bundle.encoder("image").encode([library["queries"][0]["image_file"]])
    keys = bundle.embed_dna([k["nucleotides"] for k in library["keys"]])
    nearest = library["keys"][int(np.argmax(keys @ photo[0]))]["processid"]
    assert rows[0]["top_hit_id"] == nearest
    assert abs(float(rows[0]["top_hit_similarity"]) - float(np.max(keys @ photo[0]))) < 1e-3


def test_classify_against_each_modality_and_all(tiny_model, library, tmp_path):
    photos = [q["image_file"] for q in library["queries"][:6]]
    seen = {}
    for against in ("image", "text", "all"):
        out = tmp_path / f"{against}.json"
        result = invoke("classify", *photos, "--model", tiny_model.bundle, "--index", library["index"],
                        "--against", against, "-o", out)
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        seen[against] = data["results"]
        assert len(data["results"]) == 6
        if against != "all":
            assert {r["against"] for r in data["results"]} == {against}
        assert data["info"]["against"] == against
    assert {r["against"] for r in seen["all"]} <= {"dna", "image", "text"}
    text_ids = [r["top_hit_id"] for r in seen["text"]]
    assert all(t.startswith("taxon:") for t in text_ids)


def test_bad_photos_become_error_rows(tiny_model, library, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    good = Image.open(library["queries"][0]["image_file"]).convert("RGB")
    (folder / "good.jpg").write_bytes(jpeg(good))
    (folder / "truncated.jpg").write_bytes(jpeg(good.resize((200, 200)))[:300])
    (folder / "notes.jpg").write_text("field notes, not a photo")
    (folder / "alpha.png").write_bytes(encoded(good.convert("RGBA"), "PNG"))
    deep = np.asarray(good.convert("L"), dtype=np.uint16) * 257
    (folder / "deep.tif").write_bytes(encoded(Image.fromarray(deep), "TIFF"))
    (folder / "cmyk.jpg").write_bytes(jpeg(good.convert("CMYK")))
    (folder / "bomb.png").write_bytes(png_header_only(40_000, 40_000))
    (folder / "locked" / "hidden.jpg").write_bytes(jpeg(good))
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out.csv"
    result = invoke("classify", folder, "--model", tiny_model.bundle, "--index", library["index"], "-o", out)
    assert result.exit_code == 0, result.output
    rows = {r["query_id"]: r for r in read_rows(out)}
    errors = {k for k, r in rows.items() if r["status"] == "error"}
    assert errors == {"truncated.jpg", "notes.jpg", "bomb.png", "locked"}
    for name in ("good.jpg", "alpha.png", "deep.tif", "cmyk.jpg"):
        assert rows[name]["status"] != "error" and rows[name]["top_hit_id"], name
    assert "truncated.jpg" in rows["truncated.jpg"]["error"]
    assert "not an image" in rows["notes.jpg"]["error"]
    assert "decompression bomb" in rows["bomb.png"]["error"]
    assert "cannot read folder" in rows["locked"]["error"]
    assert "4 error" in result.stderr


def test_group_by_fuses_photos_of_one_specimen(tiny_model, library, tmp_path):
    queries = library["queries"][:4]
    rows = []
    for q in queries:  # two photos per specimen: the photo and a mirrored copy
        mirrored = tmp_path / f"{q['processid']}_b.jpg"
        Image.open(q["image_file"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
        rows += [{"photo": f"{q['processid']}_a", "image_file": q["image_file"], "specimen": q["processid"]},
                 {"photo": f"{q['processid']}_b", "image_file": str(mirrored), "specimen": q["processid"]}]
    rows.append({"photo": "lost", "image_file": str(tmp_path / "missing.jpg"), "specimen": queries[0]["processid"]})
    manifest = write_dicts(tmp_path / "photos.tsv", rows)
    out = tmp_path / "out.csv"
    result = invoke("classify", "--manifest", manifest, "--group-by", "specimen", "--model", tiny_model.bundle,
                    "--index", library["index"], "-o", out, "--top-k", 3, "--hits", tmp_path / "hits.csv")
    assert result.exit_code == 0, result.output
    out_rows = read_rows(out)
    assert [r["query_id"] for r in out_rows] == [q["processid"] for q in queries]
    assert [r["photos"] for r in out_rows] == ["2", "2", "2", "2"]
    assert "photos_failed=1" in out_rows[0]["flags"] and "missing.jpg" in out_rows[0]["error"]
    # The fused query is the normalised mean of the two photo embeddings.
    bundle = ModelBundle.load(tiny_model.bundle)
    pair = bundle.encoder("image").encode([rows[0]["image_file"], rows[1]["image_file"]])
    fused = pair.mean(axis=0)
    fused /= np.linalg.norm(fused)
    keys = bundle.embed_dna([k["nucleotides"] for k in library["keys"]])
    assert out_rows[0]["top_hit_id"] == library["keys"][int(np.argmax(keys @ fused))]["processid"]


def test_classify_resume_and_refusals(tiny_model, library, tmp_path):
    photos = [q["image_file"] for q in library["queries"][:5]]
    out = tmp_path / "out.csv"
    assert invoke("classify", *photos[:2], "--model", tiny_model.bundle, "--index", library["index"],
                  "-o", out).exit_code == 0
    before = out.read_text()
    result = invoke("classify", *photos, "--model", tiny_model.bundle, "--index", library["index"], "-o", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_text() == before
    result = invoke("classify", *photos, "--model", tiny_model.bundle, "--index", library["index"], "-o", out,
                    "--resume")
    assert result.exit_code == 0 and "2 already done" in result.stderr
    assert len(read_rows(out)) == 5 and out.read_text().startswith(before)
    result = invoke("classify", tmp_path / "nowhere", "--model", tiny_model.bundle, "--index", library["index"])
    assert result.exit_code == 2 and "no such file or folder" in result.stderr
    result = invoke("classify", *photos, "--model", tiny_model.bundle, "--index", library["index"],
                    "--against", "sound")
    assert result.exit_code == 2 and "--against" in result.stderr
    dna_only = tmp_path / "dna_only"
    assert invoke("build-index", "-b", library["keys_tsv"], "--model", tiny_model.bundle, "-o", dna_only
                  ).exit_code == 0
    result = invoke("classify", *photos, "--model", tiny_model.bundle, "--index", dna_only, "--against", "image")
    assert result.exit_code == 2 and "has no image references" in result.stderr
    result = invoke("classify", *photos, "--model", tiny_model.bundle, "--index", dna_only, "-o",
                    tmp_path / "u.csv")
    assert result.exit_code == 0 and "not calibrated" in result.stderr
    assert all("uncalibrated" in r["flags"] for r in read_rows(tmp_path / "u.csv"))


def test_calibrate_photo_queries(tiny_model, library, tmp_path):
    index = tmp_path / "index"
    assert invoke("build-index", "-b", library["keys_tsv"], "--model", tiny_model.bundle, "-o", index
                  ).exit_code == 0
    assert ReferenceIndex.load(index, "dna").thresholds_for("image") is None
    labelled = write_dicts(tmp_path / "labelled.tsv", [dict(r, image_file=str(tiny_model.sim / r["image_file"]))
                                                       for r in specimens(tiny_model.sim)])
    result = invoke("calibrate", "-i", index, "--images", labelled, "--model", tiny_model.bundle)
    assert result.exit_code == 0, result.output
    thresholds = ReferenceIndex.load(index, "dna").thresholds_for("image")
    assert list(thresholds) == ["order", "family", "genus", "species"]
    assert list(thresholds.values()) == sorted(thresholds.values())
    result = invoke("classify", library["queries"][0]["image_file"], "--model", tiny_model.bundle, "--index",
                    index, "-o", tmp_path / "c.json")
    assert result.exit_code == 0 and "not calibrated" not in result.stderr
    info = json.loads((tmp_path / "c.json").read_text())["info"]
    assert info["thresholds"]["dna"] == thresholds and info["calibrated"] == {"dna": True}


def test_check_compares_photo_and_barcode(tiny_model, library, tmp_path):
    queries = [dict(q) for q in library["queries"][:6]]
    queries[1]["nucleotides"] = ""  # a specimen without barcode
    queries[2]["image_file"] = str(tmp_path / "missing.jpg")
    manifest = write_dicts(tmp_path / "specimens.tsv", queries)
    out = tmp_path / "check.csv"
    result = invoke("check", "--manifest", manifest, "--model", tiny_model.bundle, "--index", library["index"],
                    "-o", out)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert [r["specimen_id"] for r in rows] == [q["processid"] for q in queries]
    assert rows[1]["verdict"] == "no_barcode" and rows[2]["verdict"] == "error"
    for row in (rows[0], *rows[3:]):
        assert row["verdict"] in ("consistent", "conflict", "inconclusive")
        for rank in ("order", "family", "genus", "species"):
            a, b, agree = row[f"photo_{rank}"], row[f"barcode_{rank}"], row[f"agree_{rank}"]
            assert agree == (("yes" if a == b else "no") if a and b else "")
        if row["verdict"] == "conflict":
            assert row[f"agree_{row['first_conflict']}"] == "no"
        assert -1.0 <= float(row["pair_similarity"]) <= 1.0


def test_embed_writes_ids_and_vectors(tiny_model, library, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "notes.jpg").write_text("not a photo")
    photos = [q["image_file"] for q in library["queries"][:4]] + [str(tmp_path / "notes.jpg")]
    out = tmp_path / "e.parquet"
    result = invoke("embed", *photos[:4], "--model", tiny_model.bundle, "-o", out)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == photos[:4]
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = ModelBundle.load(tiny_model.bundle).encoder("image").encode(photos[:4])
    assert np.allclose(vectors, expected, atol=1e-5)
    assert json.loads(table.schema.metadata[b"clibd"])["modality"] == "image"
    out = tmp_path / "d.npy"
    assert invoke("embed", library["keys_tsv"], "--modality", "dna", "--model", tiny_model.bundle, "-o", out
                  ).exit_code == 0
    ids = read_rows(tmp_path / "d.ids.tsv")
    assert [r["id"] for r in ids] == [k["processid"] for k in library["keys"]]
    assert np.load(out).shape == (len(ids), 64)
    result = invoke("embed", *photos, "--model", tiny_model.bundle, "-o", tmp_path / "p.npy")
    assert result.exit_code == 0 and "1 inputs failed" in result.stderr
    assert read_rows(tmp_path / "p.errors.tsv")[0]["id"] == photos[4]
    result = invoke("embed", *photos[:1], "--model", tiny_model.bundle, "-o", tmp_path / "p.npy")
    assert result.exit_code == 2 and "already exists" in result.stderr
    result = invoke("embed", *photos[:1], "--model", tiny_model.bundle, "-o", tmp_path / "p.txt")
    assert result.exit_code == 2 and ".parquet or .npy" in result.stderr


def test_embed_reads_tables_by_named_columns(tiny_model, library, tmp_path):
    """A lab's own column names: --id-column/--image-column for a photo manifest, --sequence-column too."""
    queries = library["queries"][:3]
    manifest = write_dicts(tmp_path / "lab.tsv", [{"tube": f"T{i}", "photo": q["image_file"], "id": f"X{i}"}
                                                  for i, q in enumerate(queries)])
    out = tmp_path / "e.npy"
    result = invoke("embed", "--manifest", manifest, "--model", tiny_model.bundle, "-o", out,
                    "--id-column", "tube", "--image-column", "photo")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_rows(tmp_path / "e.ids.tsv")] == ["T0", "T1", "T2"]
    expected = ModelBundle.load(tiny_model.bundle).encoder("image").encode([q["image_file"] for q in queries])
    assert np.allclose(np.load(out), expected, atol=1e-5)
    barcodes = write_dicts(tmp_path / "dna.tsv", [{"tube": k["processid"], "coi": k["nucleotides"]}
                                                  for k in library["keys"][:3]])
    result = invoke("embed", barcodes, "--modality", "dna", "--model", tiny_model.bundle, "-o", tmp_path / "d.npy",
                    "--id-column", "tube", "--sequence-column", "coi")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_rows(tmp_path / "d.ids.tsv")] == [k["processid"] for k in library["keys"][:3]]
