"""What checking an index's checksums on load costs, against a `clibd match` run on the real 90k index.

Builds an index of every barcode of `bold_insect_coi_dev.tsv.gz` (the 90k BOLD reference), then times
`ReferenceIndex.load` with its sha256 checks and with them switched off (median of 5 each), and one
`clibd match` of 1,000 of its records (end to end, as a user runs it).  The issue's bound: the checks
cost under 10 % of the match run.

    python benchmarks/verify_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section

import clibd_cli.index as index_module
from clibd_cli.index import ReferenceIndex
from clibd_cli.sequences import read_sequences

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/bold_insect_coi_dev.tsv.gz"


def median_load(path: Path, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        ReferenceIndex.load(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    records = read_sequences([args.data]).records
    with tempfile.TemporaryDirectory(prefix="clibd-verify-") as tmp:
        index, queries = Path(tmp) / "idx", Path(tmp) / "q.fasta"
        subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-b", str(args.data), "-o",
                        str(index)], check=True, stderr=subprocess.DEVNULL)
        step = max(1, len(records) // args.queries)
        queries.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records[::step][: args.queries]))
        checked = median_load(index)
        real_verify = index_module._verify
        index_module._verify = lambda *a, **k: None
        try:
            unchecked = median_load(index)
        finally:
            index_module._verify = real_verify
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clibd_cli.app", "match", str(queries), "-i", str(index), "-o",
                        str(Path(tmp) / "out.csv")], check=True, stderr=subprocess.DEVNULL)
        match_s = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())
    cost = checked - unchecked
    lines = [f"Index of {len(records):,} BOLD barcodes ({on_disk / 1e6:,.0f} MB on disk).", "",
             "| load with checks | load without | checks cost | `clibd match` of "
             f"{args.queries:,} queries | share of the match run |", "|---|---|---|---|---|",
             f"| {checked:.2f} s | {unchecked:.2f} s | {cost:.2f} s | {match_s:.1f} s | {cost / match_s:.1%} |"]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Index checksums on load: cost", "\n".join(lines), "python benchmarks/verify_cost.py")


if __name__ == "__main__":
    main()
