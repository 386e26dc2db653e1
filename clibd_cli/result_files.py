"""Reading a run's output back: the rows `clibd match` or `clibd classify` wrote, and what the run recorded.

Why a reader of our own outputs: `clibd report` turns them into a page, after the run and maybe on another
machine, so it must take every format :class:`~clibd_cli.report.RowWriter` writes (CSV, TSV, JSON with its
``info`` block, JSONL), undo the spreadsheet quoting of CSV/TSV cells (:func:`~clibd_cli.report.restore`)
and accept a file an interrupted run left (an unfinished last line, a JSON array never closed), as
``--resume`` does.  The format is recognised from the content, not the extension, because outputs get
renamed (``.txt``, no extension).  A file that is not such an output (another table, a `clibd check`
output, a hits table given as results) is refused with the columns it lacks.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clibd_cli.errors import InputError
from clibd_cli.report import restore, run_record
from clibd_cli.schema import RANKS

# What every row of match and classify has; the scores, hits and photo columns are optional extras.
REQUIRED_COLUMNS = ("query_id", "status", "rank", *RANKS)
REQUIRED_HIT_COLUMNS = ("query_id", "hit_rank", "hit_id", "similarity")
# Columns only classify writes: a run on photos, whose query ids name photos (or groups of them).
PHOTO_COLUMNS = ("against", "photos")


@dataclass
class RunResults:
    """The rows of one output file, in file order, with the run's own description of itself.

    ``info`` is the JSON output's ``info`` block (empty for other formats); ``identity`` is the run record
    kept beside the output (:func:`~clibd_cli.report.run_record`: fingerprints, thresholds), empty when
    there is none.  ``kind`` is ``classify`` for photo runs, else ``match``.
    """

    path: Path
    fmt: str
    columns: list[str]
    rows: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "classify" if any(c in self.columns for c in PHOTO_COLUMNS) else "match"


def _read_text(path: Path, what: str) -> str:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file. Give the {what}.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the {what} file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file (byte {exc.start} is not UTF-8); give the {what}.") from None
    if not text.strip():
        raise InputError(f"{path}: is empty; give the {what} of a finished or interrupted run.")
    return text


def sniff_format(text: str) -> str:
    """csv, tsv, json or jsonl, from the first characters the writers put there."""
    head = text.lstrip()
    if head.startswith('{"info"'):
        return "json"
    if head.startswith("{"):
        return "jsonl"
    first = head.split("\n", 1)[0]
    return "tsv" if "\t" in first else "csv"


def complete_lines(text: str) -> list[str]:
    """The lines of ``text`` without an unfinished last one (an interrupted run's half row)."""
    if not text.endswith("\n") and "\n" in text:
        text = text[: text.rfind("\n") + 1]
    return text.splitlines()


def read_table(text: str, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and finished rows of a CSV or TSV output, spreadsheet quoting undone."""
    lines = complete_lines(text)
    reader = csv.DictReader(io.StringIO("\n".join(lines) + "\n"), delimiter="," if fmt == "csv" else "\t")
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    rows = [{k: restore(v) if isinstance(v, str) else v for k, v in row.items() if k is not None}
            for row in reader]
    return columns, rows


def read_json_lines(path: Path, lines: list[str]) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(lines, 1):
        line = line.strip().rstrip(",")
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}: line {number} is not JSON; give the output of 'clibd match' or "
                             "'clibd classify' unchanged.") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}: line {number} is not a result object; give the output of 'clibd match' "
                             "or 'clibd classify' unchanged.")
        rows.append(row)
    return rows


def _read_json(path: Path, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``info`` block and rows of a JSON output; an unfinished one (interrupted run) is read line by line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        rows = [row for row in data["results"] if isinstance(row, dict)]
        return info, rows
    # RowWriter writes '{"info": {...},' on the first line, then one row per line: keep the finished ones.
    lines = complete_lines(text)
    first, rest = lines[0].strip(), lines[1:]
    try:
        info = json.loads(first.removeprefix('{"info":').rstrip(","))
    except json.JSONDecodeError:
        raise InputError(f"{path}: starts like a clibd JSON output but is not one (its info line is not JSON); "
                         "give the output of 'clibd match' or 'clibd classify' unchanged.") from None
    body = [line for line in rest if line.strip().startswith("{")]
    return (info if isinstance(info, dict) else {}), read_json_lines(path, body)


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _require(path: Path, columns: list[str], required: tuple[str, ...], what: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(columns[:12]) + (" …" if len(columns) > 12 else "") if columns else "none"
        raise InputError(f"{path}: not {what}: no {', '.join(missing)} column(s) (found: {found}). Give the file "
                         "'clibd match' or 'clibd classify' wrote.")


def _read_rows(path: Path, what: str) -> tuple[str, list[str], list[dict[str, Any]], dict[str, Any]]:
    text = _read_text(path, what)
    fmt = sniff_format(text)
    info: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        columns, rows = read_table(text, fmt)
    elif fmt == "json":
        info, rows = _read_json(path, text)
        columns = _columns_of(rows)
    else:
        rows = read_json_lines(path, complete_lines(text))
        columns = _columns_of(rows)
    return fmt, columns, rows, info


def _read_identity(path: Path) -> dict[str, Any]:
    """The run record beside an output, or nothing: it is a description, so a damaged one is only left out."""
    record = run_record(Path(path))
    try:
        identity = json.loads(record.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError):
        return {}
    return identity if isinstance(identity, dict) else {}


def read_results(path: Path) -> RunResults:
    """The rows of a `clibd match` or `clibd classify` output (-o), with its info block and run record."""
    path = Path(path)
    what = "output of 'clibd match' or 'clibd classify' (-o)"
    fmt, columns, rows, info = _read_rows(path, what)
    if not rows and fmt in ("json", "jsonl"):
        raise InputError(f"{path}: holds no result rows; give the output of a run that identified something.")
    if all(c in columns for c in REQUIRED_HIT_COLUMNS) and "status" not in columns:
        raise InputError(f"{path}: is a --hits table, not the run's results; give the -o file as RESULTS and "
                         "this one with --hits.")
    _require(path, columns, REQUIRED_COLUMNS, "an output of 'clibd match' or 'clibd classify'")
    if not rows:
        raise InputError(f"{path}: holds no result rows; give the output of a run that identified something.")
    return RunResults(path, fmt, columns, rows, info, _read_identity(path))


def read_hits(path: Path, query_ids: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The --hits table of a run, as each query's hits in hit-rank order.

    ``query_ids``: the results' ids; a hits table sharing none of them belongs to another run and is refused
    (its hits would silently be shown nowhere).
    """
    path = Path(path)
    _fmt, columns, rows, _info = _read_rows(path, "--hits table of 'clibd match' or 'clibd classify'")
    _require(path, columns, REQUIRED_HIT_COLUMNS, "a --hits table")
    hits: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        hits.setdefault(str(row["query_id"]), []).append(row)
    for rows_of_query in hits.values():
        rows_of_query.sort(key=lambda row: to_number(row.get("hit_rank")) or 0.0)
    if query_ids and hits and not query_ids & set(hits):
        raise InputError(f"{path}: none of its query ids is in the results; give the --hits file of the same run.")
    return hits


def to_number(value: Any) -> float | None:
    """A cell as a finite number, or None (empty, text, NaN): CSV gives text, JSON numbers."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None
