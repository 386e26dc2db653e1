"""Large references on a laptop: build time, peak memory, index size, queries/s and first-stage recall.

References are made from real BOLD barcodes (`bold_insect_coi_dev.tsv.gz`) mutated along a simulated
tree, seeded: every real species' first barcode founds ``species_per_seed`` synthetic sister species
(each its founder with 2-8 % of sites substituted), and each synthetic species gets specimens 0-1 %
from its own consensus, until the reference holds ``--size`` barcodes.  Taxonomy above species is the
real founder's.  Queries: 1,000 new specimens of reference species and 1,000 of synthetic species left
out of the reference; the same queries are also matched as Leray reads (their last 313 bp), which look up
the fragment word table (:mod:`clibd_cli.anchors`) a whole-barcode run never builds.  `clibd build-index`
and `clibd match` run as commands; peak memory is the larger of
the maximum resident set of the command's largest process (/usr/bin/time) and the peak of its process
tree's summed PSS (sampled every 0.2 s: `clibd match` verifies in forked processes; :func:`tree_pss_kb`),
index size the folder on disk; first-stage recall is the share of present-species queries whose species
is among their verified hits (`--hits`).

    python benchmarks/scale.py --sizes 100000,300000,1000000 [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section

from clibd_cli.sequences import RANKS, read_sequences

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/bold_insect_coi_dev.tsv.gz"
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def mutate(sequence: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    out = sequence.copy()
    sites = np.flatnonzero(rng.random(len(out)) < rate)
    out[sites] = BASES[(np.searchsorted(BASES, out[sites]) + rng.integers(1, 4, len(sites))) % 4]
    return out


def simulate(founders: list, size: int, queries: int, rng: np.random.Generator):
    """(reference rows, present queries, absent queries); a row is (id, lineage, sequence)."""
    per_species = 8
    reference, present, absent = [], [], []
    s = 0
    while len(reference) < size:
        founder = founders[s % len(founders)]
        lineage = [founder.label(r) for r in RANKS[:-1]] + [f"{founder.label('genus')} syn{s}"]
        consensus = mutate(np.frombuffer(founder.sequence.replace("N", "A").encode(), dtype=np.uint8),
                           rng.uniform(0.02, 0.08), rng)
        specimens = [mutate(consensus, rng.uniform(0.0, 0.01), rng).tobytes().decode() for _ in range(per_species)]
        if rng.random() < 0.02:  # one species in 50 is left out of the reference
            absent.extend((f"A{s}-{i}", lineage, seq) for i, seq in enumerate(specimens))
        else:
            reference.extend((f"R{s}-{i}", lineage, seq) for i, seq in enumerate(specimens[:-1]))
            present.append((f"P{s}", lineage, specimens[-1]))
        s += 1
    pick = lambda rows: [rows[i] for i in rng.choice(len(rows), size=min(queries, len(rows)), replace=False)]  # noqa: E731
    return reference[:size], pick(present), pick(absent)


LERAY = 313  # the metabarcoding fragment: the last 313 bp of the barcode region


def write_fasta(path: Path, rows, taxonomy: bool, last: int | None = None) -> None:
    """Rows as FASTA (``last``: only each sequence's last bases, as a fragment read)."""
    with path.open("w") as fh:
        for rid, lineage, seq in rows:
            fh.write(f">{rid}" + ("|" + "|".join(lineage) + "|" if taxonomy else "") +
                     f"\n{seq[-last:] if last else seq}\n")


def measured(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak memory in GB) of a command: the larger of its largest process's peak RSS (/usr/bin/time)
    and the peak, sampled every 0.2 s, of the proportional set size (PSS) summed over its process tree, so
    that `clibd match`'s forked verification processes count with what they do not share with the parent.

    A sample counts as far as the next one confirms it (the smaller of the two): processes are read one after
    another, so memory that changes hands between two reads (a parent freeing pages its forked processes still
    share: their shares grow after its own was read) can be counted up to one and a half times in one sample.
    A state shorter than two samples is missed, as it may be by any sampler; the largest process's own peak
    comes from the kernel.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=err, text=True)
        tree_kb, last = 0, 0
        while process.poll() is None:
            sample = tree_pss_kb(process.pid)
            if sample is not None:
                tree_kb, last = max(tree_kb, min(last, sample)), sample
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        err.seek(0)
        report = err.read()
    if process.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({process.returncode}):\n{report[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
    return seconds, max(peak_kb, tree_kb) / 1024**2


def tree_pss_kb(root: int) -> int | None:
    """PSS (kB) summed over process ``root`` and its descendants (Linux /proc), or None when the tree changed
    while it was read.

    A sum of PSS is exact only for a tree that stands still: a forked process read before it exits counts its
    share of the pages it shares with its parent, and the parent read just after counts them whole
    (2026-11-30, at 1,000,000 references: single samples of 8.8 and 8.2 GB among samples of 5.4 and 6.6 GB,
    as the verification processes exited).  So the tree is listed again after the read, and a sample is dropped
    where a process appeared or one read has begun to exit (it holds no pages then).
    """
    tree = _tree(root)
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            return None
        found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    if _tree(root) != tree or not all(_resident(pid) for pid in tree):
        return None
    return total


def _tree(root: int) -> set[int]:
    """Process ``root`` and its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        grew, tree = len(grown) > len(tree), grown
    return tree


def _resident(pid: int) -> bool:
    """Whether a process still holds pages (one that has begun to exit, or a zombie, holds none)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) > 0
    except (OSError, IndexError, ValueError):
        return False


def projection(peaks: list[tuple[int, float, float]], target: int = 1_000_000) -> list[str]:
    """Peak RSS grows linearly with the references: the slope between the two largest sizes, projected."""
    if len(peaks) < 2:
        return []
    (n0, b0, m0), (n1, b1, m1) = sorted(peaks)[-2:]
    slope_b, slope_m = (b1 - b0) / (n1 - n0), (m1 - m0) / (n1 - n0)
    return ["", f"Peak RSS per added reference ({n0:,} → {n1:,}): build {slope_b * 1024**2:.1f} kB, match "
            f"{slope_m * 1024**2:.1f} kB; projected at {target:,}: build {b1 + slope_b * (target - n1):.1f} GB, "
            f"match {m1 + slope_m * (target - n1):.1f} GB."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default="", help="a line added under the table (e.g. what else ran meanwhile)")
    parser.add_argument("--work", type=Path, help="keep each size's files (reference, queries, index) in this folder")
    args = parser.parse_args()
    records = read_sequences([args.data]).records
    founders = list({r.label("species"): r for r in records if r.label("species") and len(r.sequence) >= 600}.values())
    lines = ["| references | build (s) | build peak memory (GB) | index on disk (GB) | match peak memory (GB) "
             "| queries/s | present: species right | present: species in hits | absent: wrongly named "
             "| Leray reads: match peak memory (GB) | Leray reads/s | Leray reads, present: species right |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    clibd = [sys.executable, "-m", "clibd_cli.app"]
    peaks: list[tuple[int, float, float]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(args.seed)
        reference, present, absent = simulate(founders, size, args.queries, rng)
        kept = args.work / str(size) if args.work is not None else None
        with tempfile.TemporaryDirectory(prefix="clibd-scale-") if kept is None else nullcontext(kept) as tmp:
            work = Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            write_fasta(work / "ref.fasta", reference, taxonomy=True)
            write_fasta(work / "queries.fasta", present + absent, taxonomy=False)
            write_fasta(work / "leray.fasta", present + absent, taxonomy=False, last=LERAY)
            shutil.rmtree(work / "idx", ignore_errors=True)  # a rebuild keeps the previous generation on disk
            build, build_rss = measured([*clibd, "build-index", "-b", str(work / "ref.fasta"), "-o", str(work / "idx"),
                                         "--force", "--threads", str(args.threads)])
            disk = sum(f.stat().st_size for f in (work / "idx").rglob("*") if f.is_file()) / 1024**3
            seconds, match_rss = measured([*clibd, "match", str(work / "queries.fasta"), "-i", str(work / "idx"),
                                           "-o", str(work / "out.csv"), "--hits", str(work / "hits.csv"),
                                           "--top-k", "10", "--force", "--threads", str(args.threads)])
            leray_seconds, leray_rss = measured([*clibd, "match", str(work / "leray.fasta"), "-i", str(work / "idx"),
                                                 "-o", str(work / "leray.csv"), "--force", "--threads",
                                                 str(args.threads)])
            with (work / "out.csv").open() as fh:
                rows = {row["query_id"]: row for row in csv.DictReader(fh)}
            with (work / "leray.csv").open() as fh:
                leray = {row["query_id"]: row for row in csv.DictReader(fh)}
            with (work / "hits.csv").open() as fh:
                in_hits: dict[str, set] = {}
                for hit in csv.DictReader(fh):
                    in_hits.setdefault(hit["query_id"], set()).add(hit["species"])
        right = np.mean([rows[q]["species"] == lineage[-1] for q, lineage, _ in present])
        recall = np.mean([lineage[-1] in in_hits.get(q, set()) for q, lineage, _ in present])
        wrong = np.mean([bool(rows[q]["species"]) for q, _, _ in absent])
        leray_right = np.mean([leray[q]["species"] == lineage[-1] for q, lineage, _ in present])
        n = len(present) + len(absent)
        lines.append(f"| {len(reference):,} | {build:.0f} | {build_rss:.2f} | {disk:.2f} | {match_rss:.2f} "
                     f"| {n / seconds:.0f} | {right:.1%} | {recall:.1%} | {wrong:.1%} | {leray_rss:.2f} "
                     f"| {n / leray_seconds:.0f} | {leray_right:.1%} |")
        print(lines[-1], flush=True)
        peaks.append((len(reference), build_rss, match_rss))
    body = "\n".join([f"Synthetic references from real BOLD founders (seed {args.seed}); {args.queries} present + "
                      f"{args.queries} absent-species queries; {args.threads} threads.", "", *lines,
                      *projection(peaks), *([f"\n{args.note}"] if args.note else [])])
    print(body)
    if not args.no_write:
        write_section("Scale: large references", body, invocation())


if __name__ == "__main__":
    main()
