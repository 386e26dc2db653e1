"""Does the k-mer stage propose the alignment-best reference?  Recall against exhaustive alignment.

Seeded held-out split of `bold_insect_coi_dev.tsv.gz` (5 % of species absent from the reference).
For a sample of queries (present species, absent species, and absent species cut to their last
313 bp), the references over *every* distinct one that align best (all scored by Opal, overlap mode,
score only; the 50 best-scoring aligned in full; those within 0.1 identity point of the best) are looked
for among clibd's candidates (`--candidates` C distinct references from the k-mer search on both
strands, plus 12-mer anchors for reads under 500 bp, as `clibd match` proposes them).
Recall = share of queries with one of them among the candidates; for the others, the median shortfall
of the best identity clibd then verifies (as `clibd match` does) below the exhaustive best.  For the
absent species, a second table says where the best reference ranks among all references by exact
profile cosine: whether more candidates, or an exact search, would find it.

    python benchmarks/candidate_recall.py [--queries 40] [--candidates 16,32,64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section
from dna_vs_vsearch import DEFAULT_DATA, held_out_case

from clibd_cli.align import _aligner, align_many
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MIN_COVERAGE, MatchOptions, _propose, verified_hits
from clibd_cli.sequences import SequenceRecord, read_sequences

BANDS = ((0.95, "≥ 95 %"), (0.92, "92–95 %"), (0.90, "90–92 %"), (0.0, "< 90 %"))  # nearest reference's identity
RANKS = (64, 256, 1024)


def exhaustive_best(query: str, database, inputs: list[str], top: int = 50) -> tuple[float, np.ndarray]:
    """The best identity over every distinct reference, and the references that reach it (within 0.1 point)."""
    scores = np.array([r.score for r in _aligner().align(query, database, mode="score", algorithm="ov")])
    best = np.argsort(-scores)[:top]
    found = align_many(query, [inputs[i] for i in best])
    identity = np.array([a.identity if a.coverage >= MIN_COVERAGE else 0.0 for a in found])
    return float(identity.max(initial=0.0)), best[identity >= identity.max(initial=0.0) - 0.001]


def cosine_ranks(queries: list[str], bests: list[np.ndarray], encoder, vectors: np.ndarray) -> np.ndarray:
    """Per query, how many references' profiles are closer to it (exact cosine) than the closest of its
    alignment-best references: whether more candidates would find it, apart from the graph's approximation."""
    ranks = []
    for query, best in zip(queries, bests, strict=True):
        cosines = vectors @ encoder.encode([query])[0]
        ranks.append(int((cosines > cosines[best].max()).sum()))
    return np.array(ranks)


def main() -> None:
    import pyopal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=40, help="queries per group")
    parser.add_argument("--candidates", default="16,32,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    records = read_sequences([args.data]).records
    reference, present, absent = held_out_case(records, args.queries, args.queries, 0.05, args.seed)
    encoder = KmerProfileEncoder()
    index = ReferenceIndex.from_records(reference, encoder)
    inputs = index.vector_inputs()
    database = pyopal.Database(inputs, alphabet=_aligner().alphabet)
    groups = {"present": [r.sequence for r in present], "absent": [r.sequence for r in absent],
              "absent, last 313 bp": [r.sequence[-313:] for r in absent]}
    sizes = [int(c) for c in args.candidates.split(",")]
    lines = ["| queries | n | " + " | ".join(f"recall, {c} candidates" for c in sizes) + " | exhaustive s/query |",
             "|---|---|" + "---|" * (len(sizes) + 1)]
    for name, queries in groups.items():
        start = time.perf_counter()
        truth, bests = zip(*[exhaustive_best(q, database, inputs) for q in queries], strict=True)
        seconds = (time.perf_counter() - start) / len(queries)
        records = [SequenceRecord(f"q{i}", q) for i, q in enumerate(queries)]
        cells = []
        for c in sizes:  # the first stage exactly as `clibd match` runs it (both strands, 12-mer anchors)
            proposed = _propose(records, index, encoder, MatchOptions(candidates=c))
            missed = np.array([not np.isin(b, p.vectors).any() for b, p in zip(bests, proposed, strict=True)])
            found = [verified_hits(p.sequence, index, p.vectors, p.cosines, 1)
                     for p, m in zip(proposed, missed, strict=True) if m]
            best = np.array([h.identity[0] if len(h.identity) else 0.0 for h in found])
            gap = np.maximum(0.0, 100 * (np.array(truth)[missed] - best))
            cells.append(f"{np.mean(~missed):.1%} (missed by {np.median(gap) if len(gap) else 0:.1f} pt)")
            if name == "absent" and c == max(sizes):
                found_absent = ~missed
        lines.append(f"| {name} | {len(queries)} | " + " | ".join(cells) + f" | {seconds:.1f} |")
        print(lines[-1], flush=True)
        if name == "absent":
            ranked = cosine_ranks(queries, list(bests), encoder, index.vectors()), np.array(truth)
    ranks, truth = ranked
    lines += ["", "Absent species: is the alignment-best reference among the references whose profiles are closest to "
              "the query (exact cosine, so apart from the graph's approximation)?  By how close it is:", "",
              "| nearest reference | queries | " + " | ".join(f"among the {r:,} closest" for r in RANKS)
              + f" | among clibd's {max(sizes)} candidates |", "|---|---|" + "---|" * (len(RANKS) + 1)]
    floor = np.inf
    for low, label in BANDS:
        band = (truth >= low) & (truth < floor)
        floor = low
        cells = [f"{np.mean(ranks[band] < r):.0%}" if band.any() else "" for r in RANKS]
        cells.append(f"{np.mean(found_absent[band]):.0%}" if band.any() else "")
        lines.append(f"| {label} | {int(band.sum())} | " + " | ".join(cells) + " |")
    body = "\n".join([f"Reference: {len(reference):,} barcodes ({len(inputs):,} distinct); held-out split, seed "
                      f"{args.seed}. Exhaustive: Opal score over every distinct reference, the 50 best aligned.", "",
                      *lines])
    print(body)
    if not args.no_write:
        write_section("Candidate recall of the k-mer stage vs exhaustive alignment", body, invocation())


if __name__ == "__main__":
    main()
