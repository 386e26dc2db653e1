"""Result rows and the writers that stream them to CSV, TSV, JSON, JSONL, Darwin Core or a terminal table.

Rows are written and flushed as they are produced, so an interrupted run keeps every finished
query and ``--resume`` can skip them.  JSON is written one result per line inside the array, which
keeps it valid JSON when finished and recoverable line by line when not.

CSV and TSV end up in spreadsheets, which run a cell starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return as a formula (CSV injection): an id or species name from a reference file could call
out to the network or run a command when the output is opened.  Such text cells (in Darwin Core output
too) get a leading ``'``, as OWASP recommends (:func:`neutralise`); numbers stay numbers, JSON and JSONL
stay verbatim, and ``--resume`` strips the quote again when it reads the ids back (:func:`restore`).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from clibd_cli.errors import InputError, OutputExistsError
from clibd_cli.schema import RANKS

FORMATS = ("table", "csv", "tsv", "json", "jsonl", "dwc")
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
# Workbook files a spreadsheet opens as binary: text written under these names would not open.
_WORKBOOKS = (".xlsx", ".xlsm", ".xls", ".ods")
DWC_SUFFIX = ".dwc.csv"  # Darwin Core occurrences (clibd_cli.darwincore), CSV with the terms as header
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
            raise InputError("--format table prints to the terminal; use csv, tsv, json, jsonl or dwc with -o.")
        return fmt
    if path is not None:
        if path.name.lower().endswith(DWC_SUFFIX):
            return "dwc"
        if path.suffix.lower() in _WORKBOOKS:
            raise InputError(f"{path}: clibd writes text tables, not {path.suffix} workbooks; name it "
                             f"{path.with_suffix('.csv').name} (spreadsheets open CSV) or choose --format.")
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


def check_output(path: Path | None, *, resume: bool | None, force: bool, inputs: Iterable[Path | str] = (),
                 others: Iterable[Path | None] = (), folders: Iterable[Path] = (), option: str = "-o") -> None:
    """Refuse to overwrite an existing output unless asked; called before any work is done.

    ``resume`` is None for a command that has no ``--resume`` (`clibd report`): the refusal then offers
    only ``--force``.

    ``inputs`` (query and reference files), anything inside ``folders`` (indexes) and ``others`` (the run's
    other outputs) must not be the output: ``-o`` naming a query file or ``INDEX/index.json`` with
    ``--force`` destroyed it, and ``-o`` equal to ``--hits`` interleaved both tables in one file.  (A new
    file inside a folder of photos is fine.)  ``option``: how the command names this output, for the messages.
    """
    if path is None:
        return
    try:
        path.resolve()
    except (RuntimeError, OSError):  # Python 3.11-3.12 raise RuntimeError for a loop, later ones OSError
        raise InputError(f"{path}: is a symbolic link that leads back to itself; remove the loop or choose "
                         f"another {option} path.") from None
    for other in others:
        if other is not None and _same_file(path, Path(other)):
            raise InputError(f"{path}: is also given as another output (--hits?); give each output its own file.")
    for given in inputs:
        if _same_file(path, Path(given)):
            raise InputError(f"{path}: is an input of this run; writing there would destroy it. Choose another "
                             "-o/--hits path.")
    for folder in folders:
        if Path(folder).is_dir() and path.resolve().is_relative_to(Path(folder).resolve()):
            raise InputError(f"{path}: is inside the index {folder}; writing there could destroy it. Choose "
                             "another -o/--hits path.")
    if path.exists() and path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for {option}.")
    if path.exists() and path.stat().st_size > 0 and not (resume or force):
        if resume is None:
            raise OutputExistsError(f"{path}: already exists. Use --force to replace it, or choose another -o.")
        raise OutputExistsError(f"{path}: already exists. Use --resume to continue it or --force to "
                                "overwrite it.")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: folder does not exist; create it or choose another -o path.")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        # outputs are created with their first row: say it now, not after the first batch's work
        raise InputError(f"{path}: cannot be written (permission denied); choose another -o path.")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # RuntimeError: Path.resolve of a symlink loop (Python 3.11-3.12)
        return False


def run_record(path: Path) -> Path:
    """The file beside an output that records which run wrote it (index, model, thresholds), for --resume."""
    return path.with_name(f".{path.name}.clibd-run.json")


def check_same_run(path: Path | None, identity: dict) -> None:
    """Refuse to --resume ``path`` with a run whose index, model or thresholds differ from the one that wrote
    it: the file would hold calls of two runs, indistinguishable row by row."""
    if path is None or not identity or not path.exists() or path.stat().st_size == 0:
        return
    record = run_record(path)
    try:
        before = json.loads(record.read_text())["identity"] if record.exists() else None
    except (OSError, ValueError, KeyError, TypeError):
        before = None
    if before is None:
        return  # written by an older clibd: nothing to compare
    before, now = json.loads(json.dumps(before)), json.loads(json.dumps(identity))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise InputError(f"{path}: was written by another run ({', '.join(changed)} differ), so --resume would "
                         "mix their calls. Use another -o, or --force to start again.")


def prune_hits(path: Path, fmt: str, done: set[str]) -> None:
    """Keep only hit rows of queries whose result row is in the output (for --resume).

    Hits are written before their row, so a run killed between the two leaves hits of an unfinished query:
    it is identified again, and its old hits would otherwise appear twice.
    """
    if not path.exists() or path.stat().st_size == 0 or fmt not in ("csv", "tsv", "jsonl"):
        return
    delimiter = "," if fmt == "csv" else "\t"
    tmp = path.with_name(f".{path.name}.tmp")
    with path.open(encoding="utf-8", newline="") as src, tmp.open("w", encoding="utf-8", newline="") as dst:
        text = src.read()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        lines = text.splitlines(keepends=True)
        if fmt == "jsonl":
            dst.writelines(line for line in lines if json.loads(line).get("query_id") in done)
        else:
            if lines:
                dst.write(lines[0])
            for line, row in zip(lines[1:], csv.reader(lines[1:], delimiter=delimiter), strict=True):
                if row and restore(row[0]) in done:
                    dst.write(line)
    os.replace(tmp, path)


def completed_ids(path: Path, fmt: str) -> list[dict]:
    """Rows already in an output file (for --resume); an unfinished last line is dropped.

    Read by :mod:`clibd_cli.result_files`, the one reader of our outputs (`clibd report` uses it too).
    """
    from clibd_cli.result_files import complete_lines, read_json_lines, read_table  # it imports this module

    if not path.exists() or path.stat().st_size == 0:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text[: text.rfind("\n") + 1]  # even a first line is unfinished until its newline is written
    if fmt in ("csv", "tsv", "dwc"):
        columns, rows = read_table(text, "tsv" if fmt == "tsv" else "csv")
        if fmt == "dwc":  # Darwin Core calls the query id occurrenceID
            if rows and "occurrenceID" not in columns:
                raise InputError(f"{path}: has no occurrenceID column, so it cannot be resumed as Darwin Core; "
                                 "use --force.")
            return [{"query_id": row["occurrenceID"] or ""} for row in rows]
        if rows and "query_id" not in columns:
            raise InputError(f"{path}: has no query_id column, so it cannot be resumed; use --force.")
        return rows
    # json and jsonl: one row per line (JSON's info line and closing bracket are not rows)
    return read_json_lines(path, [line for line in complete_lines(text) if line.strip().startswith('{"query_id"')])


def _names_its_file(method):
    """A :class:`RowWriter` method whose OSError says which output it hit: a full disk's error names no file,
    and `-o /dev/full` once printed "No space left on device while writing." without saying where."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            if exc.filename is None and self.path is not None:
                exc.filename = str(self.path)
            raise

    return wrapper


