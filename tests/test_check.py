"""`clibd check` pairs each photo with the barcode of the same row: both must be keyed by the same id column.

A manifest with `sampleid` and `id` columns once gave photos the `sampleid` and barcodes the `id`, so every
specimen came out `no_barcode`.  Every reader now takes the id column by one rule (clibd_cli.schema), and
`--id-column` (with `--image-column`, `--sequence-column`) names the columns where the rule does not fit.
"""

from __future__ import annotations

import pytest
from conftest import invoke, make_reference, one_error_line, read_rows, write_dicts, write_table

from clibd_cli.photos import collect_photos
from clibd_cli.schema import ID_COLUMNS, RANKS, map_columns
from clibd_cli.sequences import read_sequences


def test_one_id_rule_for_every_reader(tmp_path):
    assert map_columns(["sampleid", "id", "image_file"], "t.tsv").names["id"] == "id"
    assert map_columns(["SampleID", "ProcessID", "ID"], "t.tsv").names["id"] == "ProcessID"
    assert map_columns(["sampleid", "image_file"], "t.tsv").names["id"] == "sampleid"
    assert map_columns(["sampleid", "id"], "t.tsv", id="sampleid").names["id"] == "sampleid"
    assert ID_COLUMNS.index("processid") < ID_COLUMNS.index("id") < ID_COLUMNS.index("sampleid")
    specimens = make_reference(seed=3, orders=1, families=1, genera=1, species=2, specimens=2)
    header = ["sampleid", "id", "image_file", "nucleotides", *RANKS]
    rows = [[f"S-{i}", s.id, f"{s.id}.jpg", s.sequence, *s.lineage] for i, s in enumerate(specimens)]
    table = write_table(tmp_path / "specimens.tsv", header, rows, "\t")
    photos, problems = collect_photos([], manifest=table)
    barcodes = read_sequences([table]).records
    assert not problems
    assert [p.id for p in photos] == [r.id for r in barcodes] == [s.id for s in specimens]
    photos, _ = collect_photos([], manifest=table, id_column="sampleid")
    barcodes = read_sequences([table], id_column="sampleid").records
    assert [p.id for p in photos] == [r.id for r in barcodes] == [f"S-{i}" for i in range(len(specimens))]


@pytest.fixture(scope="module")
def checked(tiny_model, tmp_path_factory):
    """A barcode index of the simulation's keys, and its query specimens as rows (photo paths absolute)."""
    root = tmp_path_factory.mktemp("check")
    rows = read_rows(tiny_model.sim / "specimens.tsv")
    keys = write_dicts(root / "keys.tsv", [r for r in rows if r["split"].endswith("keys")])
    index = root / "index"
    result = invoke("build-index", "-b", keys, "--model", tiny_model.bundle, "-o", index)
    assert result.exit_code == 0, result.output
    queries = [dict(r, image_file=str(tiny_model.sim / r["image_file"])) for r in rows
               if r["split"] in ("test_seen", "test_unseen")][:8]
    return root, index, queries


def _check(tiny_model, index, manifest, out, *options):
    result = invoke("check", "--manifest", manifest, "--model", tiny_model.bundle, "--index", index, "-o", out,
                    *options)
    assert result.exit_code == 0, result.output
    return read_rows(out)


def _paired(rows):
    assert rows and all(r["verdict"] in ("consistent", "conflict", "inconclusive") for r in rows), \
        [(r["specimen_id"], r["verdict"], r["error"]) for r in rows]


def test_check_with_sampleid_and_id_columns(tiny_model, checked, tmp_path):
    _, index, queries = checked
    manifest = write_dicts(tmp_path / "m.tsv", [
        {"sampleid": f"S-{i}", "id": q["processid"], "image_file": q["image_file"], "nucleotides": q["nucleotides"],
         **{rank: q[rank] for rank in RANKS}} for i, q in enumerate(queries)])
    rows = _check(tiny_model, index, manifest, tmp_path / "c.csv")
    assert [r["specimen_id"] for r in rows] == [q["processid"] for q in queries]
    _paired(rows)  # no `no_barcode`: every photo found the barcode of its own row
    rows = _check(tiny_model, index, manifest, tmp_path / "s.csv", "--id-column", "sampleid")
    assert [r["specimen_id"] for r in rows] == [f"S-{i}" for i in range(len(queries))]
    _paired(rows)


def test_check_with_named_columns(tiny_model, checked, tmp_path):
    _, index, queries = checked
    manifest = write_dicts(tmp_path / "lab.tsv", [
        {"tube": f"T{i}", "photo": q["image_file"], "coi": q["nucleotides"], **{rank: q[rank] for rank in RANKS}}
        for i, q in enumerate(queries)])
    one_error_line(invoke("check", "--manifest", manifest, "--model", tiny_model.bundle, "--index", index),
                   "no image file column", "--image-column")
    one_error_line(invoke("check", "--manifest", manifest, "--model", tiny_model.bundle, "--index", index,
                          "--image-column", "photo"), "no sequence column", "--sequence-column")
    one_error_line(invoke("check", "--manifest", manifest, "--model", tiny_model.bundle, "--index", index,
                          "--image-column", "photo", "--sequence-column", "coi"), "no id column", "--id-column")
    one_error_line(invoke("check", "--manifest", manifest, "--model", tiny_model.bundle, "--index", index,
                          "--id-column", "well"), "no column named 'well'")
    rows = _check(tiny_model, index, manifest, tmp_path / "c.csv", "--id-column", "tube", "--image-column", "photo",
                  "--sequence-column", "COI")
    assert [r["specimen_id"] for r in rows] == [f"T{i}" for i in range(len(queries))]
    _paired(rows)


def test_a_check_that_fails_before_its_first_row_leaves_no_file(tmp_path):
    """No header-only qc.csv: its rerun would stop on "already exists" (check has no --resume)."""
    from clibd_cli.check import CHECK_COLUMNS
    from clibd_cli.errors import InputError
    from clibd_cli.runs import RunOutput

    def failing_rows():
        raise InputError("specimens.tsv: record 1 has no photo")
        yield {}

    out = RunOutput(tmp_path / "qc.csv", columns=CHECK_COLUMNS)
    out.check()
    with pytest.raises(InputError):
        out.write(failing_rows(), count="verdict")
    assert not (tmp_path / "qc.csv").exists()
