"""The README's photo quickstart on the committed demo bundle: offline, DNA-only reference, photos in."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import clibd_ok, read_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_classifies_photos_against_barcodes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, index = EXAMPLES / "demo-model", tmp_path / "demo_index"
    manifest = json.loads((model / "clibd-model.json").read_text())
    assert all(p["cosine_min"] >= 0.9999 for parity in manifest["parity"].values() for p in parity.values())
    clibd_ok("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", model, "-o", index)
    calibrated = clibd_ok("calibrate", "--index", index, "--model", model, "--images",
                          EXAMPLES / "demo-labelled-photos.tsv").stdout
    assert "nan" not in calibrated and "1.010" not in calibrated  # every cell a figure, "–" or "never"
    for line in calibrated.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1] in ("order", "family", "genus", "species") and cells[2] == "never":
            assert f"{cells[1]} is never called" in " ".join(calibrated.split())
    out, hits = tmp_path / "calls.csv", tmp_path / "hits.csv"
    result = clibd_ok("classify", EXAMPLES / "photos", "--model", model, "--index", index, "-o", out, "--hits", hits,
                      "--top-k", 1)
    assert "not calibrated" not in result.stderr
    truth = {r["processid"]: r for r in read_rows(EXAMPLES / "photos_truth.tsv")}
    rows = read_rows(out)
    assert sorted(r["query_id"].removesuffix(".jpg") for r in rows) == sorted(truth)
    assert {r["status"] for r in rows} <= {"assigned", "rolled_up", "novel_candidate", "no_match"}
    present = [h for h in read_rows(hits) if truth[h["query_id"].removesuffix(".jpg")]["in_reference"] == "true"]
    right = sum(h["species"] == truth[h["query_id"].removesuffix(".jpg")]["species"] for h in present)
    n_species = len({r["species"] for r in read_rows(EXAMPLES / "demo-barcodes.tsv")})
    # 13 of 29 when the bundle was made; chance is 1 in 40
    assert right / len(present) >= 10 / n_species
    # Calls that are made are mostly right at their rank (calibrated for precision 0.95 on labelled photos).
    called = [r for r in rows if r["rank"]]
    correct = sum(r[r["rank"]] == truth[r["query_id"].removesuffix(".jpg")][r["rank"]] for r in called)
    assert not called or correct / len(called) >= 0.7
