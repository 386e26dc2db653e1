"""Results on a terminal: a table that fits 80 columns with every id whole, `--wide` for every column.

The commands run in a real pseudo-terminal (stdout is a TTY, as in a user's shell), so what is checked is
what a user sees, not the piped CSV.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clibd_ok
from rich.console import Console

from clibd_cli.report import MATCH_COLUMNS, render_table

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def on_terminal(*args: object, columns: int = 80, cwd: Path | None = None) -> tuple[list[str], str]:
    """Run `clibd ARGS` with stdout on a pseudo-terminal COLUMNS wide: (its screen lines, its stderr)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    script = "import sys; from clibd_cli.app import main; sys.argv[0] = 'clibd'; main()"
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=follower,
                               stderr=subprocess.PIPE, env=env, cwd=cwd, text=False)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the process is done writing
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, stderr
    screen = ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")
    return screen.splitlines(), stderr


def ids_of(path: Path) -> list[str]:
    return [line[1:].split()[0] for line in path.read_text().splitlines() if line.startswith(">")]


def test_match_table_fits_80_columns_with_every_id_whole():
    lines, stderr = on_terminal("match", EXAMPLES / "queries.fasta", "--index", EXAMPLES / "reference.fasta")
    assert "40 queries" in stderr
    wide = [line for line in lines if len(line) > 80]
    assert not wide, wide[:3]
    first_cells = [line.split()[0] for line in lines if line.strip() and not line.startswith(" ")]
    for query in ids_of(EXAMPLES / "queries.fasta"):
        assert query in first_cells, f"{query} is not whole at the start of a row"
    header = lines[0].split()
    assert header[:4] == ["query", "status", "rank", "call"] and "identity" in header and "flags" in header
    text = "\n".join(lines)
    assert "novel_candidate" in text and "assigned" in text  # statuses are never folded
    assert "--wide" in text  # the footer says how to get every column


def test_wide_shows_every_column_with_a_value_unfolded():
    lines, _ = on_terminal("match", EXAMPLES / "queries.fasta", "--index", EXAMPLES / "reference.fasta", "--wide",
                           columns=100)
    header = lines[0]
    for column in ("top hit similarity", "species score", "support", "genus identity", "overlap"):
        assert column in header
    assert "error" not in header.split()  # empty in every row: left out, and the footer says so
    assert any("left out" in line for line in lines)
    rows = [line for line in lines if line.startswith("SYN")]
    assert len(rows) == 40  # one line per query: nothing folded


def test_classify_table_fits_80_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, index = EXAMPLES / "demo-model", tmp_path / "demo_index"
    clibd_ok("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", model, "-o", index)
    lines, stderr = on_terminal("classify", EXAMPLES / "photos", "--model", model, "--index", index)
    assert not [line for line in lines if len(line) > 80]
    first_cells = {line.split()[0] for line in lines if line.strip() and not line.startswith(" ")}
    photos = sorted(p.name for p in (EXAMPLES / "photos").iterdir())
    assert photos and all(photo in first_cells for photo in photos)
    assert "score" in lines[0].split()
    assert f"{len(photos)} photos" in stderr


def test_table_text_is_never_read_as_markup():
    row = {c: "" for c in MATCH_COLUMNS}
    row.update(query_id="[bold]Q1[/bold]", status="assigned", rank="species", species="[red]Aedes x[/red]",
               identity=99.5)
    console = Console(width=80, record=True, color_system=None)
    console.print(*render_table([row], MATCH_COLUMNS))
    text = console.export_text()
    assert "[bold]Q1[/bold]" in text and "[red]Aedes" in text


@pytest.mark.parametrize("wide", [False, True])
def test_piped_output_is_unchanged_csv(wide):
    args = ["match", EXAMPLES / "queries.fasta", "--index", EXAMPLES / "reference.fasta"] + (["--wide"] if wide else [])
    done = subprocess.run([sys.executable, "-m", "clibd_cli.app", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split(",") == MATCH_COLUMNS
    assert len(done.stdout.splitlines()) == 41


def test_check_table_fits(tmp_path):
    """`check` rows (verdicts) get their own compact view."""
    rows = [{"specimen_id": "S1", "verdict": "conflict", "first_conflict": "genus", "pair_similarity": 0.41,
             "error": ""}]
    console = Console(width=80, record=True, color_system=None)
    from clibd_cli.check import CHECK_COLUMNS

    console.print(*render_table(rows, CHECK_COLUMNS))
    text = console.export_text()
    assert "S1" in text and "conflict" in text and "genus" in text and "0.410" in text
    assert max(map(len, text.splitlines())) <= 80
