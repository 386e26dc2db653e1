"""hnswlib versus exact NumPy search on ~90k real BOLD barcodes: build time, speed, and whether calls agree.

hnswlib needs a compiler to install (no binary wheels); without it clibd searches exactly.  This
measures what a laptop without a compiler gives up.  The reference is `bold_insect_coi_dev.tsv.gz`
less the benchmark's queries (the ``held-out`` case of dna_vs_vsearch.py: a seeded 5 % of species
absent, plus present-species records taken out).  For each engine (``CLIBD_SEARCH=hnswlib`` /
``exact``), side by side in one run: ``clibd build-index`` and ``clibd match`` end to end (2
threads), and the search alone (the two searches `match` makes per query, on embedded queries) as
queries per second.  Agreement: the share of queries whose calls (status, rank, the four names) are
identical, and whose top hit (id and identity) is identical, between the two engines; and the calls
of the hnswlib-built index searched exactly (the same index opened where hnswlib is missing).

Then, in-process on the hnswlib-built (calibrated) index, the graph's ``ef_search`` swept: recall of
the 32 exact nearest distinct vectors, time to identify all queries, agreement with exact search,
and right calls per rank (absent-species queries are mostly decided at order and family, where the
k-mer cosine ranks distant references poorly, so a less exact search can by chance align a better one).

    python benchmarks/search_engines.py [--present 1000] [--absent 1000]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _results import invocation, write_section
from dna_vs_vsearch import DEFAULT_DATA, held_out_case, write_fasta

import clibd_cli.index as index_module
from clibd_cli.index import ReferenceIndex
from clibd_cli.match import MatchOptions, identify
from clibd_cli.sequences import RANKS, read_sequences

ENGINES = ("hnswlib", "exact")
CALL_FIELDS = ("status", "rank", *RANKS)


def run(engine: str, cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clibd_cli.app", *cmd], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, env={**os.environ, "CLIBD_SEARCH": engine})
    return time.perf_counter() - start


def rows(path: Path) -> dict[str, dict]:
    with path.open() as fh:
        return {row["query_id"]: row for row in csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")}


def search_rate(index_dir: Path, engine: str, sequences: list[str], threads: int) -> tuple[float, float]:
    """Queries per second of the search alone (both strands, as match does), and the load time."""
    os.environ["CLIBD_SEARCH"] = engine
    try:
        start = time.perf_counter()
        index = ReferenceIndex.load(index_dir)
        index.vectors()
        loaded = time.perf_counter() - start
        encoder = index.encoder()
        embedded = encoder.encode(sequences)
        k = MatchOptions().candidates
        start = time.perf_counter()
        index.search_vectors(embedded, k, exact=True if engine == "exact" else None, threads=threads)
        index.search_vectors(embedded[::-1].copy(), k, exact=True if engine == "exact" else None, threads=threads)
        return len(sequences) / (time.perf_counter() - start), loaded
    finally:
        os.environ.pop("CLIBD_SEARCH", None)


def sweep(index_dir: Path, queries, efs: list[int]) -> list[str]:
    """Graph search at several ef_search values against exact search, on one index and one set of thresholds."""
    index = ReferenceIndex.load(index_dir)
    encoder, thresholds = index.encoder(), index.thresholds
    embedded = encoder.encode([q.sequence for q in queries])
    k = MatchOptions().candidates
    truth = {q.id: q for q in queries}

    def calls(options: MatchOptions) -> tuple[dict, float]:
        start = time.perf_counter()
        out = {r.row["query_id"]: tuple(r.row[f] for f in CALL_FIELDS) for r in
               identify(iter(queries), index, encoder, thresholds, options)}
        return out, time.perf_counter() - start

    def right_wrong(found: dict) -> str:
        cells = []
        for i, rank in enumerate(RANKS):
            named = [q for q in found if found[q][2 + i]]
            right = sum(found[q][2 + i] == truth[q].label(rank) for q in named)
            cells.append(f"{right:,} / {len(named) - right:,}")
        return " | ".join(cells)

    exact_labels = index.search_vectors(embedded, k, exact=True)[0]
    exact, exact_time = calls(MatchOptions(exact=True))
    lines = ["| search | recall@32 | identify (s) | calls = exact | " + " | ".join(f"{r} right / wrong" for r in RANKS)
             + " |", "|---|---:|---:|---:|" + "---:|" * len(RANKS),
             f"| exact | 1.000 | {exact_time:.1f} | 100.00 % | {right_wrong(exact)} |"]
    default = index_module.HNSW_EF_SEARCH
    try:
        for ef in efs:
            index_module.HNSW_EF_SEARCH = ef
            labels = index.search_vectors(embedded, k, exact=False)[0]
            recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact_labels, labels, strict=True)])
            found, seconds = calls(MatchOptions())
            agree = 100 * np.mean([found[q] == exact[q] for q in exact])
            mark = " (default)" if ef == default else ""
            lines.append(f"| hnswlib ef {ef}{mark} | {recall:.3f} | {seconds:.1f} | {agree:.2f} % | "
                         f"{right_wrong(found)} |")
    finally:
        index_module.HNSW_EF_SEARCH = default
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--present", type=int, default=1000)
    parser.add_argument("--absent", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ef", type=int, nargs="*", default=[128, 256, 512], help="ef_search values to sweep")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: not found")
    records = read_sequences([args.data]).records
    reference, present, absent = held_out_case(records, args.present, args.absent, 0.05, args.seed)
    queries = present + absent
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clibd-engines-") as tmp:
        work = Path(tmp)
        write_fasta(work / "ref.fasta", reference, with_taxonomy=True)
        write_fasta(work / "queries.fasta", queries, with_taxonomy=False)
        for engine in ENGINES:
            index = work / f"idx-{engine}"
            build = run(engine, ["build-index", "--barcodes", str(work / "ref.fasta"), "-o", str(index),
                                 "--threads", str(args.threads)])
            match = run(engine, ["match", str(work / "queries.fasta"), "-i", str(index), "-o",
                                 str(work / f"{engine}.csv"), "--hits", str(work / f"{engine}-hits.tsv"),
                                 "--threads", str(args.threads)])
            rate, loaded = search_rate(index, engine, [q.sequence for q in queries], args.threads)
            size = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())
            results[engine] = {"build": build, "match": match, "rate": rate, "load": loaded, "size": size,
                               "calls": rows(work / f"{engine}.csv"), "hits": rows(work / f"{engine}-hits.tsv")}
            print(engine, {k: v for k, v in results[engine].items() if k not in ("calls", "hits")}, flush=True)
        run("exact", ["match", str(work / "queries.fasta"), "-i", str(work / "idx-hnswlib"), "-o",
                      str(work / "cross.csv"), "--threads", str(args.threads)])
        cross = rows(work / "cross.csv")
        swept = sweep(work / "idx-hnswlib", queries, args.ef)
    graph, exact = results["hnswlib"], results["exact"]
    ids = list(graph["calls"])
    same_calls = sum(all(graph["calls"][q][f] == exact["calls"][q][f] for f in CALL_FIELDS) for q in ids)
    same_top = sum((graph["hits"].get(q, {}).get("hit_id"), graph["hits"].get(q, {}).get("identity")) ==
                   (exact["hits"].get(q, {}).get("hit_id"), exact["hits"].get(q, {}).get("identity")) for q in ids)
    same_cross = sum(all(cross[q][f] == exact["calls"][q][f] for f in CALL_FIELDS) for q in ids)
    n = len(ids)
    body = [
        f"Reference: {len(reference):,} BOLD barcodes; {n:,} queries ({len(present):,} present species, "
        f"{len(absent):,} absent species). {args.threads} threads.",
        "",
        "| engine | build-index (s) | index size (MB) | match, end to end (s) | search only (queries/s) "
        "| index load (s) |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {e} | {r['build']:.1f} | {r['size'] / 1e6:.0f} | {r['match']:.1f} | {r['rate']:,.0f} | "
          f"{r['load']:.2f} |" for e, r in results.items()),
        "",
        f"Ratios (hnswlib / exact): build {graph['build'] / exact['build']:.2f}, match "
        f"{graph['match'] / exact['match']:.2f}, search rate {graph['rate'] / exact['rate']:.2f}.",
        f"Identical calls (status, rank, order…species): {same_calls:,} / {n:,} = {100 * same_calls / n:.2f} %; "
        f"identical top hit (id and identity): {same_top:,} / {n:,} = {100 * same_top / n:.2f} %. "
        f"The hnswlib-built index searched exactly: calls identical to the exact-built index's for "
        f"{same_cross:,} / {n:,} (same thresholds: calibration is exact on both).",
        "",
        "ef_search sweep (in-process, hnswlib-built index; right / wrong = calls naming the query's taxon / "
        "another):",
        "",
        *swept,
    ]
    print("\n".join(body))
    if not args.no_write:
        write_section("Search engines: hnswlib vs exact (no compiler)", "\n".join(body), invocation())


if __name__ == "__main__":
    main()
