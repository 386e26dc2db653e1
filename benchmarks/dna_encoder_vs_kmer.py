"""A trained DNA encoder (masked-k-mer pretraining + DNA↔taxonomy contrastive fine-tuning, small
model, CPU) versus the weight-free k-mer profile encoder, on real BOLD barcodes.

Seeded CLIBD-style split of `bold_insect_coi_dev.tsv.gz` (at most `--per-species` records each):
species with ≥ 10 records, 80 % "seen" (records 70/10/10/10 → train / val / test queries / keys)
and 20 % "unseen" (split by species between val and test, records 50/50 into queries and keys).
Both stages train on the seen training records only.  Test queries (seen and unseen species) are
classified by their nearest key (exact cosine), species and genus, micro and macro top-1.

    python benchmarks/dna_encoder_vs_kmer.py [--per-species 20] [--pretrain-epochs 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section

from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.metrics import harmonic_mean, knn_accuracy
from clibd_cli.sequences import RANKS, read_sequences

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/bold_insect_coi_dev.tsv.gz"
MODEL = ["--set", "model.modalities=[dna, text]", "--set", "model.embed_dim=128",
         "--set", "model.dna={hidden_size: 128, num_layers: 4, num_heads: 4, intermediate_size: 512, k: 4, "
         "layout: current, max_len: 660}"]


def make_split(records, per_species: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    by_species: dict[str, list] = {}
    for r in records:
        if r.label("species") and len(r.sequence) >= 400:
            by_species.setdefault(r.label("species"), []).append(r)
    species = sorted(s for s, rs in by_species.items() if len(rs) >= 10)
    rng.shuffle(species)
    n_unseen = len(species) // 5
    unseen, seen = species[:n_unseen], species[n_unseen:]
    rows = []
    for name in seen:
        members = [by_species[name][i] for i in rng.permutation(len(by_species[name]))[:per_species]]
        cut = np.cumsum([round(len(members) * f) for f in (0.7, 0.1, 0.1)])
        for i, r in enumerate(members):
            split = ("train_seen" if i < cut[0] else "val_seen" if i < cut[1] else "test_seen" if i < cut[2]
                     else "seen_keys")
            rows.append((r, split))
    for j, name in enumerate(unseen):
        members = [by_species[name][i] for i in rng.permutation(len(by_species[name]))[:per_species]]
        half = "val" if j % 2 == 0 else "test"
        for i, r in enumerate(members):
            rows.append((r, f"{half}_unseen" if i < len(members) // 2 else f"{half}_unseen_keys"))
    return rows


def write_manifest(path: Path, rows) -> None:
    with path.open("w") as fh:
        fh.write("processid\tnucleotides\torder\tfamily\tgenus\tspecies\tsplit\n")
        for r, split in rows:
            fh.write("\t".join([r.id, r.sequence, *(r.label(rank) for rank in RANKS), split]) + "\n")


def clibd(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clibd_cli.app", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return time.perf_counter() - start


def trained_dna_embeddings(run: Path, sequences: list[str]) -> np.ndarray:
    import torch

    from training.models import build_model
    from training.text_tokenizer import load_text_tokenizer

    state = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    model = build_model(state["model_config"], text_tokenizer=load_text_tokenizer(run / "text_tokenizer"),
                        load_pretrained=False)
    model.load_state_dict(state["model"])
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(sequences), 256):
            batch = model.dna_encoder.tokenize(sequences[start : start + 256])
            out.append(model.encode_dna(batch["input_ids"], batch["attention_mask"]).numpy())
    return np.concatenate(out)


def evaluate(embed, rows) -> dict:
    keys = [r for r, s in rows if s in ("seen_keys", "test_unseen_keys")]
    key_emb = embed([r.sequence for r in keys])
    key_labels = {rank: np.array([r.label(rank) for r in keys], dtype=object) for rank in RANKS}
    out = {}
    for group in ("test_seen", "test_unseen"):
        queries = [r for r, s in rows if s == group]
        labels = {rank: np.array([r.label(rank) for r in queries], dtype=object) for rank in RANKS}
        out[group] = knn_accuracy(embed([r.sequence for r in queries]), key_emb, labels, key_labels, ks=(1,))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-species", type=int, default=20)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = make_split(read_sequences([args.data]).records, args.per_species, args.seed)
    counts = {s: sum(1 for _, x in rows if x == s) for s in sorted({x for _, x in rows})}
    with tempfile.TemporaryDirectory(prefix="clibd-dnaenc-") as tmp:
        work = Path(tmp)
        write_manifest(work / "all.tsv", rows)
        write_manifest(work / "pretrain.tsv", [(r, s) for r, s in rows if s == "train_seen"])
        t_pre = clibd("train", "--config", "tiny-cpu", "--stage", "dna-pretrain", "--data", str(work / "pretrain.tsv"),
                      "--output", str(work / "pre"), "--nproc-per-node", "2", *MODEL,
                      "--set", f"epochs={args.pretrain_epochs}", "--set", "batch_size=64")
        t_con = clibd("train", "--config", "tiny-cpu", "--data", str(work / "all.tsv"), "--output", str(work / "run"),
                      "--nproc-per-node", "2", *MODEL, "--set", f"model.dna.pretrained={work / 'pre' / 'dna_encoder'}",
                      "--set", f"epochs={args.epochs}", "--set", "batch_size=64", "--set", "positives=species",
                      "--set", "data.key_splits=[seen_keys, val_unseen_keys]")
        trained = evaluate(lambda seqs: trained_dna_embeddings(work / "run", seqs), rows)
    kmer = evaluate(KmerProfileEncoder().encode, rows)
    lines = ["| DNA encoder | species top-1 seen / unseen / H (micro) | species macro seen / unseen "
             "| genus top-1 seen / unseen (micro) |", "|---|---|---|---|"]
    for name, result in (("k-mer profile (k=5, no training)", kmer), ("trained (pretrain + contrastive)", trained)):
        s, u = result["test_seen"], result["test_unseen"]
        lines.append(f"| {name} | {s['species']['micro_top1']:.3f} / {u['species']['micro_top1']:.3f} / "
                     f"{harmonic_mean(s['species']['micro_top1'], u['species']['micro_top1']):.3f} | "
                     f"{s['species']['macro_top1']:.3f} / {u['species']['macro_top1']:.3f} | "
                     f"{s['genus']['micro_top1']:.3f} / {u['genus']['micro_top1']:.3f} |")
    lines += ["", f"Split (records): {', '.join(f'{k} {v:,}' for k, v in counts.items())}. Trained encoder: "
              "BERT 4 layers × 128 over 4-mers, 128-d embedding, DNA↔taxonomy-text contrastive loss with "
              f"species positives; masked-k-mer pretraining {args.pretrain_epochs} epochs ({t_pre:.0f} s), "
              f"contrastive {args.epochs} epochs ({t_con:.0f} s), 2 gloo processes on this CPU."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("Trained DNA encoder vs k-mer profile (real BOLD barcodes)", text,
                      "python benchmarks/dna_encoder_vs_kmer.py" + "".join(f" {a}" for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
