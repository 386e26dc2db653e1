"""Calls on short reads of every length, window by window, against the thresholds fitted for them.

The index fits short-read thresholds on 100, 150 and 200 bp stretches, each applied to the overlaps nearest
its length (up to 300 bp); metabarcoding reads and degraded DNA give reads of any length.  Queries of
benchmarks/dna_vs_vsearch.py's held-out case (same data, seed and split), a seeded sample of present- and
absent-species queries each cut to one random window of every length, are identified by `clibd match`
against that case's index; per length and rank, the share of right and wrong calls (for absent species
every species name is wrong).  Issue 9's limits for absent species: wrong genus ≤ 5 %, wrong family
≤ 3 %, wrong order ≤ 0.5 %.

    python benchmarks/short_windows.py [--queries 600] [--lengths 40,60,100,150,200,250]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section
from dna_vs_vsearch import DEFAULT_DATA, held_out_case, read_data, write_fasta

from clibd_cli.schema import RANKS
from clibd_cli.sequences import SequenceRecord


def windows(queries: list[SequenceRecord], length: int, rng: np.random.Generator) -> list[SequenceRecord]:
    """One random window of ``length`` bases of each query long enough to hold it (20 bases to spare)."""
    out = []
    for q in queries:
        if len(q.sequence) >= length + 20:
            start = int(rng.integers(0, len(q.sequence) - length))
            out.append(SequenceRecord(q.id, q.sequence[start : start + length], q.taxonomy, q.bin))
    return out


def cells(rows: dict[str, dict], queries: list[SequenceRecord], absent: bool) -> list[str]:
    """Right / wrong per rank, species first, as shares of ``queries`` (absent species: wrong species only)."""
    n, out = len(queries), []
    for rank in reversed(RANKS):
        called = [(rows[q.id][rank], q.label(rank)) for q in queries if rows[q.id][rank]]
        right = 0 if absent and rank == "species" else sum(name == truth for name, truth in called)
        wrong = len(called) - right
        out.append(f"{100 * wrong / n:.1f}%" if absent and rank == "species" else
                   f"{100 * right / n:.1f}% / {100 * wrong / n:.1f}%")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=600, help="present- plus absent-species queries sampled")
    parser.add_argument("--lengths", default="40,60,100,150,200,250")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    reference, present, absent = held_out_case(read_data(args.data), 3000, 3000, 0.05, args.seed)
    rng = np.random.default_rng(args.seed)
    present = [present[i] for i in sorted(rng.choice(len(present), args.queries // 2, replace=False))]
    absent = [absent[i] for i in sorted(rng.choice(len(absent), args.queries - args.queries // 2, replace=False))]
    header = ("| window | queries (present + absent) | present: species | genus | family | order | "
              "absent: species wrong | genus | family | order |")
    lines = [header, "|" + "---|" * 10]
    with tempfile.TemporaryDirectory(prefix="clibd-short-") as tmp:
        work = Path(tmp)
        write_fasta(work / "ref.fasta", reference, with_taxonomy=True)
        subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-b", str(work / "ref.fasta"), "-o",
                        str(work / "idx"), "--threads", str(args.threads)], check=True, capture_output=True)
        for length in (int(x) for x in args.lengths.split(",")):
            cut_present, cut_absent = windows(present, length, rng), windows(absent, length, rng)
            write_fasta(work / "q.fasta", cut_present + cut_absent, with_taxonomy=False)
            subprocess.run([sys.executable, "-m", "clibd_cli.app", "match", str(work / "q.fasta"), "-i",
                            str(work / "idx"), "-o", str(work / "out.csv"), "--force", "--threads",
                            str(args.threads)], check=True, capture_output=True)
            with (work / "out.csv").open(newline="") as fh:
                rows = {row["query_id"]: row for row in csv.DictReader(fh)}
            lines.append(f"| {length} bp | {len(cut_present)} + {len(cut_absent)} | "
                         + " | ".join(cells(rows, cut_present, False) + cells(rows, cut_absent, True)) + " |")
            print(lines[-1], flush=True)
    body = (f"Queries of `benchmarks/dna_vs_vsearch.py`'s held-out case ({len(reference):,} reference barcodes), a "
            f"seeded sample of {len(present):,} present- and {len(absent):,} absent-species queries, each cut to one "
            "random window of the length shown; `clibd match` against that case's index.  Right / wrong calls "
            "per rank as shares of the queries (for absent species every species name is wrong).  The index's "
            "short-read thresholds are fitted on 100, 150 and 200 bp windows, each set serving reads whose top "
            "hit's overlap is nearest its window (up to 300 bp); an overlap under 100 bp supports no call.\n\n"
            + "\n".join(lines) + "\n")
    print(body)
    if not args.no_write:
        write_section("Short reads, window by window", body, invocation())


if __name__ == "__main__":
    main()
