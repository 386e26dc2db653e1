"""Rebuild the demo model bundle and the photo quickstart files under ``examples/`` (synthetic data only).

    python examples/make_demo_model.py [--work /tmp/clibd-demo]

Steps (each a public `clibd` command, so this doubles as a worked example):

1. ``clibd simulate`` 40 synthetic species at 64 px (seed 1);
2. ``clibd train --config demo-cpu`` on 2 CPU processes (about 4 minutes);
3. ``clibd export`` to ``examples/demo-model`` (fp32; ~5 MB in all);
4. the quickstart tables: ``demo-barcodes.tsv`` (the key specimens' barcodes with taxonomy: a DNA-only
   reference), ``demo-labelled-photos.tsv`` + ``labelled-photos/`` (photos of reference specimens, used to
   calibrate photo→barcode thresholds), ``photos/`` (test photos to classify) and ``photos_truth.tsv``.

This is a demonstration model trained on synthetic insects: it knows nothing about real species.  For
real photos use a model exported from a real CLIBD checkpoint (`clibd export --from-official best.pth`).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("seen_keys", "val_unseen_keys", "test_unseen_keys")
QUERIES = ("test_seen", "test_unseen")
CALIBRATION = ("val_seen", "val_unseen", "seen_keys", "val_unseen_keys", "test_unseen_keys")


def clibd(*args: object) -> None:
    command = [sys.executable, "-m", "clibd_cli.app", *map(str, args)]
    print("$ clibd " + " ".join(map(str, args)), flush=True)
    subprocess.run(command, check=True)


def write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def copy_photos(rows: list[dict], sim: Path, folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        target = folder / Path(row["image_file"]).name
        shutil.copyfile(sim / row["image_file"], target)
        out.append(dict(row, image_file=f"{folder.name}/{target.name}"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/clibd-demo"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=HERE, help="examples folder to write into")
    args = parser.parse_args(argv)
    sim, run = args.work / "sim", args.work / "run"
    shutil.rmtree(args.work, ignore_errors=True)
    clibd("simulate", "-o", sim, "--species", 40, "--image-size", 64, "--seed", 1)
    clibd("train", "--config", "demo-cpu", "--data", sim, "-o", run, "--nproc-per-node", 2)
    with open(sim / "specimens.tsv", newline="") as handle:
        specimens = list(csv.DictReader(handle, delimiter="\t"))
    labelled = [r for r in specimens if r["split"] in CALIBRATION]
    write_table(args.work / "samples.tsv", labelled, list(specimens[0]))
    clibd("export", run / "checkpoints" / "best.pt", "-o", args.out / "demo-model", "--force", "--name", "clibd-demo",
          "--sample-images", sim / "images", "--sample-barcodes", args.work / "samples.tsv")
    columns = ["processid", "image_file", "nucleotides", "order", "family", "genus", "species"]
    for name in ("photos", "labelled-photos"):
        shutil.rmtree(args.out / name, ignore_errors=True)
    write_table(args.out / "demo-barcodes.tsv", [r for r in specimens if r["split"] in KEYS],
                ["processid", "nucleotides", "order", "family", "genus", "species"])
    write_table(args.out / "demo-labelled-photos.tsv", copy_photos(labelled, sim, args.out / "labelled-photos"),
                ["processid", "image_file", "order", "family", "genus", "species"])
    queries = copy_photos([r for r in specimens if r["split"] in QUERIES], sim, args.out / "photos")
    write_table(args.out / "photos_truth.tsv", [dict(r, in_reference=str(r["split"] == "test_seen").lower())
                                                for r in queries], [*columns[:2], *columns[3:], "in_reference"])


if __name__ == "__main__":
    main()
