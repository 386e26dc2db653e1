"""Does the k-mer stage propose the alignment-best reference?  Recall against exhaustive alignment.

Seeded held-out split of `bold_insect_coi_dev.tsv.gz` (5 % of species absent from the reference).
For a sample of queries (present species, absent species, and absent species cut to their last
313 bp), the references over *every* distinct one that align best (all scored by Opal, overlap mode,
score only; the 50 best-scoring aligned in full; those within 0.1 identity point of the best) are looked
for among clibd's candidates (`--candidates` C distinct references from the k-mer search on both
strands, plus 12-mer anchors for reads under 500 bp, as `clibd match` proposes them).
Recall = share of queries whose candidates hold a reference as close as the exhaustive best (within
0.1 identity point, both aligned by Opal); for the others, the median shortfall in identity points.  For the
absent species, a second table says where the best reference ranks among all references by exact
profile cosine: whether more candidates, or an exact search, would find it.

    python benchmarks/candidate_recall.py [--queries 40] [--candidates 16,32,64] [--word-candidates]
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

from clibd_cli import match
from clibd_cli.align import _aligner, align_many
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MIN_COVERAGE, MatchOptions, _propose
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


def candidates_shortfall(query: str, candidates: np.ndarray, best: np.ndarray, identity: float,
                         inputs: list[str]) -> float:
    """How many identity points the best of ``candidates`` (aligned as the exhaustive search aligns) is below
    the exhaustive ``identity``: 0 where one of the ``best`` references is among them."""
    if np.isin(best, candidates).any():
        return 0.0
    found = align_many(query, [inputs[i] for i in candidates])
    return max(0.0, 100 * (identity - max((a.identity for a in found if a.coverage >= MIN_COVERAGE), default=0.0)))


def cosine_ranks(queries: list[str], bests: list[np.ndarray], encoder, vectors: np.ndarray) -> np.ndarray:
    """Per query, how many references' profiles are closer to it (exact cosine) than the closest of its
    alignment-best references: whether more candidates would find it, apart from the graph's approximation."""
    ranks = []
    for embedding, best in zip(encoder.encode(queries), bests, strict=True):
        cosines = vectors @ embedding
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
    parser.add_argument("--word-candidates", action="store_true",
                        help="experiment: whole barcodes also get the word candidates `clibd match` gives reads "
                             "under 500 bp (implies --no-write)")
    args = parser.parse_args()
    if args.word_candidates:
        match.FRAGMENT_LENGTH = sys.maxsize
        args.no_write = True
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
            gap = np.array([candidates_shortfall(q, p.vectors, b, t, inputs)
                            for q, p, b, t in zip(queries, proposed, bests, truth, strict=True)])
            missed = gap > 0.1
            cells.append(f"{np.mean(~missed):.1%} (missed by {np.median(gap[missed]) if missed.any() else 0:.1f} pt)")
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
              + f" | recall, {max(sizes)} candidates |", "|---|---|" + "---|" * (len(RANKS) + 1)]
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
