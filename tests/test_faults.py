"""Fault suite, index integrity (issue 10, items 4–5): one writer at a time, one atomic switch.

4. Writers (`build-index`, `--append`, `calibrate`) take the index's lock: a second writer waits, says so,
   and both writes land (two concurrent appends used to leave one of them lost).
5. An index changes by writing a new generation folder and replacing `index.json` once: a writer killed at
   any moment leaves the previous index usable, and the next write removes what killed writers left
   behind, never a file clibd did not write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clibd, invoke, make_reference, one_error_line, write_fasta

from clibd_cli.index import MANIFEST, ReferenceIndex
from clibd_cli.indexdir import LOCK, generations, writing


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """A base reference and two more batches of records with distinct ids."""
    folder = tmp_path_factory.mktemp("faults")
    specimens = make_reference(seed=31, orders=2, families=2, genera=3, species=3, specimens=4, id_prefix="FLT")
    thirds = len(specimens) // 3
    parts = specimens[:thirds], specimens[thirds : 2 * thirds], specimens[2 * thirds :]
    return [write_fasta(folder / f"part{i}.fasta", part) for i, part in enumerate(parts)], [len(p) for p in parts]


def build(index: Path, fasta: Path, *extra) -> None:
    done = clibd("build-index", "-b", fasta, "-o", index, "--no-calibrate", *extra)
    _out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err


def test_second_writer_waits_for_the_lock_and_both_appends_land(tmp_path, batches):
    (base, first, second), sizes = batches
    index = tmp_path / "idx"
    build(index, base)
    with writing(index):  # another writer holds the index
        waiting = clibd("build-index", "-b", first, "-o", index, "--append", "--no-calibrate")
        time.sleep(8)  # without the lock, this tiny append finishes in ~3 s
        assert waiting.poll() is None, "the second writer did not wait for the lock"
        assert ReferenceIndex.load(index).size == sizes[0]
    _out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert "another clibd is writing this index; waiting" in " ".join(err.split())
    # an append and a calibration started together: both land (calibrate used to write a stale manifest)
    racing = [clibd("build-index", "-b", second, "-o", index, "--append", "--no-calibrate"),
              clibd("calibrate", "-i", index, "--sample", "20")]
    for process in racing:
        _out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    loaded = ReferenceIndex.load(index)
    assert loaded.size == sum(sizes)
    assert len({r.id for r in loaded.records()}) == sum(sizes)


def test_calibration_refuses_to_overwrite_an_index_changed_under_it(tmp_path, batches):
    (base, first, _), sizes = batches
    index = tmp_path / "idx"
    build(index, base)
    stale = ReferenceIndex.load(index)
    build(index, first, "--append")
    stale.set_thresholds({"order": 0.8, "family": 0.85, "genus": 0.9, "species": 0.95}, {"method": "test"})
    with pytest.raises(Exception, match="the index changed while this command ran"):
        stale.save_manifest()
    assert ReferenceIndex.load(index).size == sizes[0] + sizes[1]


def test_a_failed_switch_keeps_the_previous_index(tmp_path, batches, monkeypatch):
    (base, first, _), sizes = batches
    index = tmp_path / "idx"
    build(index, base)
    before = (index / MANIFEST).read_text()
    loaded = ReferenceIndex.load(index)
    import clibd_cli.indexdir as indexdir

    real_replace = os.replace

    def killed_at_switch(src, dst):
        if Path(dst).name == MANIFEST:
            raise KeyboardInterrupt  # the moment between writing the generation and switching to it
        return real_replace(src, dst)

    monkeypatch.setattr(indexdir.os, "replace", killed_at_switch)
    from clibd_cli.sequences import read_sequences

    with pytest.raises(KeyboardInterrupt):
        loaded.appended(read_sequences([first]).records, loaded.encoder()).save(index, force=True)
    monkeypatch.setattr(indexdir.os, "replace", real_replace)
    assert (index / MANIFEST).read_text() == before
    assert ReferenceIndex.load(index).size == sizes[0]
    # the next write removes the orphaned generation and the killed writer's temporary files
    (index / "notes.txt").write_text("mine")  # a file clibd did not write
    (index / ".gen-000042.tmp-12345").mkdir()
    build(index, first, "--append")
    assert ReferenceIndex.load(index).size == sizes[0] + sizes[1]
    assert (index / "notes.txt").read_text() == "mine"
    names = sorted(p.name for p in index.iterdir())
    assert names == sorted([LOCK, MANIFEST, "notes.txt", *generations(index)]) and len(generations(index)) == 2


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_kill_during_force_rebuild_leaves_a_usable_index(tmp_path, batches, delay):
    """kill -9 at several moments of `build-index --force`: the index answers, old or new, never half."""
    (base, first, second), sizes = batches
    index = tmp_path / "idx"
    build(index, base)
    combined = tmp_path / "all.fasta"
    combined.write_text(first.read_text() + second.read_text())
    process = clibd("build-index", "-b", combined, "-o", index, "--force", "--calibrate")
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    size = ReferenceIndex.load(index).size
    assert size in (sizes[0], sizes[1] + sizes[2])
    found = clibd("match", first, "-i", index, "-o", tmp_path / "m.csv")
    assert found.communicate(timeout=300) and found.returncode == 0
    assert json.loads((index / MANIFEST).read_text())["format_version"] == 4


# ------------------------------------------------------------------- bad input: one line, exit 2

@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    """~230 KB of FASTA: damage past the first 64 KB is only met while reading, not when the file is opened."""
    folder = tmp_path_factory.mktemp("bad-input")
    specimens = make_reference(seed=32, orders=2, families=2, genera=3, species=4, specimens=8, id_prefix="BAD")
    return write_fasta(folder / "queries.fasta", specimens), specimens


def test_damaged_gzip_is_one_line(tmp_path, queries):
    import gzip

    fasta, _ = queries
    data = gzip.compress(fasta.read_bytes())
    truncated = tmp_path / "truncated.fasta.gz"
    truncated.write_bytes(data[: int(len(data) * 0.9)])
    one_error_line(invoke("match", truncated, "-i", fasta, "-o", tmp_path / "a.csv"), "truncated.fasta.gz",
                   "damaged or incomplete")
    corrupt = tmp_path / "crc.fasta.gz"
    corrupt.write_bytes(data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:])  # the CRC-32 of the trailer
    one_error_line(invoke("match", corrupt, "-i", fasta, "-o", tmp_path / "b.csv"), "crc.fasta.gz",
                   "damaged or incomplete")


def test_bytes_that_are_not_utf8_are_refused_wherever_they_are(tmp_path, queries):
    fasta, _ = queries
    text = fasta.read_bytes()
    late = tmp_path / "latin1.fasta"
    cut = text.index(b"\n>", 150_000) + 2
    late.write_bytes(text[:cut] + "Ä".encode("latin-1") + text[cut:])
    one_error_line(invoke("match", late, "-i", fasta, "-o", tmp_path / "o.csv"), "latin1.fasta", "not UTF-8")


def test_a_fasta_with_a_byte_order_mark_is_read_as_fasta(tmp_path, queries):
    fasta, specimens = queries
    bom = tmp_path / "bom.fasta"
    bom.write_bytes(b"\xef\xbb\xbf" + fasta.read_bytes())
    result = invoke("match", bom, "-i", fasta, "-o", tmp_path / "o.csv", "--format", "csv")
    assert result.exit_code == 0, result.output
    import csv

    rows = list(csv.DictReader((tmp_path / "o.csv").open()))
    assert [row["query_id"] for row in rows] == [s.id for s in specimens]


def test_an_unclosed_quote_in_a_table_is_reported_with_its_line(tmp_path, queries):
    _, specimens = queries
    table = tmp_path / "ref.tsv"
    lines = ["processid\torder_name\tfamily_name\tgenus_name\tspecies_name\tnucleotides"]
    for i, s in enumerate(specimens[:40]):
        species = '"' + s.species if i == 3 else s.species  # a stray quote opens a field that never closes
        lines.append(f"{s.id}\t{s.order}\t{s.family}\t{s.genus}\t{species}\t{s.sequence}")
    table.write_text("\n".join(lines) + "\n")
    one_error_line(invoke("build-index", "-b", table, "-o", tmp_path / "idx"), "ref.tsv", "line 5",
                   "unclosed")
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("k", ["0", "-3", "20"])
def test_kmer_out_of_range_is_a_usage_error(tmp_path, queries, k):
    fasta, _ = queries
    result = invoke("match", fasta, "-i", fasta, "--kmer", k, "-o", tmp_path / "o.csv")
    assert result.exit_code == 2 and "--kmer" in result.output and not (tmp_path / "o.csv").exists()


# ------------------------------------------------------------------------- outputs and resume

@pytest.fixture(scope="module")
def indexes(tmp_path_factory, batches):
    """Two indexes built from different references."""
    (base, first, _), _ = batches
    folder = tmp_path_factory.mktemp("indexes")
    for name, fasta in (("a", base), ("b", first)):
        build(folder / name, fasta)
    return folder / "a", folder / "b"


def test_outputs_that_would_destroy_inputs_are_refused(tmp_path, queries, indexes):
    fasta, _ = queries
    index, _ = indexes
    copy = tmp_path / "q.fasta"
    copy.write_bytes(fasta.read_bytes())
    one_error_line(invoke("match", copy, "-i", index, "-o", copy, "--force"), "is an input of this run")
    assert copy.read_bytes() == fasta.read_bytes()
    manifest = (index / MANIFEST).read_text()
    one_error_line(invoke("match", copy, "-i", index, "-o", index / MANIFEST, "--force"), "is inside the index")
    assert (index / MANIFEST).read_text() == manifest
    one_error_line(invoke("match", copy, "-i", index, "-o", tmp_path / "o.csv", "--hits", tmp_path / "o.csv"),
                   "another output")
    assert not (tmp_path / "o.csv").exists()


def test_a_run_that_fails_before_its_first_row_leaves_no_output(tmp_path, queries, indexes, monkeypatch):
    import clibd_cli.match as match_module
    from clibd_cli.errors import ClibdError

    fasta, _ = queries
    index, _ = indexes

    def broken(*args, **kwargs):
        raise ClibdError("the DNA encoder failed")  # e.g. a model that loads but cannot run
        yield

    monkeypatch.setattr(match_module, "identify", broken)
    one_error_line(invoke("match", fasta, "-i", index, "-o", tmp_path / "t.csv", "--hits", tmp_path / "h.csv"),
                   "the DNA encoder failed")
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "h.csv").exists()


def test_resume_refuses_to_mix_runs(tmp_path, queries, indexes):
    fasta, _ = queries
    a, b = indexes
    out = tmp_path / "o.csv"
    assert invoke("match", fasta, "-i", a, "-o", out).exit_code == 0
    before = out.read_bytes()
    one_error_line(invoke("match", fasta, "-i", b, "-o", out, "--resume"), "written by another run",
                   "index_fingerprint")
    one_error_line(invoke("match", fasta, "-i", a, "-o", out, "--resume", "--threshold", "species=0.99"),
                   "thresholds")
    assert out.read_bytes() == before
    assert invoke("match", fasta, "-i", a, "-o", out, "--resume").exit_code == 0  # the same run continues


def _lines(path: Path) -> int:
    """Lines in a file (0 when it does not exist yet)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _one_change(sequence: str, i: int) -> str:
    """``sequence`` with the base at position ``i // 3`` replaced (three different ways by ``i % 3``)."""
    p = (i // 3) % len(sequence)
    base = "ACGT"[("ACGT".index(sequence[p]) + 1 + i % 3) % 4] if sequence[p] in "ACGT" else "A"
    return sequence[:p] + base + sequence[p + 1 :]


def test_hits_survive_kill_and_resume(tmp_path, indexes):
    """kill -9 during `match -o --hits`, then --resume: every query has its rows and hits, none twice."""
    import csv

    index, _ = indexes
    from dataclasses import replace

    related = make_reference(seed=31, orders=2, families=2, genera=3, species=3, specimens=4, id_prefix="FLT")
    indexed = related[: len(related) // 3]  # the records of index "a"
    # every query a distinct sequence (one base changed): repeats are not aligned again, and would finish too soon
    specimens = [replace(s, id=f"KIL{i:05d}", sequence=_one_change(s.sequence, i))
                 for i, s in ((i, indexed[i % len(indexed)]) for i in range(3000))]
    fasta = write_fasta(tmp_path / "many.fasta", specimens)
    out, hits = tmp_path / "o.csv", tmp_path / "h.csv"
    killed = 0
    for _ in range(2):  # killed as soon as the run has written rows of its own (a fixed delay raced the run)
        before = _lines(out)
        process = clibd("match", fasta, "-i", index, "-o", out, "--hits", hits, "--top-k", "3", "--batch-size",
                        "50", *(["--resume"] if out.exists() else []))
        deadline = time.monotonic() + 300
        while process.poll() is None and _lines(out) <= max(before, 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.communicate()
    final = clibd("match", fasta, "-i", index, "-o", out, "--hits", hits, "--top-k", "3", "--resume")
    assert final.communicate(timeout=600) and final.returncode == 0
    assert killed, "the runs finished before they could be killed; make the workload larger"
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["query_id"] for r in rows) == sorted(s.id for s in specimens)
    per_query: dict[str, list[str]] = {}
    for hit in csv.DictReader(hits.open()):
        per_query.setdefault(hit["query_id"], []).append(hit["hit_rank"])
    assert {q: ranks for q, ranks in per_query.items() if ranks != ["1", "2", "3"]} == {}
    assert set(per_query) == {s.id for s in specimens}


# ------------------------------------------------------------------------- index files verified

def test_damaged_or_foreign_index_files_are_refused(tmp_path, queries, indexes):
    """A bit flip in the graph (hnswlib used to crash: rc 139), a graph copied from another index (used to
    answer no_match for everything) and an edited count (used to change calls) are one line each."""
    import shutil

    from clibd_cli.checksums import sealed

    fasta, _ = queries
    a, b = indexes

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(a, target)
        return target

    def graph(index: Path) -> Path:
        return index / json.loads((index / MANIFEST).read_text())["parts"]["dna"]["file"]

    flipped = copy("flipped")
    data = bytearray(graph(flipped).read_bytes())
    data[20] ^= 0xFF  # in the header: element counts and sizes
    graph(flipped).write_bytes(bytes(data))
    one_error_line(invoke("match", fasta, "-i", flipped, "-o", tmp_path / "1.csv"), "does not match the checksum")

    foreign = copy("foreign")
    graph(foreign).write_bytes(graph(b).read_bytes())
    one_error_line(invoke("match", fasta, "-i", foreign, "-o", tmp_path / "2.csv"), "does not match the checksum")

    edited = copy("edited")
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest["parts"]["dna"]["counts"]["vectors"] -= 1
    (edited / MANIFEST).write_text(json.dumps(manifest, indent=2))
    one_error_line(invoke("match", fasta, "-i", edited, "-o", tmp_path / "3.csv"), "modified by hand")
    (edited / MANIFEST).write_text(json.dumps(sealed(manifest), indent=2))
    one_error_line(invoke("match", fasta, "-i", edited, "-o", tmp_path / "4.csv"), "vectors but the manifest says")
    assert not any((tmp_path / f"{i}.csv").exists() for i in range(1, 5))
    # the way out that the lines name: --force rebuilds over a damaged or edited index
    for damaged in (flipped, edited):
        assert invoke("build-index", "-b", fasta, "-o", damaged, "--force", "--no-calibrate").exit_code == 0
        assert ReferenceIndex.load(damaged).size == len(queries[1])


def test_a_damaged_word_table_is_one_line(tmp_path, queries, indexes):
    """The saved 12-mer table that proposes a read's candidates is checked before it is mapped: a flipped bit is
    one line, and a table whose arrays do not fit together (manifest resealed to match it) is one line, not a
    crash or a silent wrong candidate."""
    import shutil
    from dataclasses import replace

    from clibd_cli.checksums import sealed, sha256_file

    fasta, specimens = queries
    reads = write_fasta(tmp_path / "reads.fasta", [replace(s, sequence=s.sequence[-200:]) for s in specimens[:3]])

    def copy(name: str) -> tuple[Path, Path, dict]:
        target = tmp_path / name
        shutil.copytree(indexes[0], target)
        manifest = json.loads((target / MANIFEST).read_text())
        return target, target / manifest["parts"]["dna"]["words"], manifest

    flipped, words, _ = copy("flipped")
    data = bytearray(words.read_bytes())
    data[-3] ^= 0xFF
    words.write_bytes(bytes(data))
    one_error_line(invoke("match", reads, "-i", flipped, "-o", tmp_path / "1.csv"), "does not match the checksum")
    assert invoke("match", fasta, "-i", flipped, "-o", tmp_path / "whole.csv").exit_code == 0  # whole barcodes
    # need no word table: the index answers them

    cut, words, manifest = copy("cut")
    words.write_bytes(words.read_bytes()[:-400])
    manifest["parts"]["dna"]["words_sha256"] = sha256_file(words)
    (cut / MANIFEST).write_text(json.dumps(sealed(manifest), indent=2))
    one_error_line(invoke("match", reads, "-i", cut, "-o", tmp_path / "2.csv"), "ends inside its owners array",
                   "Rebuild the index")

    missing, words, _ = copy("missing")
    words.unlink()
    one_error_line(invoke("match", reads, "-i", missing, "-o", tmp_path / "3.csv"), "dna.words is missing",
                   "Rebuild the index")


# ------------------------------------------------------------------------------- pipes and FIFOs

def test_queries_and_references_from_pipes_are_read_once(tmp_path, queries):
    """`-` (standard input), a FIFO and a process substitution: each read once, the same rows as the file
    (a FIFO used to hang, `<(cat q.fasta)` was "empty", `build-index -b <(…)` a traceback)."""
    import csv
    import shlex
    import shutil
    import threading

    fasta, specimens = queries
    expected = [s.id for s in specimens]

    def ids(path: Path) -> list[str]:
        return [row["query_id"] for row in csv.DictReader(path.open())]

    piped = subprocess.run([sys.executable, "-m", "clibd_cli.app", "match", "-", "-i", fasta, "-o",
                            tmp_path / "stdin.csv"], input=fasta.read_text(), capture_output=True, text=True,
                           timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert ids(tmp_path / "stdin.csv") == expected

    fifo = tmp_path / "queries.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(fasta.read_bytes()))
    writer.start()
    process = clibd("match", fifo, "-i", fasta, "-o", tmp_path / "fifo.csv")
    _out, err = process.communicate(timeout=300)
    writer.join(timeout=60)
    assert process.returncode == 0, err
    assert ids(tmp_path / "fifo.csv") == expected

    if shutil.which("bash"):
        clibd_cmd = shlex.join([sys.executable, "-m", "clibd_cli.app"])
        script = (f"{clibd_cmd} build-index -o {tmp_path / 'idx'} --no-calibrate -b <(cat {fasta}) && "
                  f"{clibd_cmd} match <(cat {fasta}) -i {tmp_path / 'idx'} -o {tmp_path / 'sub.csv'}")
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert ids(tmp_path / "sub.csv") == expected
        assert ReferenceIndex.load(tmp_path / "idx").size == len(specimens)


def test_unreadable_or_malformed_index_json_is_one_line(tmp_path, queries, indexes, monkeypatch):
    """An index.json that cannot be read (no permission) or is not a manifest: one line, never a traceback."""
    import shutil

    fasta, _ = queries
    index = tmp_path / "idx"
    shutil.copytree(indexes[0], index)
    real_read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == MANIFEST:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    one_error_line(invoke("match", fasta, "-i", index, "-o", tmp_path / "1.csv"), MANIFEST)
    monkeypatch.setattr(Path, "read_text", real_read_text)
    for broken in ("[1, 2, 3]", '{"format_version": 4}', "null"):
        (index / MANIFEST).write_text(broken)
        one_error_line(invoke("match", fasta, "-i", index, "-o", tmp_path / "2.csv"), str(index))
    assert not (tmp_path / "1.csv").exists() and not (tmp_path / "2.csv").exists()


def test_an_output_may_go_into_a_folder_of_inputs_but_not_into_an_index(tmp_path):
    from clibd_cli.errors import InputError
    from clibd_cli.report import check_output

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    check_output(photos / "results.csv", resume=False, force=False, inputs=[photos])  # a new file beside them
    with pytest.raises(InputError, match="is an input of this run"):
        check_output(photos / "a.jpg", resume=False, force=True, inputs=[photos / "a.jpg"])
    with pytest.raises(InputError, match="is inside the index"):
        check_output(photos / "results.csv", resume=False, force=False, folders=[photos])
