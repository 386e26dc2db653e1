"""kill -9 experiments: nothing lost, nothing doubled, no index left unusable.

Real BOLD barcodes (`bold_insect_coi_dev.tsv.gz`): a reference slice, two batches to append, a query
slice.  Each round, with a seeded random moment for every kill:

* ``build-index --force`` killed → the index loads and holds the old or the new records, nothing else;
* ``build-index --append`` killed → the old records or old + batch;
* two ``--append`` and a ``calibrate`` started together (no kill) → every record of both batches lands;
* ``match -o out.csv --hits hits.csv`` killed twice, then ``--resume`` → every query has one row and its
  hits once, identical to an uninterrupted run;
* ``classify`` of the demo photos with ``--hits`` killed, then ``--resume`` → the same.

    python benchmarks/faults.py [--rounds 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, write_section

from clibd_cli.index import ReferenceIndex
from clibd_cli.sequences import RANKS, read_sequences

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/bold_insect_coi_dev.tsv.gz"


def clibd(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clibd_cli.app", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(err)


def killed(process: subprocess.Popen, delay: float) -> bool:
    """Kill -9 after ``delay`` s; False if it had already finished."""
    time.sleep(delay)
    if process.poll() is not None:
        process.communicate()
        return False
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return True


def timed(*args) -> float:
    """Seconds an uninterrupted run of the command takes (kill moments are drawn within it)."""
    start = time.perf_counter()
    finish(clibd(*args))
    return time.perf_counter() - start


def write_fasta(path: Path, records) -> Path:
    with path.open("w") as fh:
        for r in records:
            fh.write(f">{r.id}|" + "|".join(r.label(rank) for rank in RANKS) + f"|{r.bin}\n{r.sequence}\n")
    return path


def size(index: Path) -> int | None:
    """Records in the index, or None when it cannot be opened (unusable)."""
    try:
        return ReferenceIndex.load(index).size
    except Exception:  # any failure to open counts as unusable
        return None


def rows_and_hits(out: Path, hits: Path) -> tuple[dict[str, str], dict[str, list[tuple]]]:
    with out.open() as fh:
        rows = {r["query_id"]: r["status"] for r in csv.DictReader(fh)}
    per: dict[str, list[tuple]] = {}
    with hits.open() as fh:
        for h in csv.DictReader(fh):
            per.setdefault(h["query_id"], []).append((h["hit_rank"], h["hit_id"]))
    return rows, per


def compare(got: tuple, want: tuple) -> tuple[int, int]:
    """(rows lost or doubled, queries whose hits differ from the uninterrupted run)."""
    rows, hits = got
    want_rows, want_hits = want
    lost = len(set(want_rows) ^ set(rows))
    return lost, sum(hits.get(q) != want_hits.get(q) for q in want_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    records = read_sequences([args.data]).records
    reference, batch_a, batch_b, queries = records[:12000], records[12000:14000], records[14000:16000], \
        records[20000:22000]
    table: dict[str, list[int]] = {}

    def add(name: str, kills: int, lost: int, hits_lost: int, unusable: int) -> None:
        row = table.setdefault(name, [0, 0, 0, 0, 0])
        for i, value in enumerate((1, kills, lost, hits_lost, unusable)):
            row[i] += value

    with tempfile.TemporaryDirectory(prefix="clibd-faults-") as tmp:
        work = Path(tmp)
        ref, a, b, q = (write_fasta(work / f"{n}.fasta", r) for n, r in
                        (("ref", reference), ("a", batch_a), ("b", batch_b), ("q", queries)))
        base = work / "base"
        finish(clibd("build-index", "-b", ref, "-o", base))
        subprocess.run(["cp", "-r", str(base), str(work / "probe")], check=True)
        t_force = timed("build-index", "-b", a, "-o", work / "probe", "--force")
        t_append = timed("build-index", "-b", b, "-o", work / "probe", "--append")
        full = work / "full.csv", work / "full_hits.csv"
        t_match = timed("match", q, "-i", base, "-o", full[0], "--hits", full[1])
        want = rows_and_hits(*full)
        photos = ROOT / "examples/photos"
        model, photo_index = ROOT / "examples/demo-model", work / "photo-index"
        finish(clibd("build-index", "-b", ROOT / "examples/demo-barcodes.tsv", "--model", model, "-o", photo_index,
                     "--no-calibrate"))
        photo_full = work / "pfull.csv", work / "pfull_hits.csv"
        t_classify = timed("classify", photos, "--model", model, "-i", photo_index, "-o", photo_full[0], "--hits",
                           photo_full[1], "--batch-size", "2")
        photo_want = rows_and_hits(*photo_full)
        for round_ in range(args.rounds):
            index = work / f"idx{round_}"
            subprocess.run(["cp", "-r", str(base), str(index)], check=True)
            n = size(index)
            k = killed(clibd("build-index", "-b", a, "-o", index, "--force"), rng.uniform(0.1, 0.95) * t_force)
            after = size(index)
            add("build-index --force", k, int(after not in (n, len(batch_a))), 0, int(after is None))
            n = size(index)
            k = killed(clibd("build-index", "-b", b, "-o", index, "--append"), rng.uniform(0.1, 0.95) * t_append)
            after = size(index)
            add("build-index --append", k, int(after not in (n, (n or 0) + len(batch_b))), 0, int(after is None))
            index = work / f"race{round_}"
            subprocess.run(["cp", "-r", str(base), str(index)], check=True)
            racing = [clibd("build-index", "-b", a, "-o", index, "--append", "--no-calibrate"),
                      clibd("build-index", "-b", b, "-o", index, "--append", "--no-calibrate"),
                      clibd("calibrate", "-i", index, "--sample", "100")]
            for process in racing:
                finish(process)
            after = size(index)
            add("2 × --append + calibrate at once", 0,
                abs((after or 0) - (len(reference) + len(batch_a) + len(batch_b))), 0, int(after is None))
            out, hits = work / f"m{round_}.csv", work / f"m{round_}_hits.csv"
            kills = 0
            for attempt in range(2):
                resume = ["--resume"] if attempt else []
                kills += killed(clibd("match", q, "-i", base, "-o", out, "--hits", hits, *resume),
                                rng.uniform(0.2, 0.45) * t_match)
            finish(clibd("match", q, "-i", base, "-o", out, "--hits", hits, "--resume"))
            lost, hits_lost = compare(rows_and_hits(out, hits), want)
            add("match --hits, killed twice, --resume", kills, lost, hits_lost, 0)
            out, hits = work / f"c{round_}.csv", work / f"c{round_}_hits.csv"
            kills = killed(clibd("classify", photos, "--model", model, "-i", photo_index, "-o", out, "--hits",
                                 hits, "--batch-size", "2"), rng.uniform(0.3, 0.95) * t_classify)
            finish(clibd("classify", photos, "--model", model, "-i", photo_index, "-o", out, "--hits", hits,
                         "--resume"))
            lost, hits_lost = compare(rows_and_hits(out, hits), photo_want)
            add("classify --hits, killed, --resume", kills, lost, hits_lost, 0)
            print(f"round {round_ + 1} done", flush=True)
    lines = [f"Uninterrupted: build-index --force {t_force:.1f} s, --append {t_append:.1f} s, match "
             f"{t_match:.1f} s, classify {t_classify:.1f} s; each kill falls at a random moment within such a run.",
             "",
             f"{len(reference):,} real BOLD reference barcodes, batches of {len(batch_a):,} to append, "
             f"{len(queries):,} queries; the demo photos for classify. Kill moments drawn at random (seed "
             f"{args.seed}); 'lost' counts records missing or doubled against the expected content.", "",
             "| experiment | rounds | kills | records lost | queries with hits lost or doubled | indexes unusable |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for name, r in table.items()]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Faults: kill -9 and concurrent writers", "\n".join(lines), invocation())


if __name__ == "__main__":
    main()
