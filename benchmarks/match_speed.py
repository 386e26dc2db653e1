"""`clibd match` versus VSEARCH queries per second on an idle machine, side by side in one run.

The held-out case of benchmarks/dna_vs_vsearch.py (same seed): its 6,000 unmodified present- and
absent-species queries against its ~83,000 reference barcodes.  Each command runs ``--rounds`` times,
alternating, with 2 threads: `clibd match` at the default 64 candidates and at 32 (the speed the extra
candidates cost), and `vsearch --usearch_global --strand both`.  Wall time of the whole command
(start-up, index load and output included), so ratios are what a user waits.  Two sets of
queries are timed: all 6,000 (specimens of one species often share a haplotype, and `clibd match` aligns a
repeated sequence once) and only their distinct sequences (what VSEARCH users feed after
``--derep_fulllength``, and the like-for-like comparison of the two engines).

    python benchmarks/match_speed.py [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
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
    queries = present + absent
    firsts: dict[str, object] = {}
    distinct = [firsts.setdefault(q.sequence, q) for q in queries if q.sequence not in firsts]
    sets = {f"all {len(queries):,}": queries, f"{len(distinct):,} distinct": distinct}
    with tempfile.TemporaryDirectory(prefix="clibd-speed-") as tmp:
        work = Path(tmp)
        write_fasta(work / "ref.fasta", reference, with_taxonomy=True)
        subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-b", str(work / "ref.fasta"), "-o",
                        str(work / "idx"), "--threads", threads], check=True, capture_output=True)
        subprocess.run(["vsearch", "--makeudb_usearch", str(work / "ref.fasta"), "--output", str(work / "ref.udb"),
                        "--threads", threads], check=True, capture_output=True)
        commands = {}
        for set_name, chosen in sets.items():
            fasta = work / f"{len(chosen)}.fasta"
            write_fasta(fasta, chosen, with_taxonomy=False)
            match = ["match", str(fasta), "-i", str(work / "idx"), "-o", str(work / "c.csv"), "--force"]
            clibd = [sys.executable, "-m", "clibd_cli.app", *match, "--threads", threads]
            commands[("clibd match (64 candidates)", set_name)] = clibd
            commands[("clibd match --candidates 32", set_name)] = [*clibd, "--candidates", "32"]
            commands[("VSEARCH", set_name)] = ["vsearch", "--usearch_global", str(fasta), "--db",
                                               str(work / "ref.udb"), "--id", "0.70", "--strand", "both",
                                               "--blast6out", str(work / "v.b6"), "--threads", threads]
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
        for _ in range(args.rounds):
            for key, cmd in commands.items():
                seconds[key].append(timed(cmd))
        distinct_name = f"{len(distinct):,} distinct"  # (the last set: ``match`` is its command)
        stages = json.loads(subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parent / "_stage_times.py"), *match, "--threads", "1"],
            check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    lines = [f"{len(queries):,} queries (held-out case; {len(distinct):,} distinct sequences, as specimens of one "
             f"species often share a haplotype) against {len(reference):,} reference barcodes, {args.threads} "
             f"threads, each command {args.rounds}× alternating; the fastest run counts.  `clibd match` aligns a "
             "repeated sequence once; VSEARCH aligns every query, so the distinct set is the like-for-like speed.",
             "", "| command | queries | seconds | queries/s | × VSEARCH |", "|---|---|---|---|---|"]
    for (name, set_name), runs in seconds.items():
        best, base = min(runs), min(seconds[("VSEARCH", set_name)])
        n = len(sets[set_name])
        lines.append(f"| {name} | {set_name} | {' / '.join(f'{s:.1f}' for s in runs)} | {n / best:.0f} | "
                     f"{base / best:.2f}× |")
    lines += ["", _stage_lines(stages, len(distinct), min(seconds[("VSEARCH", distinct_name)]), args.threads)]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Barcode identification speed vs VSEARCH (idle machine)", "\n".join(lines), invocation())


def _stage_lines(stages: dict, queries: int, vsearch: float, threads: int) -> str:
    """Where one process's time goes on the distinct queries, against the CPU time 5× VSEARCH's speed allows."""
    spent, calls = stages["seconds"], stages["calls"]
    graph, diagonal, opal = (spent.get(s, 0.0) for s in ("graph", "diagonal", "opal"))
    budget, rest = threads * vsearch / 5, stages["wall"] - graph - diagonal - opal
    return (f"Where the time goes: `clibd match --threads 1` of the {queries:,} distinct queries in one process, "
            f"each stage timed where it is called (benchmarks/_stage_times.py): {stages['wall']:.1f} s "
            f"({stages['cpu']:.1f} s CPU); graph searches (both strands, rescoring, rivals) {graph:.1f} s, the "
            f"diagonal stage {diagonal:.1f} s, Opal alignments {opal:.1f} s ({calls.get('opal', 0):,} alignments), "
            f"the rest (start-up, encoding, ranking, voting, writing) {rest:.1f} s.  5× "
            f"VSEARCH's speed on {threads} cores allows at most {threads} × {vsearch:.1f} / 5 = {budget:.1f} s of CPU "
            f"for these queries; the two stages issue 9 prescribes (graph search and alignment) take "
            f"{graph + opal:.1f} s.")


if __name__ == "__main__":
    main()
