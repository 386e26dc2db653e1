"""Would identity thresholds fitted on short reads stop the wrong genus calls of absent-species 200 bp reads?

Issue 9 asks that absent-species reads cut to 200 bp get a wrong genus ≤ 5 % of the time with the right genus
≥ 40 %; on the `split` case of `dna_vs_vsearch.py` clibd gives 6.5 % wrong (VSEARCH at 95 %: 5.4 %).  The
index's thresholds are fitted on full barcodes, and identity over 200 columns is noisier than over 658.  This
benchmark fits the same open-set thresholds (leave-taxon-out, 95 % per set, one query per taxon:
:func:`clibd_cli.calibrate.calibrate_open_set` with ``window``, as `build-index` fits its short-read set) on a
random ``--window``-bp window of each calibration query instead of the whole barcode, then scores the case's
absent- and present-species reads cut to their last ``--window`` bp at a range of genus thresholds, including
the full-length and the window-fitted ones (calls made with the whole-barcode thresholds, the index's
short-read set switched off: what motivated that set).  ``--window 313`` asks the same of Leray reads, which
`clibd match` calls with the whole-barcode thresholds where their top hit overlaps ≥ 300 bp: would a set fitted
at their own length call their genus more often, or less?  Each window length has its own section.

    python benchmarks/fragment_thresholds.py [--window 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section
from dna_vs_vsearch import DEFAULT_DATA, split_case, write_fasta

from clibd_cli.calibrate import SHORT_READ_OVERLAP, SHORT_READ_WINDOWS, calibrate_open_set
from clibd_cli.index import ReferenceIndex
from clibd_cli.schema import RANKS
from clibd_cli.sequences import SequenceRecord, read_sequences


def section(window: int) -> str:
    """The RESULTS.md section of one window length (200 bp kept its name from before there were others)."""
    return f"Thresholds fitted on short reads ({window} bp, split case)"


def window_thresholds(index: ReferenceIndex, window: int, seed: int = 0) -> dict[str, float]:
    """Open-set thresholds per rank at 95 %, fitted on ``window``-bp stretches: what `build-index` fits for
    short reads (:func:`clibd_cli.calibrate.calibrate_barcode_part`, before its floors)."""
    return calibrate_open_set(index, seed=seed, window=window).thresholds


def genus_calls(work: Path, records: list[SequenceRecord], window: int) -> tuple[np.ndarray, np.ndarray]:
    """(genus identity %, right genus?) of each read's genus call by `clibd match`'s library path, with the
    whole-barcode thresholds at every overlap (the index's short-read set switched off), NaN: no genus call."""
    from clibd_cli.match import MatchRun

    reads = [SequenceRecord(r.id, r.sequence[-window:], dict(r.taxonomy), r.bin) for r in records]
    write_fasta(work / "reads.fasta", reads, False)
    run = MatchRun.open(work / "reads.fasta", work / "idx")
    run.short_reads = ()
    rows = [result.row for result in run.results()]
    truth = {r.id: r.label("genus") for r in records}
    identity = np.array([float(r["genus_identity"]) if r["genus"] and np.isfinite(r["genus_identity"])
                         else np.nan for r in rows])
    right = np.array([r["genus"] == truth[r["query_id"]] for r in rows])
    return identity, right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: not found (../shared/data); nothing measured.")
    records = read_sequences([args.data]).records
    with tempfile.TemporaryDirectory(prefix="clibd-fragments-") as tmp:
        work = Path(tmp)
        reference, present, absent = split_case(args.data, work, records, args.queries, args.queries, 0)
        write_fasta(work / "ref.fasta", reference, True)
        subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-b", str(work / "ref.fasta"), "-o",
                        str(work / "idx")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        index = ReferenceIndex.load(work / "idx", "dna")
        full = {rank: float(index.thresholds[rank]) for rank in RANKS}
        fitted = window_thresholds(index, args.window)
        calls = {kind: genus_calls(work, group, args.window) for kind, group in
                 (("absent", absent), ("present", present))}
    cuts = sorted({round(100 * full["genus"], 2), round(100 * fitted["genus"], 2), 95.0, 96.0, 97.0})
    lines = [f"Thresholds (identity %) fitted on whole barcodes (the index's) and on random {args.window}-bp windows "
             "of the same calibration queries:", "",
             "| fitted on | " + " | ".join(RANKS) + " |", "|---|" + "---|" * len(RANKS),
             "| whole barcodes | " + " | ".join(f"{100 * full[r]:.2f}" for r in RANKS) + " |",
             f"| {args.window} bp windows | " + " | ".join(f"{100 * fitted[r]:.2f}" for r in RANKS) + " |", "",
             f"Genus calls of the split case's reads cut to their last {args.window} bp ({len(absent):,} "
             f"absent-species, {len(present):,} present-species), called only where the genus identity reaches "
             "the cut:", "",
             "| genus cut (%) | absent: right / wrong | present: right / wrong |", "|---|---|---|"]
    for cut in cuts:
        cells = []
        for kind in ("absent", "present"):
            identity, right = calls[kind]
            called = np.nan_to_num(identity, nan=-1.0) >= cut
            cells.append(f"{np.mean(called & right):.1%} / {np.mean(called & ~right):.1%}")
        label = (" (whole-barcode fit)" if cut == round(100 * full["genus"], 2) else
                 f" ({args.window} bp fit)" if cut == round(100 * fitted["genus"], 2) else "")
        lines.append(f"| {cut:.2f}{label} | {cells[0]} | {cells[1]} |")
    lines += ["", "Calls here use the whole-barcode thresholds at every overlap. `build-index` also fits sets on "
              f"{', '.join(map(str, SHORT_READ_WINDOWS))} bp windows and `clibd match` applies them, above species, "
              f"where the top hit overlaps < {SHORT_READ_OVERLAP} bp (each read the set of the window nearest its "
              "overlap): see the DNA identification section for what that gives."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(section(args.window), text, invocation())


if __name__ == "__main__":
    main()
