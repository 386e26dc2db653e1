"""The output files of a run and their --resume bookkeeping, once for `match`, `classify` and `check`.

A run streams result rows (and, with ``hits``, a long table of each query's top hits) to a file or to
standard output (:class:`~clibd_cli.report.RowWriter`).  Resuming a file means: read the query ids it
already holds (:meth:`RunOutput.done`; an unfinished last line is dropped), refuse to continue a file
that another run wrote (another index, model or thresholds: :func:`~clibd_cli.report.check_same_run`),
drop hits of queries whose row never made it to disk (:func:`~clibd_cli.report.prune_hits`), and append.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clibd_cli.errors import InputError
from clibd_cli.report import (
    RowWriter,
    check_output,
    check_same_run,
    choose_format,
    completed_ids,
    prune_hits,
)


class RunOutput:
    """Where a run's rows go, and what --resume needs to continue them.

    ``fmt`` None chooses from the file's extension, else a table on a terminal (``stdout_is_tty``) and CSV
    when piped.  Use: :meth:`check` before any work, :meth:`done` for the ids to skip, :meth:`start` with
    the run's info and identity, then :meth:`write` the results.  ``subject`` (``barcode`` or ``photo``)
    is what the rows identify, for Darwin Core output (``dwc``); a command without one refuses ``dwc``.
    """

    def __init__(self, path: Path | None, fmt: str | None = None, *, columns: Sequence[str],
                 hits: Path | None = None, hit_columns: Sequence[str] = (), resume: bool = False,
                 force: bool = False, stdout_is_tty: bool = False, subject: str | None = None,
                 wide: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.fmt = choose_format(fmt, self.path, stdout_is_tty)
        if self.fmt == "dwc" and subject is None:
            raise InputError(f"{self.path or '--format dwc'}: Darwin Core output is for identifications (match, "
                             "classify); use csv, tsv, json or jsonl here.")
        self.subject = subject
        self.hits = Path(hits) if hits is not None else None
        self.hits_fmt = choose_format(None, self.hits, False) if self.hits is not None else None
        if self.hits_fmt == "dwc":
            raise InputError(f"{self.hits}: --hits is a table of top hits, not Darwin Core occurrences; name it "
                             ".csv or .tsv.")
        self.columns, self.hit_columns = list(columns), list(hit_columns)
        self.resume, self.force, self.wide = resume, force, wide
        self._previous: list[dict] | None = None
        self.writer: RowWriter | None = None
        self.hit_writer: RowWriter | None = None

    def check(self, inputs: Iterable[Path | str] = (), folders: Iterable[Path] = ()) -> None:
        """Refuse outputs that exist (without resume or force), that are inputs or inside an index folder,
        or that are both the rows and the hits.  Call before any work."""
        inputs, folders = list(inputs), list(folders)
        check_output(self.path, resume=self.resume, force=self.force, inputs=inputs, others=[self.hits],
                     folders=folders)
        if self.hits is not None:
            check_output(self.hits, resume=self.resume, force=self.force, inputs=inputs, folders=folders,
                         option="--hits")

    @property
    def previous(self) -> list[dict]:
        """Rows already in the output (resume only; read once)."""
        if self._previous is None:
            self._previous = completed_ids(self.path, self.fmt) if (self.path and self.resume) else []
        return self._previous

    def done(self) -> set[str]:
        """Query ids already in the output, to skip (empty unless resuming)."""
        return {row["query_id"] for row in self.previous}

    def start(self, info: dict[str, Any], identity: dict[str, Any] | None = None) -> None:
        """Open the writers.  Resuming, first refuse a file written by a run of another ``identity`` and drop
        hits of queries without a row.  Files are created with their first row, not here."""
        previous = self.previous
        if self.resume:
            check_same_run(self.path, identity or {})
            if self.hits is not None:
                prune_hits(self.hits, self.hits_fmt, {row["query_id"] for row in previous})
        self.writer = RowWriter(self.path, self.fmt, self.columns, info, previous=previous, identity=identity,
                                subject=self.subject, wide=self.wide)
        self.hit_writer = RowWriter(self.hits, self.hits_fmt, self.hit_columns, append=self.resume) \
            if self.hits is not None else None

    def write(self, results: Iterable[Any], console: Any = None, *, count: str = "status") -> dict[str, int]:
        """Stream results to the writers; the count of rows per value of the ``count`` column.

        A result is a row (dict) or has ``row`` and ``hits`` (:class:`~clibd_cli.match.MatchResult`).  A
        query's hits are flushed before its row: a row on disk means its hits are too (--resume drops hits
        of queries without a row).  The writers are closed even on an error or interruption, so every
        finished row stays on disk; a run that fails before its first row leaves no file (a header alone would
        make its rerun stop on "already exists").  ``console``: where a ``table`` is rendered.
        """
        if self.writer is None:
            self.start({})
        writer, hit_writer = self.writer, self.hit_writer
        counts: dict[str, int] = {}
        failed = True
        try:
            for result in results:
                row = result if isinstance(result, dict) else result.row
                if hit_writer is not None and not isinstance(result, dict):
                    for hit in result.hits:
                        hit_writer.write(hit, flush=False)
                    hit_writer.flush()
                if isinstance(result, dict):
                    writer.write(row)
                else:  # a barcode's sequence and marker, for Darwin Core (absent from photo results)
                    writer.write(row, sequence=getattr(result, "sequence", ""), marker=getattr(result, "marker", ""))
                counts[row[count]] = counts.get(row[count], 0) + 1
            failed = False
        finally:  # failed (an error or an interruption): rows written stay; no file is created for none
            try:
                writer.close(console, failed=failed)
            finally:
                if hit_writer is not None:
                    hit_writer.close(failed=failed)
        return counts
