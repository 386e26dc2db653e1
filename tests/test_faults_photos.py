"""Fault suite, photos and the command line (issue 10, items 15–17): one line or one error row, nothing lost.

16. A symbolic link whose target is missing is a row with ``status=error``, not a photo silently skipped.
17. An aspect-ratio bomb (a 3.9 KB PNG of 1 × 2,000,000 pixels passes the pixel-count check, then the
    resize needs hundreds of GB) is an error row, and the run goes on.
15. `train`/`export` without their extra say which extra to install; `| head` stops quietly (status 141)
    with the files complete; SIGTERM stops like Ctrl-C (rows kept, JSON valid, `--resume` completes);
    a read-only output folder and a full disk are one line, exit 2, the rows written so far kept.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import clibd, invoke, make_reference, mutate, one_error_line, read_rows, write_fasta
from PIL import Image

from clibd_cli import report
from clibd_cli.preprocess import ImageError, ImagePreprocessing, preprocess_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_MODEL = EXAMPLES / "demo-model"
ROOT = Path(__file__).resolve().parents[1]





# ------------------------------------------------------------------------- photos (items 16, 17)

@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    """The committed demo bundle's barcodes as an index (uncalibrated: these tests look at error rows)."""
    index = tmp_path_factory.mktemp("demo") / "index"
    result = invoke("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", DEMO_MODEL, "-o", index,
                    "--no-calibrate")
    assert result.exit_code == 0, result.output
    return index


