"""`clibd match` versus VSEARCH queries per second on an idle machine, side by side in one run.

The held-out case of benchmarks/dna_vs_vsearch.py (same seed): its 6,000 unmodified present- and
absent-species queries against its ~83,000 reference barcodes.  Each command runs ``--rounds`` times,
alternating, with 2 threads: `clibd match` at the default 64 candidates and at 32 (the speed the extra
candidates cost), and `vsearch --usearch_global --strand both`.  Wall time of the whole command
(start-up, index load and output included), so ratios are what a user waits.

    python benchmarks/match_speed.py [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section
from dna_vs_vsearch import DEFAULT_DATA, held_out_case, read_data, timed, write_fasta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    reference, present, absent = held_out_case(read_data(args.data), 3000, 3000, 0.05, 0)
    threads = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="clibd-speed-") as tmp:
        work = Path(tmp)
        write_fasta(work / "ref.fasta", reference, with_taxonomy=True)
        write_fasta(work / "queries.fasta", present + absent, with_taxonomy=False)
        subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-b", str(work / "ref.fasta"), "-o",
                        str(work / "idx"), "--threads", threads], check=True, capture_output=True)
        subprocess.run(["vsearch", "--makeudb_usearch", str(work / "ref.fasta"), "--output", str(work / "ref.udb"),
                        "--threads", threads], check=True, capture_output=True)
        commands = {
            "clibd match (64 candidates)": [sys.executable, "-m", "clibd_cli.app", "match", str(work / "queries.fasta"),
                                            "-i", str(work / "idx"), "-o", str(work / "c64.csv"), "--threads", threads,
                                            "--force"],
            "clibd match --candidates 32": [sys.executable, "-m", "clibd_cli.app", "match", str(work / "queries.fasta"),
                                            "-i", str(work / "idx"), "-o", str(work / "c32.csv"), "--threads", threads,
                                            "--force", "--candidates", "32"],
            "VSEARCH": ["vsearch", "--usearch_global", str(work / "queries.fasta"), "--db", str(work / "ref.udb"),
                        "--id", "0.70", "--strand", "both", "--blast6out", str(work / "v.b6"), "--threads", threads],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                seconds[name].append(timed(cmd))
    n = len(present) + len(absent)
    base = min(seconds["VSEARCH"])
    lines = [f"{n:,} queries (held-out case) against {len(reference):,} reference barcodes, {args.threads} threads, "
             f"each command {args.rounds}× alternating; the fastest run counts.", "",
             "| command | seconds | queries/s | × VSEARCH |", "|---|---|---|---|"]
    for name, runs in seconds.items():
        best = min(runs)
        lines.append(f"| {name} | {' / '.join(f'{s:.1f}' for s in runs)} | {n / best:.0f} | {base / best:.2f}× |")
    print("\n".join(lines))
    if not args.no_write:
        write_section("Barcode identification speed vs VSEARCH (idle machine)", "\n".join(lines), invocation())


if __name__ == "__main__":
    main()
