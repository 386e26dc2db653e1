"""What the library's workflows share: how input tables are read, notes for the user, progress.

House rule: the library returns values and never prints; the `clibd` app parses options and prints.  A
workflow with something to tell its user (records left out, thresholds not calibrated, a lock to wait
for) adds a :class:`Note` to its :class:`Notes`.  The notes come back with the result, for a notebook to
read, and a listener given by the caller hears each one as it happens: the app prints it there, so a
warning still reaches the terminal before an error that follows it.  Long steps report progress through
callbacks (:data:`Advance`, :class:`Progress`), which the app turns into progress bars.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from clibd_cli.sequences import DEFAULT_MARKER, DEFAULT_MIN_LENGTH

if TYPE_CHECKING:
    from clibd_cli.sequences import ReadResult

Advance = Callable[[int], None]
"""Told how many more items are done (queries matched, records embedded)."""


class Progress(Protocol):
    """Opens a progress display for a step: ``with progress("embedding dna", 1200) as advance: advance(64)``."""

    def __call__(self, description: str, total: int | None) -> AbstractContextManager[Advance]: ...


@contextlib.contextmanager
def no_progress(description: str, total: int | None) -> Iterator[Advance]:
    """A :class:`Progress` that shows nothing (the default for library callers)."""
    yield lambda n: None


@dataclass(frozen=True)
class Note:
    """Something a workflow tells its user.  ``level``: ``warning`` (input left out, thresholds not
    calibrated), ``note`` (a choice made for the user) or ``info`` (plain news, such as waiting for a lock)."""

    level: str
    text: str

    def __str__(self) -> str:
        return self.text if self.level == "info" else f"{self.level}: {self.text}"


Listener = Callable[[Note], None]


class Notes(list[Note]):
    """The notes of one run, in order; each is also passed to ``listener`` as it is added."""

    def __init__(self, listener: Listener | None = None) -> None:
        super().__init__()
        self.listener = listener

    def add(self, level: str, text: str) -> Note:
        note = Note(level, text)
        self.append(note)
        if self.listener is not None:
            self.listener(note)
        return note

    def warning(self, text: str) -> Note:
        return self.add("warning", text)

    def note(self, text: str) -> Note:
        return self.add("note", text)

    def info(self, text: str) -> Note:
        return self.add("info", text)


def as_notes(notes: Notes | Listener | None) -> Notes:
    """A caller's :class:`Notes`, or new ones passing each note to a listener (or to nobody)."""
    if isinstance(notes, Notes):
        return notes
    return Notes(notes)


@dataclass(frozen=True)
class ReadOptions:
    """How barcode and photo tables are read.

    The ``*_column`` options name columns explicitly; None finds each with the column map of
    :mod:`clibd_cli.schema` (the same for barcodes, photos and split tables).  Sequences shorter than
    ``min_length`` (bp) are flagged ``short``; ``marker`` is kept from packages that mix markers (None or
    ``"all"`` keeps every row).
    """

    id_column: str | None = None
    sequence_column: str | None = None
    image_column: str | None = None
    min_length: int = DEFAULT_MIN_LENGTH
    marker: str | None = DEFAULT_MARKER


def read_records(paths: Iterable[Path | str], reading: ReadOptions = ReadOptions()) -> ReadResult:
    """Every barcode record of ``paths``, read and checked as ``reading`` says."""
    from clibd_cli.sequences import QCConfig, read_sequences

    return read_sequences([Path(p) for p in paths], id_column=reading.id_column,
                          sequence_column=reading.sequence_column, qc=QCConfig(min_length=reading.min_length),
                          marker=reading.marker)


def paths_of(given: str | Path | Iterable[str | Path]) -> list[Path]:
    """One path or several, as a list of paths (a Python caller may pass either)."""
    if isinstance(given, str | Path):
        return [Path(given)]
    return [Path(p) for p in given]