def good_photos(folder: Path, n: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for source in sorted((EXAMPLES / "photos").glob("*.jpg"))[:n]:
        (folder / source.name).write_bytes(source.read_bytes())
        names.append(source.name)
    return names


def classify(folder: Path, index: Path, out: Path):
    return invoke("classify", folder, "--model", DEMO_MODEL, "--index", index, "-o", out)


def test_a_broken_symbolic_link_is_an_error_row(tmp_path, demo_index):
    folder = tmp_path / "photos"
    good = good_photos(folder)
    (folder / "moved.jpg").symlink_to("IMG_0001.jpg")  # the photo was moved or renamed
    (folder / "trap3").symlink_to(tmp_path / "unmounted-card" / "trap3")  # a folder of photos, not mounted
    (folder / "notes.txt").symlink_to("old-notes.txt")  # visibly no photo: skipped like a real notes.txt
    out = tmp_path / "out.csv"
    result = classify(folder, demo_index, out)
    assert result.exit_code == 0, result.output
    rows = {r["query_id"]: r for r in read_rows(out)}
    assert set(rows) == {*good, "moved.jpg", "trap3"}
    for name in ("moved.jpg", "trap3"):
        assert rows[name]["status"] == "error"
        assert "broken symbolic link" in rows[name]["error"] and name in rows[name]["error"]
    assert "IMG_0001.jpg does not exist" in rows["moved.jpg"]["error"]
    assert all(rows[name]["status"] != "error" and rows[name]["top_hit_id"] for name in good)
    assert "2 error" in result.stderr


def test_an_aspect_ratio_bomb_is_an_error_row_and_the_run_goes_on(tmp_path, demo_index):
    folder = tmp_path / "photos"
    good = good_photos(folder, 3)
    bomb = folder / "bomb.png"
    Image.new("1", (1, 2_000_000)).save(bomb)  # 2 Mpx passes the pixel limit; resized it would be 131 Gpx
    assert bomb.stat().st_size < 8_000
    out = tmp_path / "out.csv"
    result = classify(folder, demo_index, out)
    assert result.exit_code == 0, (result.output, result.exception)
    rows = {r["query_id"]: r for r in read_rows(out)}
    assert set(rows) == {*good, "bomb.png"}
    assert rows["bomb.png"]["status"] == "error"
    assert "bomb.png" in rows["bomb.png"]["error"] and "aspect-ratio bomb" in rows["bomb.png"]["error"]
    assert all(rows[name]["status"] != "error" and rows[name]["top_hit_id"] for name in good)


def test_the_aspect_ratio_bound_is_20_to_1():
    spec = ImagePreprocessing(size=32, resize=36)
    # 20:1 is still a (very elongated) photo and gets a crop
    assert preprocess_image(Image.new("RGB", (10, 200)), spec).shape == (3, 32, 32)
    for size in ((10, 211), (211, 10)):  # either orientation, over 20:1, refused before any resize
        with pytest.raises(ImageError, match=r"21\.1:1, more elongated than the 20:1"):
            preprocess_image(Image.new("RGB", size), spec, name="strip")


# ------------------------------------------------------------------------- optional extras (item 15)

def without(module: str, *argv: str) -> subprocess.CompletedProcess:
    """Run `clibd ARGV…` in a fresh interpreter where importing ``module`` fails as if it were not installed."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # `import {module}` now raises ModuleNotFoundError
        from clibd_cli.app import main
        sys.argv = ["clibd", *{list(argv)!r}]
        main()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("argv", "install"), [
    (("train", "--data", "sim", "-o", "RUN"), "pip install 'clibd[train]'"),
    (("export", "best.pt", "-o", "BUNDLE"), "pip install 'clibd[train,export]'"),
])
def test_train_and_export_without_torch_say_which_extra_to_install(tmp_path, argv, install):
    argv = tuple(str(tmp_path / a) if a.isupper() else a for a in argv)
    done = without("torch", *argv)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert len(" ".join(lines)) < 400 and lines[0].startswith("error: "), lines
    assert "torch" in lines[0] and install in " ".join(lines)


# ------------------------------------------------------------------------- pipes and signals (item 15)

@pytest.fixture(scope="module")
def barcodes(tmp_path_factory):
    """A small index and 3,000 queries (~10 s of matching), so a run can be stopped in the middle."""
    folder = tmp_path_factory.mktemp("pipes")
    reference = make_reference(seed=41, orders=2, families=2, genera=2, species=3, specimens=3, id_prefix="REF")
    index = folder / "index"
    result = invoke("build-index", "-b", write_fasta(folder / "ref.fasta", reference), "-o", index, "--no-calibrate")
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(41)
    queries = folder / "queries.fasta"
    ids = [f"Q{i:05d}" for i in range(3000)]
    with queries.open("w") as handle:
        for i, query_id in enumerate(ids):
            handle.write(f">{query_id}\n{mutate(reference[i % len(reference)].sequence, 0.01, rng)}\n")
    few = folder / "few.fasta"
    few.write_text("".join(queries.read_text().splitlines(keepends=True)[: 2 * 300]))
    return {"index": index, "queries": queries, "ids": ids, "few": few, "few_ids": ids[:300]}


def test_a_closed_output_pipe_stops_quietly_and_keeps_files_whole(tmp_path, barcodes):
    hits = tmp_path / "hits.tsv"
    run = clibd("match", barcodes["queries"], "-i", barcodes["index"], "-f", "csv", "--hits", hits,
                "--batch-size", 50)
    header = run.stdout.readline()  # `| head -1`: read one line, then go away
    run.stdout.close()
    err = run.stderr.read()
    assert run.wait(timeout=120) == 141, err  # what a Unix tool killed by SIGPIPE reports
    assert header.startswith("query_id,status")
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err
    text = hits.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].split("\t") == report.MATCH_HIT_COLUMNS
    assert all(len(line.split("\t")) == len(report.MATCH_HIT_COLUMNS) for line in lines)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc; none elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_sigterm_stops_like_ctrl_c_and_resume_completes(tmp_path, barcodes):
    out = tmp_path / "calls.json"
    args = ("match", barcodes["queries"], "-i", barcodes["index"], "-o", out, "--batch-size", 50)
    run = clibd(*args)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count('"query_id"') >= 100):  # well into the run
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    workers = _children(run.pid)  # the verification processes (forked on Linux)
    cores = os.cpu_count() or 1
    assert len(workers) == (cores if cores > 1 else 0) or not sys.platform.startswith("linux")
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err  # Ctrl-C's status
    assert "interrupted" in err and "Traceback" not in err
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # none is left running
    kept = [row["query_id"] for row in json.loads(out.read_text())["results"]]  # valid JSON
    assert 100 <= len(kept) < len(barcodes["ids"]) and kept == barcodes["ids"][: len(kept)]
    resumed = clibd(*args, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert [row["query_id"] for row in json.loads(out.read_text())["results"]] == barcodes["ids"]


# ------------------------------------------------------------------------- refusals of the file system (item 15)

def test_a_read_only_output_folder_is_one_line(tmp_path, barcodes, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)  # refuses writes to a normal user; root writes anyway, hence the open below
    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):
        if self.parent == folder and any(c in mode for c in "wax+"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    out = folder / "calls.csv"
    line = one_error_line(invoke("match", barcodes["few"], "-i", barcodes["index"], "-o", out), "calls.csv",
                          os.strerror(errno.EACCES), "permissions")
    assert "Traceback" not in line and not out.exists()


def test_a_full_disk_is_one_line_and_keeps_the_rows_written(tmp_path, barcodes, monkeypatch):
    real_write = report.RowWriter.write
    written = []

    def write(self, row, flush=True, **extra):
        if self.path is not None and self.path.name == "calls.csv" and len(written) == 120:
            self.fh.write(row["query_id"][:3])  # the disk fills in the middle of a row
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, row, flush, **extra)
        written.append(row["query_id"])

    monkeypatch.setattr(report.RowWriter, "write", write)
    out = tmp_path / "calls.csv"
    args = ("match", barcodes["few"], "-i", barcodes["index"], "-o", out, "--batch-size", 50)
    one_error_line(invoke(*args), os.strerror(errno.ENOSPC), "--resume")
    rows = read_rows(out)
    assert [r["query_id"] for r in rows[:120]] == barcodes["few_ids"][:120]
    assert all(r["status"] for r in rows[:120])  # every row written before the disk filled is whole
    monkeypatch.setattr(report.RowWriter, "write", real_write)  # space was freed
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert [r["query_id"] for r in read_rows(out)] == barcodes["few_ids"]