class RowWriter:
    """Streams result rows to a file or stdout in one of :data:`FORMATS`.

    The file is created with the first row (or when a run with no rows finishes), never before: a run that
    fails early (a broken model, an unreadable index) leaves no header-only file that its rerun would refuse
    as "already exists".  ``identity`` (index, model, thresholds…) is recorded beside the file
    (:func:`run_record`) so that ``--resume`` can refuse to continue it with another run.  ``dwc`` rows
    are Darwin Core occurrences of ``subject`` (:mod:`clibd_cli.darwincore`: barcode or photo).
    """

    def __init__(self, path: Path | None, fmt: str, columns: list[str], info: dict | None = None,
                 previous: Iterable[dict] = (), stream: IO[str] | None = None, append: bool = False,
                 identity: dict | None = None, subject: str | None = None, wide: bool = False) -> None:
        """`previous`: rows already in `path` (--resume); `append`: continue `path` even without them;
        `wide`: a terminal table shows every column (see :func:`render_table`)."""
        self.wide = wide
        self.path, self.fmt, self.columns, self.info = path, fmt, columns, info or {}
        if fmt == "dwc":
            from clibd_cli.darwincore import SUBJECTS, dwc_columns, identification_date

            if subject not in SUBJECTS:
                raise InputError("--format dwc: Darwin Core output is for identifications (match, classify); use "
                                 "csv, tsv, json or jsonl here.")
            self._dwc_columns, self._identified = dwc_columns(subject), identification_date()
        self.subject = subject
        self.rows_for_table: list[dict] = []
        self._first = True
        self._tmp: Path | None = None
        self._previous = list(previous)
        self._append = (append or bool(self._previous)) and path is not None and path.exists() and \
            path.stat().st_size > 0
        self._stream, self._identity = stream, identity
        self.fh: IO[str] | None = None

    def _open(self) -> None:
        path, fmt, append = self.path, self.fmt, self._append
        if path is None:
            self.fh = self._stream or sys.stdout
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
        if path is not None and self._identity is not None:
            record = run_record(path)
            record.write_text(json.dumps({"identity": self._identity}, indent=1) + "\n")
        if fmt in ("csv", "tsv", "dwc"):
            self._csv = csv.DictWriter(self.fh, self._dwc_columns if fmt == "dwc" else self.columns,
                                       delimiter="\t" if fmt == "tsv" else ",", extrasaction="ignore",
                                       lineterminator="\n")
            if not append:
                self._csv.writeheader()
        elif fmt == "json":
            self.fh.write('{"info": ' + json.dumps(self.info) + ',\n "results": [\n')
            for row in self._previous:
                self.write(row, flush=False)
        self.fh.flush()

    @_names_its_file
    def write(self, row: dict, flush: bool = True, *, sequence: str = "", marker: str = "") -> None:
        """Write one result row.  ``sequence`` and ``marker`` (the query barcode's) appear only in dwc."""
        clean = {c: format_value(row.get(c, "")) for c in self.columns}
        if self.fmt == "dwc":
            from clibd_cli.darwincore import dwc_row

            clean = dwc_row(clean, self.subject, self.info, self._identified, sequence=sequence, marker=marker)
        if self.fmt == "table":
            self.rows_for_table.append(clean)
            return
        if self.fh is None:
            self._open()
        if self.fmt in (*SPREADSHEET_FORMATS, "dwc"):
            self._csv.writerow({c: neutralise(v) for c, v in clean.items()})
        elif self.fmt == "jsonl":
            self.fh.write(json.dumps(clean) + "\n")
        else:
            self.fh.write(("" if self._first else ",\n") + "  " + json.dumps(clean))
            self._first = False
        if flush:
            self.fh.flush()

    @_names_its_file
    def flush(self) -> None:
        if self.fh is not None:
            self.fh.flush()

    @_names_its_file
    def close(self, console=None, *, failed: bool = False) -> None:
        """Finish the output.  ``failed``: the run stopped on an error before finishing; a file that has no
        row yet is then not created at all."""
        if self.fmt == "table":
            if console is not None:
                shown = render_table(self.rows_for_table, self.columns, wide=self.wide)
                # --wide: lines as long as the columns need (a wide terminal, or `less -S`), never folded
                if self.wide:
                    unlimited = console.options.update_width(10_000)
                    console.width = max(console.width, console.measure(shown[0], options=unlimited).maximum)
                console.print(*shown, crop=False)
            return
        if self.fh is None:
            if failed:
                return
            self._open()
        if self.fmt == "json":
            self.fh.write("\n ]\n}\n")
        self.fh.flush()
        if self.path is not None:
            self.fh.close()
            if self._tmp is not None:
                os.replace(self._tmp, self.path)


