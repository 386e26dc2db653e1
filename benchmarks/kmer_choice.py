"""Choose k for the weight-free k-mer profile encoder by measurement on real BOLD barcodes.

For each k: seeded split with 10 % of species held out of the reference; 1-NN species accuracy for
queries of reference species, genus accuracy of 1-NN for held-out species, and the AUROC of the
top-1 similarity for "species present" vs "species absent" (how well a threshold can detect novelty).

    python benchmarks/kmer_choice.py [--data ../shared/data/bold_insect_coi_dev.tsv.gz]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section

from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.sequences import read_sequences

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/bold_insect_coi_dev.tsv.gz"


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    scores = np.concatenate([pos, neg])
    ranks = scores.argsort().argsort() + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--queries", type=int, default=1500)
    parser.add_argument("--ks", default="4,5,6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    records = [r for r in read_sequences([args.data]).records if r.label("species")]
    rng = np.random.default_rng(args.seed)
    species = np.array(sorted({r.label("species") for r in records}))
    held = set(rng.choice(species, size=len(species) // 10, replace=False))
    ref = [r for r in records if r.label("species") not in held]
    held_q = [r for r in records if r.label("species") in held]
    q_idx = rng.choice(len(ref), size=args.queries, replace=False)
    seen_q = [ref[i] for i in q_idx]
    held_q = [held_q[i] for i in rng.choice(len(held_q), size=min(args.queries, len(held_q)), replace=False)]
    ref_species = np.array([r.label("species") for r in ref])
    ref_genus = np.array([r.label("genus") for r in ref])
    lines = ["| k | dimensions | encode (seq/s) | 1-NN species acc. (reference species) | 1-NN genus acc. (held-out "
             "species) | novelty AUROC (top-1 cosine) |", "|---|---|---|---|---|---|"]
    for k in map(int, args.ks.split(",")):
        enc = KmerProfileEncoder(k=k)
        t0 = time.perf_counter()
        R = enc.encode([r.sequence for r in ref])
        t_enc = time.perf_counter() - t0
        results = {}
        for name, qs, exclude_self in (("seen", seen_q, True), ("held", held_q, False)):
            Q = enc.encode([r.sequence for r in qs])
            S = Q @ R.T
            if exclude_self:
                S[np.arange(len(qs)), q_idx] = -1
            top = S.argmax(1)
            results[name] = (qs, top, S[np.arange(len(qs)), top])
        qs, top, sims_seen = results["seen"]
        sp_acc = np.mean(ref_species[top] == [r.label("species") for r in qs])
        qs, top, sims_held = results["held"]
        g_acc = np.mean(ref_genus[top] == [r.label("genus") for r in qs])
        print(f"k={k} dim={enc.dim} encode {len(ref)/t_enc:,.0f} seq/s  seen species acc {sp_acc:.4f}  "
              f"held-out genus acc {g_acc:.4f}  novelty AUROC {auroc(sims_seen, sims_held):.4f}  "
              f"median top sim seen {np.median(sims_seen):.3f} held {np.median(sims_held):.3f}", flush=True)
        lines.append(f"| {k} | {enc.dim:,} | {len(ref) / t_enc:,.0f} | {sp_acc:.2%} | {g_acc:.2%} | "
                     f"{auroc(sims_seen, sims_held):.4f} |")
        del R, S
    lines += ["", f"Exact search; {args.queries} queries per group, 10 % of species held out (seed {args.seed})."]
    if not args.no_write:
        write_section("k-mer profile encoder: choice of k", "\n".join(lines), invocation())


if __name__ == "__main__":
    main()
