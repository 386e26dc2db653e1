"""clibd versus VSEARCH on real BOLD barcodes: accuracy, honesty on missing species, speed.

Seeded split of `bold_insect_coi_dev.tsv.gz`: a share of species is held out of the reference
entirely (their records become "held-out" queries), and a sample of records of reference species
becomes "present" queries (removed from the reference).  Both tools get the same FASTA files:

* clibd: `clibd build-index` (k-mer profile encoder, HNSW, leave-species-out calibration) and
  `clibd match`; a rank is counted when clibd calls it.
* VSEARCH: `--makeudb_usearch` then `--usearch_global` (defaults: maxaccepts 1, maxrejects 32) with
  the customary identity cut-offs: species ≥ 97 %, genus ≥ 95 %, family ≥ 90 %, order ≥ 85 %.

Both run as end-to-end commands with 2 threads, timed side by side in one run.

    python benchmarks/dna_vs_vsearch.py [--data PATH] [--present 5000] [--held-share 0.05]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section

from clibd_cli.sequences import RANKS, SequenceRecord, read_sequences

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/bold_insect_coi_dev.tsv.gz"
VSEARCH_CUTOFFS = {"species": 97.0, "genus": 95.0, "family": 90.0, "order": 85.0}


def write_fasta(path: Path, records: list[SequenceRecord], with_taxonomy: bool) -> None:
    with path.open("w") as fh:
        for r in records:
            header = r.id
            if with_taxonomy:
                header += "|" + "|".join(r.label(rank) for rank in RANKS) + "|" + r.bin
            fh.write(f">{header}\n{r.sequence}\n")


def split(records: list[SequenceRecord], held_share: float, n_present: int, seed: int):
    rng = np.random.default_rng(seed)
    labelled = [r for r in records if r.label("species")]
    species = sorted({r.label("species") for r in labelled})
    held = set(rng.choice(species, size=max(1, round(held_share * len(species))), replace=False).tolist())
    held_q = [r for r in labelled if r.label("species") in held]
    rest = [r for r in records if r.label("species") not in held]
    candidates = [i for i, r in enumerate(rest) if r.label("species")]
    present_idx = set(rng.choice(candidates, size=n_present, replace=False).tolist())
    present_q = [rest[i] for i in sorted(present_idx)]
    reference = [r for i, r in enumerate(rest) if i not in present_idx]
    return reference, present_q, held_q


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def run_clibd(workdir: Path, ref: Path, queries: Path, threads: int, kmer: int) -> tuple[dict, float, float]:
    clibd = [sys.executable, "-m", "clibd_cli.app"]
    build = timed([*clibd, "build-index", "-b", str(ref), "-o", str(workdir / "idx"), "--force",
                   "--threads", str(threads), "--kmer", str(kmer)])
    out = workdir / "clibd.csv"
    match = timed([*clibd, "match", str(queries), "-i", str(workdir / "idx"), "-o", str(out), "--force",
                   "--threads", str(threads)])
    with out.open() as fh:
        rows = {row["query_id"]: row for row in csv.DictReader(fh)}
    calls = {qid: {rank: row[rank] for rank in RANKS} for qid, row in rows.items()}
    top = {qid: row["top_hit_id"] for qid, row in rows.items()}
    return {"calls": calls, "top": top}, build, match


def run_vsearch(workdir: Path, ref: Path, queries: Path, threads: int,
                taxonomy: dict[str, dict[str, str]]) -> tuple[dict, float, float]:
    udb = workdir / "ref.udb"
    build = timed(["vsearch", "--makeudb_usearch", str(ref), "--output", str(udb), "--threads", str(threads)])
    out = workdir / "vsearch.b6"
    match = timed(["vsearch", "--usearch_global", str(queries), "--db", str(udb), "--id", "0.70",
                   "--blast6out", str(out), "--threads", str(threads), "--notrunclabels"])
    calls, top = {}, {}
    with out.open() as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            qid, target, identity = fields[0], fields[1].split("|")[0], float(fields[2])
            top[qid] = target
            calls[qid] = {rank: taxonomy[target][rank] if identity >= VSEARCH_CUTOFFS[rank] else ""
                          for rank in RANKS}
    return {"calls": calls, "top": top}, build, match


def score(result: dict, queries: list[SequenceRecord], taxonomy: dict[str, dict[str, str]]) -> dict:
    """Accuracy of calls per rank (an uncalled rank counts as not correct) and of the top hit."""
    out = {}
    for rank in RANKS:
        out[rank] = np.mean([result["calls"].get(q.id, {}).get(rank, "") == q.label(rank) for q in queries])
        out[f"top_{rank}"] = np.mean([taxonomy.get(result["top"].get(q.id, ""), {}).get(rank) == q.label(rank)
                                      for q in queries])
    out["wrong_species"] = np.mean([bool(result["calls"].get(q.id, {}).get("species")) and
                                    result["calls"][q.id]["species"] != q.label("species") for q in queries])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--present", type=int, default=5000, help="queries of reference species")
    parser.add_argument("--held-share", type=float, default=0.05, help="share of species held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kmer", type=int, default=5, help="k of clibd's k-mer profile encoder")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if shutil.which("vsearch") is None:
        sys.exit("vsearch is not installed (Debian: apt-get install vsearch)")
    if not args.data.exists():
        sys.exit(f"{args.data}: not found")

    records = read_sequences([args.data]).records
    reference, present, held = split(records, args.held_share, args.present, args.seed)
    taxonomy = {r.id: {rank: r.label(rank) for rank in RANKS} for r in records}
    with tempfile.TemporaryDirectory(prefix="clibd-bench-") as tmp:
        work = Path(tmp)
        write_fasta(work / "ref.fasta", reference, with_taxonomy=True)
        write_fasta(work / "queries.fasta", present + held, with_taxonomy=False)
        clibd, c_build, c_match = run_clibd(work, work / "ref.fasta", work / "queries.fasta", args.threads,
                                         args.kmer)
        vsearch, v_build, v_match = run_vsearch(work, work / "ref.fasta", work / "queries.fasta", args.threads,
                                                taxonomy)
    n_queries = len(present) + len(held)
    rows = []
    for name, result, build, match in (("clibd", clibd, c_build, c_match),
                                       ("VSEARCH 97 %", vsearch, v_build, v_match)):
        p, h = score(result, present, taxonomy), score(result, held, taxonomy)
        rows.append((name, p, h, build, n_queries / match))
    species_per_q = len({r.label("species") for r in reference})
    body = [
        f"Reference: {len(reference):,} barcodes of {species_per_q:,} species; queries: {len(present):,} of "
        f"reference species (removed from the reference) + {len(held):,} of {len({r.label('species') for r in held})} "
        f"species held out entirely (seed {args.seed}). VSEARCH calls a rank when the top hit's identity passes "
        "97 / 95 / 90 / 85 % (species / genus / family / order); clibd uses its calibrated thresholds. "
        "Uncalled ranks count as not correct; 'top hit' columns ignore thresholds.",
        "",
        "| tool | species acc. | genus acc. | family acc. | top-hit species | held-out: wrong species name "
        "| held-out: genus acc. | held-out: family acc. | index build (s) | queries/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p, h, build, qps in rows:
        body.append(f"| {name} | {p['species']:.2%} | {p['genus']:.2%} | {p['family']:.2%} | {p['top_species']:.2%} "
                    f"| {h['wrong_species']:.2%} | {h['genus']:.2%} | {h['family']:.2%} | {build:.1f} | {qps:,.0f} |")
    speedup = rows[0][4] / rows[1][4]
    body += ["", f"clibd answers {speedup:.1f}× as many queries per second as VSEARCH "
             f"(end-to-end commands incl. start-up and index loading, {args.threads} threads each). "
             "Accuracy gap (species, present): "
             f"{(rows[0][1]['species'] - rows[1][1]['species']) * 100:+.2f} points; wrong species names on held-out "
             f"species: clibd {rows[0][2]['wrong_species']:.2%} vs VSEARCH {rows[1][2]['wrong_species']:.2%}."]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        command = "python benchmarks/dna_vs_vsearch.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section("DNA identification: clibd vs VSEARCH", text, command)


if __name__ == "__main__":
    main()
