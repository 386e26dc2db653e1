"""`clibd evaluate`: the paper's protocol on a split table, open-set metrics, plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clibd_cli.app import app
from clibd_cli.evaluate import KmerEmbedder, auroc, evaluate, read_split_table
from clibd_cli.metrics import harmonic_mean, knn_accuracy

runner = CliRunner()


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 50).round(1)  # rounded: ties happen
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(pos, neg) == pytest.approx(pairs)
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1.0])) == 0.0
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


def test_kmer_evaluation_follows_the_protocol(tiny_model):
    specimens = read_split_table(tiny_model.sim / "specimens.tsv")
    report = evaluate(specimens, KmerEmbedder(5), split="test")
    assert report["pairs"] == ["dna_to_dna"]
    seen = [s for s in specimens if s.split == "test_seen"]
    keys = [s for s in specimens if s.split.endswith("keys")]
    assert report["counts"]["queries_seen"] == len(seen) and report["counts"]["keys"] == len(keys)
    # The same numbers as the metric functions applied by hand to the same embeddings.
    embedder = KmerEmbedder(5)
    expected = knn_accuracy(embedder.embed("dna", seen)[0], embedder.embed("dna", keys)[0],
                            {r: [s.taxonomy[r] for s in seen] for r in ("order", "family", "genus", "species")},
                            {r: [s.taxonomy[r] for s in keys] for r in ("order", "family", "genus", "species")})
    assert report["closed_set"]["dna_to_dna"]["seen"] == expected
    entry = report["closed_set"]["dna_to_dna"]
    assert entry["harmonic"]["species"]["micro_top1"] == pytest.approx(
        harmonic_mean(entry["seen"]["species"]["micro_top1"], entry["unseen"]["species"]["micro_top1"]))
    assert entry["seen"]["species"]["micro_top1"] >= 0.5  # synthetic barcodes: the profile separates species
    opened = report["open_set"]["dna_to_dna"]
    unseen = [s for s in specimens if s.split == "test_unseen"]
    assert opened["absent"]["n"] == len(unseen) and opened["present"]["n"] == len(seen)
    for value in (opened["absent"]["named_species_share"], opened["present"]["named_share"],
                  opened["auroc_species_absent"]):
        assert 0.0 <= value <= 1.0
    assert set(opened["reliability"]) == {"order", "family", "genus", "species"}
    assert sum(b["n"] for b in opened["reliability"]["order"]) == len(seen) + len(unseen)


def test_evaluate_cli_with_a_bundle_writes_table_json_and_plots(tiny_model, tmp_path):
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model.bundle), "--data",
                                 str(tiny_model.sim / "specimens.tsv"), "-o", str(tmp_path / "r.json"), "--plots",
                                 str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pairs"] == ["dna_to_dna", "image_to_image", "image_to_dna", "image_to_text", "dna_to_text"]
    for pair in report["pairs"]:
        for group in ("seen", "unseen", "harmonic"):
            for rank in ("order", "family", "genus", "species"):
                for metric in ("micro_top1", "macro_top1", "micro_top5"):
                    assert 0.0 <= report["closed_set"][pair][group][rank][metric] <= 1.0
    assert "image→dna" in result.stdout and "species" in result.stdout
    assert "thresholds for precision 0.95 calibrated on the val split" in " ".join(result.stdout.split())
    for name in ("accuracy.png", "reliability.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG" and image.size[0] > 1000  # one panel per modality pair


def test_evaluate_refuses_tables_without_splits(tiny_model, tmp_path):
    table = tmp_path / "t.tsv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["processid", "nucleotides", "species"])
        writer.writerow(["a", "ACGT" * 100, "X y"])
    result = runner.invoke(app, ["evaluate", "--model", "kmer", "--data", str(table)])
    assert result.exit_code == 2 and "no 'split' column" in result.stderr
    result = runner.invoke(app, ["evaluate", "--model", "kmer:x", "--data", str(tiny_model.sim / "specimens.tsv")])
    assert result.exit_code == 2 and "kmer:K" in result.stderr


def test_plots_without_matplotlib_fail_before_the_evaluation(tiny_model, tmp_path, monkeypatch):
    """--plots checks for matplotlib first: one line, exit 2, and no evaluation run for nothing."""
    import sys

    import clibd_cli.evaluate

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    ran = []
    monkeypatch.setattr(clibd_cli.evaluate, "evaluate_model", lambda *a, **k: ran.append(1))
    result = runner.invoke(app, ["evaluate", "--model", "kmer", "--data", str(tiny_model.sim / "specimens.tsv"),
                                 "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 2 and "clibd[plots]" in result.stderr
    assert not ran and not (tmp_path / "plots").exists()


def test_open_set_table_says_why_it_is_empty():
    from rich.console import Console

    from clibd_cli.cli.evaluation import _open_set_table

    console = Console(width=100, record=True, color_system=None)
    console.print(_open_set_table({"open_set": {}, "open_set_calibrated_on": "val", "open_set_precision": 0.9}))
    text = " ".join(console.export_text().split())
    assert "precision 0.9 calibrated on the val split" in text and "No open-set figures" in text