STATUS_STYLE = {"assigned": "green", "rolled_up": "yellow", "novel_candidate": "magenta", "no_match": "red",
                "error": "red", "consistent": "green", "conflict": "red", "inconclusive": "yellow"}


def _cell(value: object, column: str):
    """A table cell as Rich text: user text is never read as markup, scores get 3 decimals."""
    from rich.text import Text

    digits = 2 if "identity" in column else 3  # identity is a percentage, scores are cosines
    text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    if column == "flags":
        text = text.replace(",", ", ")  # wrap between flags, not inside one
    return Text(text, style=STATUS_STYLE.get(text, "") if column in ("status", "verdict") else "")


def _compact(row: dict, columns: list[str]) -> dict[str, object]:
    """The few cells a person reads first: id, status, the call at its rank, its identity or score, flags."""
    if "verdict" in columns:  # clibd check
        return {"specimen": row.get("specimen_id", ""), "verdict": row.get("verdict", ""),
                "first conflict": row.get("first_conflict", ""), "similarity": row.get("pair_similarity", ""),
                "error": row.get("error", "")}
    rank = row.get("rank", "")
    measure = ("identity", row.get("identity", "")) if "identity" in columns else \
        ("score", row.get(f"{rank}_score", "") if rank else "")
    return {"query": row.get("query_id", ""), "status": row.get("status", ""), "rank": rank,
            "call": row.get(rank, "") if rank else "", measure[0]: measure[1],
            "flags": row.get("flags", "") or (f"error: {row['error']}" if row.get("error") else "")}


