"""The whole photo path on synthetic specimens (slow): simulate → train → export → build-index → classify.

The reference holds only the key specimens' *barcodes*; test photos are identified against them
(CLIBD's image→DNA case).  Accuracy is compared with chance (1 / number of species in the reference).
"""

from __future__ import annotations

import json

import pytest
from conftest import clibd_ok, read_rows, write_dicts

pytestmark = pytest.mark.slow


def accuracy(out, truth, rank):
    rows = read_rows(out)
    return sum(r[rank] == truth[r["query_id"]][rank] for r in rows) / len(rows)


def test_photos_identified_against_barcodes_only(tmp_path):
    sim, run, bundle, index = (tmp_path / name for name in ("sim", "run", "bundle", "index"))
    clibd_ok("simulate", "-o", sim, "--species", 30, "--image-size", 64)
    clibd_ok("train", "--config", "tiny-cpu", "--data", sim, "-o", run, "--nproc-per-node", 2, "--set", "epochs=40")
    clibd_ok("export", run / "checkpoints" / "best.pt", "-o", bundle, "--int8", "--sample-images", sim / "images",
             "--sample-barcodes", sim / "specimens.tsv")
    specimens = read_rows(sim / "specimens.tsv")
    keys = [r for r in specimens if r["split"] in ("seen_keys", "val_unseen_keys", "test_unseen_keys")]
    queries = [dict(r, image_file=str(sim / r["image_file"])) for r in specimens
               if r["split"] in ("test_seen", "test_unseen")]
    write_dicts(tmp_path / "keys.tsv", keys)
    write_dicts(tmp_path / "queries.tsv", queries)
    clibd_ok("build-index", "--barcodes", tmp_path / "keys.tsv", "--model", bundle, "-o", index)
    truth = {q["processid"]: q for q in queries}
    chance = 1 / len({k["species"] for k in keys})
    results = {}
    for variant, extra in (("fp32", []), ("int8", ["--int8"])):
        out = tmp_path / f"{variant}.csv"
        clibd_ok("classify", "--manifest", tmp_path / "queries.tsv", "--model", bundle, "--index", index,
                 "--against", "dna", "-o", out, *extra)
        results[variant] = {rank: accuracy(out, truth, rank) for rank in ("species", "genus")}
    manifest = json.loads((bundle / "clibd-model.json").read_text())
    print(f"chance {chance:.3f}; {len(queries)} photos against {len(keys)} barcodes: {results}; "
          f"int8 kept: {[m for m, s in manifest['modalities'].items() if 'int8' in s]}")
    assert results["fp32"]["species"] >= 3 * chance
    assert results["int8"]["species"] >= 3 * chance
    assert abs(results["int8"]["species"] - results["fp32"]["species"]) <= 0.1
