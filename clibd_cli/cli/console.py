"""Where the commands print: rich consoles, progress bars on stderr, and the library's notes as lines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clibd_cli.workflow import Note


def stderr():
    """A console on standard error: notes, warnings, progress and summaries (stdout carries the results)."""
    from rich.console import Console

    return _unwrapped_off_terminal(Console(stderr=True, highlight=False))


def stdout(highlight: bool = True):
    """A console on standard output, for tables (results in the ``table`` format are not highlighted)."""
    from rich.console import Console

    return _unwrapped_off_terminal(Console(highlight=highlight))


def counted(n: int, one: str, many: str | None = None) -> str:
    """``1 record``, ``2 records``, ``1 genus``, ``3 genera``: a count and its noun, agreeing."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _unwrapped_off_terminal(console):
    """In a log or a pipe a line stays one line (rich would fold it at 80 columns, mid-phrase, so that a
    grep for ``species 0.974`` or ``2 no_match`` misses it); tables keep their width."""
    console.soft_wrap = not console.is_terminal
    return console


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (hidden when stderr is not a terminal); yields its ``advance(n)``.

    Also a :class:`clibd_cli.workflow.Progress`, for workflows with several steps; a step of unknown size
    (``total`` None: calibrating, building the search graph) shows its name and the time it has taken.
    Whether stderr is a terminal is rich's answer, so ``TTY_COMPATIBLE=1`` shows the bars in a pipe too.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Done(TextColumn):
        """Items done so far where the total is unknown (queries matched); nothing for a step that counts none."""

        def render(self, task):
            return Text(f"{task.completed:,.0f}" if task.completed else "")

    console = stderr()
    counts = (MofNCompleteColumn(), TimeRemainingColumn()) if total is not None else (Done(""), TimeElapsedColumn())
    progress = Progress(TextColumn("{task.description}"), BarColumn(), *counts, console=console, transient=True,
                        disable=not console.is_terminal)
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda n: progress.advance(task, n)


LOGGED_STEP_SECONDS = 5.0


@contextlib.contextmanager
def step_progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """:func:`progress_bar` on a terminal; in a log (stderr not a terminal), a line as each step of
    :data:`LOGGED_STEP_SECONDS` or more ends, so a build-index, calibrate or evaluate run of many minutes
    shows how far it got and what took the time: ``embedding dna (84,767): done in 41.2 s``.  Nothing as
    a step starts and nothing for quick steps: input refused while it is read still gets its one error
    line alone, and a small job's log stays as it was."""
    import time

    console = stderr()
    if console.is_terminal:
        with progress_bar(description, total) as advance:
            yield advance
        return
    start = time.perf_counter()
    yield lambda n: None
    seconds = time.perf_counter() - start
    if seconds >= LOGGED_STEP_SECONDS:
        console.print(f"{description}{f' ({total:,})' if total else ''}: done in {seconds:.1f} s")


def say(note: Note) -> None:
    """Print a library note on stderr: ``warning: …``/``note: …`` (the level in yellow), ``info`` as it is."""
    from rich.markup import escape

    if note.level == "info":
        stderr().print(escape(note.text))
    else:
        stderr().print(f"[yellow]{note.level}:[/yellow] {escape(note.text)}")


def wrote(what: str) -> None:
    """``wrote WHAT`` on stderr (``wrote`` in green); ``what`` may hold markup."""
    stderr().print(f"[green]wrote[/green] {what}")