NO_WRAP = {"query", "specimen", "query_id", "specimen_id", "status", "verdict", "rank"}


def render_table(rows: list[dict], columns: list[str], *, wide: bool = False):
    """Result rows as a terminal table that fits the terminal: Rich renderables to print in order.

    By default a compact table (id, status, the call at its rank, identity or score, flags) that fits 80
    columns; ids and statuses are never broken across lines.  ``wide``: every column that holds a value in
    some row.  Either way a footer says how to get what the table leaves out.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if wide:
        shown = [c for c in columns if any(row.get(c, "") != "" for row in rows)] or columns[:3]
        cells = [{c: row.get(c, "") for c in shown} for row in rows]
        headers = shown
    else:
        cells = [_compact(row, columns) for row in rows]
        headers = list(cells[0]) if cells else list(_compact({}, columns))
        if "error" in headers and not any(c.get("error") for c in cells):
            headers.remove("error")
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False, collapse_padding=True)
    for header in headers:  # a flag is never cut inside (the longest one, and its comma, set the least width)
        words = [w for row in cells for w in str(row.get(header, "")).split(",")] if header == "flags" else []
        table.add_column(header.replace("_", " "), no_wrap=wide or header in NO_WRAP, overflow="fold",
                         min_width=min(max(map(len, words), default=0) + 1, 16) or None)
    for row in cells:
        table.add_row(*(_cell(row.get(h, ""), h) for h in headers))
    if not wide:
        footer = (f"A compact view. All {len(columns)} columns: --wide, --format csv, or -o FILE "
                  "(.csv .tsv .json .jsonl .dwc.csv).")
    elif len(headers) < len(columns):
        footer = f"Columns empty in every row are left out; --format csv or -o FILE writes all {len(columns)}."
    else:
        return (table,)
    return table, Text(footer, style="dim")
