"""DNA→DNA evaluation on real BOLD barcodes, paper protocol: the k-mer profile vs a trained DNA encoder.

Everything goes through the public commands, so the numbers are what a user reproduces:

1. ``clibd split`` partitions `bold_insect_coi_dev.tsv.gz` the CLIBD way (seen species 70/10/10/10,
   unseen species split into query and key halves) — once on the full table (k-mer profile only) and
   once on a subsample of at most ``--per-species`` barcodes per species (both encoders: training a
   BERT on this CPU is only feasible at that size);
2. ``clibd train --stage dna-pretrain`` (masked k-mers) then ``clibd train`` (DNA↔taxonomy-text
   contrastive, species positives) on the subsample's ``train_seen`` records, 2 gloo processes;
3. ``clibd evaluate --model kmer`` and ``clibd evaluate --model RUN/checkpoints/best.pt`` on the test
   split: micro/macro top-1 per rank for seen and unseen species, harmonic mean, open-set numbers.

    python benchmarks/dna_encoder_vs_kmer.py [--per-species 12] [--pretrain-epochs 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section

from clibd_cli.schema import RANKS

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/bold_insect_coi_dev.tsv.gz"
MODEL = ["--set", "model.modalities=[dna, text]", "--set", "model.embed_dim=128",
         "--set", "model.dna={hidden_size: 128, num_layers: 4, num_heads: 4, intermediate_size: 512, k: 4, "
         "layout: current, max_len: 660}"]


def clibd(*args: object) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clibd_cli.app", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def subsample(source: Path, target: Path, per_species: int, seed: int) -> int:
    """At most `per_species` barcodes (≥ 400 bp) per species, plus nothing unlabelled; returns the count."""
    with gzip.open(source, "rt", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header, rows = reader.fieldnames, list(reader)
    rng = np.random.default_rng(seed)
    by_species: dict[str, list[dict]] = {}
    for row in rows:
        if row["species"] and len(row["nucleotides"].replace("-", "")) >= 400:
            by_species.setdefault(row["species"], []).append(row)
    kept = [members[i] for name in sorted(by_species) for members in [by_species[name]]
            for i in sorted(rng.permutation(len(members))[:per_species])]
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    return len(kept)


def table(reports: dict[str, dict]) -> list[str]:
    """Paper layout: one row per rank and encoder, micro top-1 seen / unseen / harmonic and macro."""
    lines = ["| rank | DNA encoder | micro top-1 seen / unseen / H | macro top-1 seen / unseen |",
             "|---|---|---|---|"]
    for rank in RANKS:
        for name, report in reports.items():
            entry = report["closed_set"]["dna_to_dna"]
            seen, unseen, harmonic = entry["seen"][rank], entry["unseen"][rank], entry["harmonic"][rank]
            lines.append(f"| {rank} | {name} | {100 * seen['micro_top1']:.1f} / {100 * unseen['micro_top1']:.1f} / "
                         f"{100 * harmonic['micro_top1']:.1f} | {100 * seen['macro_top1']:.1f} / "
                         f"{100 * unseen['macro_top1']:.1f} |")
    return lines


def open_table(reports: dict[str, dict]) -> list[str]:
    lines = ["| DNA encoder | absent species named (wrong) | absent: rolled up to right genus/family | "
             "present species named | named right | AUROC species absent |", "|---|---|---|---|---|---|"]
    for name, report in reports.items():
        entry = report["open_set"]["dna_to_dna"]
        lines.append(f"| {name} | {100 * entry['absent']['named_species_share']:.1f} % | "
                     f"{100 * entry['absent']['rolled_up_correct_share']:.1f} % | "
                     f"{100 * entry['present']['named_share']:.1f} % | "
                     f"{100 * entry['present']['named_correct_share']:.1f} % | {entry['auroc_species_absent']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-species", type=int, default=12)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clibd-dnaeval-") as tmp:
        work = Path(tmp)
        clibd("split", args.data, "-o", work / "full_split.tsv", "--seed", args.seed)
        t_full = clibd("evaluate", "--model", "kmer", "--data", work / "full_split.tsv", "-o", work / "full.json")
        n_sub = subsample(args.data, work / "subset.tsv", args.per_species, args.seed)
        clibd("split", work / "subset.tsv", "-o", work / "split.tsv", "--seed", args.seed)
        t_pre = clibd("train", "--config", "tiny-cpu", "--stage", "dna-pretrain", "--data", work / "split.tsv",
                      "--output", work / "pre", "--nproc-per-node", 2, *MODEL,
                      "--set", f"epochs={args.pretrain_epochs}", "--set", "batch_size=64")
        t_con = clibd("train", "--config", "tiny-cpu", "--data", work / "split.tsv", "--output", work / "run",
                      "--nproc-per-node", 2, *MODEL, "--set", f"model.dna.pretrained={work / 'pre' / 'dna_encoder'}",
                      "--set", f"epochs={args.epochs}", "--set", "batch_size=64", "--set", "positives=species")
        clibd("evaluate", "--model", "kmer", "--data", work / "split.tsv", "-o", work / "kmer.json")
        clibd("evaluate", "--model", work / "run" / "checkpoints" / "best.pt", "--data", work / "split.tsv",
              "-o", work / "trained.json")
        full = json.loads((work / "full.json").read_text())
        kmer = json.loads((work / "kmer.json").read_text())
        trained = json.loads((work / "trained.json").read_text())
    name_kmer, name_trained = "k-mer profile (k=5, no training)", "trained BERT 4×128 (pretrain + contrastive)"
    counts = full["counts"]
    lines = [f"**Full table** (`clibd split` seed {args.seed}: {counts['queries_seen']:,} seen + "
             f"{counts['queries_unseen']:,} unseen test queries, {counts['keys']:,} keys; evaluate {t_full:.0f} s):",
             "", *table({name_kmer: full}), "", *open_table({name_kmer: full}), "",
             f"**Subsample** (≤ {args.per_species} barcodes per species, {n_sub:,} records; "
             f"{kmer['counts']['queries_seen']:,} + {kmer['counts']['queries_unseen']:,} test queries, "
             f"{kmer['counts']['keys']:,} keys), both encoders:", "",
             *table({name_kmer: kmer, name_trained: trained}), "",
             *open_table({name_kmer: kmer, name_trained: trained}), "",
             "Trained encoder: BarcodeBERT-style BERT, 4 layers × 128, 4-mers, 128-d embedding; masked-k-mer "
             f"pretraining {args.pretrain_epochs} epochs ({t_pre:.0f} s) then DNA↔taxonomy-text contrastive with "
             f"species positives {args.epochs} epochs ({t_con:.0f} s) on `train_seen`, 2 gloo processes on this CPU. "
             "Open set: unseen species' keys removed, thresholds calibrated on the val split for precision 0.95."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("DNA→DNA evaluation on real BOLD barcodes: k-mer profile vs trained DNA encoder", text,
                      invocation())


if __name__ == "__main__":
    main()
