"""Result rows and the writers that stream them to CSV, TSV, JSON, JSONL or a terminal table.

Rows are written and flushed as they are produced, so an interrupted run keeps every finished
query and ``--resume`` can skip them.  JSON is written one result per line inside the array, which
keeps it valid JSON when finished and recoverable line by line when not.

CSV and TSV end up in spreadsheets, which run a cell starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return as a formula (CSV injection): an id or species name from a reference file could call
out to the network or run a command when the output is opened.  Such text cells get a leading ``'``,
as OWASP recommends (:func:`neutralise`); numbers stay numbers, JSON and JSONL stay verbatim, and
``--resume`` strips the quote again when it reads the ids back (:func:`restore`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from clibd_cli.errors import InputError, OutputExistsError
from clibd_cli.sequences import RANKS

FORMATS = ("table", "csv", "tsv", "json", "jsonl")
COLUMNS = ["query_id", "status", "rank", *RANKS, *(f"{r}_score" for r in RANKS), "top_hit_id",
           "top_hit_similarity", "bin", "support", "flags"]
HIT_COLUMNS = ["query_id", "hit_rank", "hit_id", "similarity", *RANKS, "bin"]
# Barcode matches are verified by alignment: identity (%) and overlap (bp) of the top hit, the identity
# behind each rank's call, and the reason of an error row.
MATCH_COLUMNS = [*COLUMNS, "identity", "overlap", *(f"{r}_identity" for r in RANKS), "error"]
MATCH_HIT_COLUMNS = [*HIT_COLUMNS, "identity", "overlap"]
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".json": "json", ".jsonl": "jsonl",
               ".ndjson": "jsonl"}
SPREADSHEET_FORMATS = ("csv", "tsv")
# Text a spreadsheet would take for a formula, after any quotes this module added (so the mapping can
# be undone exactly: an id that itself starts with "'=" is written "''=" and read back as "'=").
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NEUTRALISED = re.compile(r"'+[=+\-@\t\r]")


def choose_format(fmt: str | None, path: Path | None, stdout_is_tty: bool) -> str:
    """The explicit format, else the output file's extension, else table on a terminal and CSV when piped."""
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
        if fmt == "table" and path is not None:
            raise InputError("--format table prints to the terminal; use csv, tsv, json or jsonl with -o.")
        return fmt
    if path is not None:
        return _EXTENSIONS.get(path.suffix.lower(), "tsv")
    return "table" if stdout_is_tty else "csv"


def format_value(value) -> str | float | int:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def neutralise(value):
    """A cell for CSV/TSV: text a spreadsheet would evaluate as a formula gets a leading ``'``.

    Numbers, and text that is just a number (``-0.5``), are left alone: a spreadsheet reads them as the
    number they are, which runs nothing.
    """
    if isinstance(value, str) and _FORMULA.match(value) and not _is_number(value):
        return "'" + value
    return value


def restore(value: str) -> str:
    """Undo :func:`neutralise` on a cell read back from a CSV/TSV output (for --resume)."""
    if _NEUTRALISED.match(value) and not _is_number(value[1:]):
        return value[1:]
    return value


def check_output(path: Path | None, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing output unless asked; called before any work is done."""
    if path is None:
        return
    if path.exists() and path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for -o.")
    if path.exists() and path.stat().st_size > 0 and not (resume or force):
        raise OutputExistsError(f"{path}: already exists. Use --resume to continue it or --force to "
                                "overwrite it.")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: folder does not exist; create it or choose another -o path.")


def completed_ids(path: Path, fmt: str) -> list[dict]:
    """Rows already in an output file (for --resume); an unfinished last line is dropped."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if fmt in ("csv", "tsv"):
        rows = list(csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))
        if rows and "query_id" not in rows[0]:
            raise InputError(f"{path}: has no query_id column, so it cannot be resumed; use --force.")
        return [{k: restore(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
    rows = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith('{"query_id"'):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class RowWriter:
    """Streams result rows to a file or stdout in one of :data:`FORMATS`."""

    def __init__(self, path: Path | None, fmt: str, columns: list[str], info: dict | None = None,
                 previous: Iterable[dict] = (), stream: IO[str] | None = None, append: bool = False) -> None:
        """`previous`: rows already in `path` (--resume); `append`: continue `path` even without them."""
        self.path, self.fmt, self.columns, self.info = path, fmt, columns, info or {}
        self.rows_for_table: list[dict] = []
        self._first = True
        self._tmp: Path | None = None
        previous = list(previous)
        append = (append or bool(previous)) and path is not None and path.exists() and path.stat().st_size > 0
        if fmt == "table":
            self.fh = None
            return
        if path is None:
            self.fh = stream or sys.stdout
        elif fmt == "json" and append:
            # A JSON array cannot be appended to: rewrite the finished rows, then continue.
            self._tmp = path.with_name(f".{path.name}.tmp")
            self.fh = self._tmp.open("w", encoding="utf-8", newline="")
        else:
            if append:  # an interrupted run may have left half a row, which completed_ids ignored
                data = path.read_bytes()
                if not data.endswith(b"\n"):
                    os.truncate(path, data.rfind(b"\n") + 1)
            self.fh = path.open("a" if append else "w", encoding="utf-8", newline="")
        if fmt in ("csv", "tsv"):
            self._csv = csv.DictWriter(self.fh, columns, delimiter="," if fmt == "csv" else "\t",
                                       extrasaction="ignore", lineterminator="\n")
            if not append:
                self._csv.writeheader()
        elif fmt == "json":
            self.fh.write('{"info": ' + json.dumps(self.info) + ',\n "results": [\n')
            for row in previous:
                self.write(row, flush=False)
        self.fh.flush()

    def write(self, row: dict, flush: bool = True) -> None:
        clean = {c: format_value(row.get(c, "")) for c in self.columns}
        if self.fmt == "table":
            self.rows_for_table.append(clean)
            return
        if self.fmt in SPREADSHEET_FORMATS:
            self._csv.writerow({c: neutralise(v) for c, v in clean.items()})
        elif self.fmt == "jsonl":
            self.fh.write(json.dumps(clean) + "\n")
        else:
            self.fh.write(("" if self._first else ",\n") + "  " + json.dumps(clean))
            self._first = False
        if flush:
            self.fh.flush()

    def close(self, console=None) -> None:
        if self.fmt == "table":
            if console is not None:
                console.print(render_table(self.rows_for_table, self.columns))
            return
        if self.fmt == "json":
            self.fh.write("\n ]\n}\n")
        self.fh.flush()
        if self.path is not None:
            self.fh.close()
            if self._tmp is not None:
                os.replace(self._tmp, self.path)


def render_table(rows: list[dict], columns: list[str]):
    """A rich table of result rows for the terminal (scores rounded, empty cells dimmed)."""
    from rich.table import Table

    status_style = {"assigned": "green", "rolled_up": "yellow", "novel_candidate": "magenta",
                    "no_match": "red", "error": "red"}
    shown = [c for c in columns if c not in ("support", "flags", "order_score", "family_score", "error",
                                             *(f"{r}_identity" for r in RANKS))]
    table = Table(show_lines=False, header_style="bold")
    for column in shown:
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in rows:
        cells = []
        for column in shown:
            value = row.get(column, "")
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            if column == "status":
                text = f"[{status_style.get(text, 'white')}]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    return table
