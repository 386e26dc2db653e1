"""Alignment verification of many queries at once, off the thread that searches the next batch.

:func:`clibd_cli.align.verify` is many small NumPy steps and Opal alignments per query.  In threads they
contend for Python's interpreter lock, so where the platform forks (Linux) :class:`Verifier` runs them in
processes that inherit the loaded index; elsewhere in threads.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from clibd_cli.align import Alignment, verify
from clibd_cli.index import ReferenceIndex

_FORK = sys.platform.startswith("linux")  # forked processes inherit the loaded index (elsewhere: threads)
FORK_CHUNK = 16  # queries sent to a verification process at a time
_forked_index: ReferenceIndex | None = None  # the index a forked verification process verifies against
_forking = threading.Lock()


def _verify_forked(chunk: list[tuple[str, np.ndarray]], aligned: int) -> list[list[Alignment | None]]:
    """Verification in a forked process, against the index it inherited."""
    assert _forked_index is not None
    return [verify(sequence, None, full=aligned, codes=_forked_index.input_codes(vectors))
            for sequence, vectors in chunk]


def _worker_signals() -> None:
    """A verification process leaves Ctrl-C (sent to the whole process group) and the clean stop on SIGTERM to the
    parent, and dies at once when the parent's pool terminates it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_worker() -> None:
    """:func:`_worker_signals`, and glibc told to keep freed memory: each query's few hundred kB of NumPy
    temporaries were otherwise handed back to the kernel and faulted in again (a fifth of a run's CPU time was
    the kernel's; keeping them, a run is 5 % faster).  A worker that died would be replaced by a fork without
    the index: it fails, and so does the run, as it would have when the worker died."""
    _worker_signals()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its own allocator's defaults


@contextmanager
def _forking_signals() -> Iterator[None]:
    """Processes forked here start with :func:`_worker_signals`' handlers, not the parent's: a SIGTERM that ends a
    pool before a worker ran its initializer would otherwise raise in it and leave it waiting for work forever."""
    if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's to set
        yield
        return
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _worker_signals()
    try:
        yield
    finally:
        for number, handler in zip((signal.SIGINT, signal.SIGTERM), saved, strict=True):
            if handler is not None:  # None: set outside Python, and not ours to restore
                signal.signal(number, handler)


class Verifier:
    """Aligns proposals to their candidates in the background, so that the next batch is proposed meanwhile.

    Verification is many small NumPy steps and Opal alignments per query.  In threads they contend for the
    GIL (two threads verified 1.4× as many queries per second as one), so where the platform forks (Linux)
    it runs in ``threads`` processes (default: one per core) instead, which inherit the loaded index
    copy-on-write (its base codes are read, never written; :func:`gc.freeze` keeps the collector from
    touching the rest) and get only query sequences and candidate numbers: 1.8× on 2 cores.  Elsewhere
    threads; with one thread, in line.
    """

    def __init__(self, index: ReferenceIndex, aligned: int, threads: int | None = None) -> None:
        self.index, self.aligned = index, aligned
        workers = threads or os.cpu_count() or 1
        self._processes: Any = None
        self._threads: ThreadPoolExecutor | None = None
        if index.size:  # the shared lookup tables are built on first use: before workers read them
            index.input_codes([0])
            index.members(0)
            index.taxa(0)
        if workers > 1 and _FORK and index.size:
            global _forked_index
            with _forking, _forking_signals():
                _forked_index = index
                gc.freeze()
                try:
                    self._processes = multiprocessing.get_context("fork").Pool(workers, _start_worker)
                finally:
                    gc.unfreeze()
                    _forked_index = None
        elif workers > 1:
            self._threads = ThreadPoolExecutor(workers)

    def submit(self, jobs: Sequence[tuple[str, np.ndarray]]) -> Callable[[], list[list[Alignment | None]]]:
        """Start aligning each (query sequence, candidate vectors); returns what waits for the alignments."""
        if self._processes is not None and jobs:
            chunks = [jobs[i : i + FORK_CHUNK] for i in range(0, len(jobs), FORK_CHUNK)]
            pending = self._processes.map_async(partial(_verify_forked, aligned=self.aligned), chunks)
            return lambda: [found for chunk in pending.get() for found in chunk]
        if self._threads is not None:
            futures = [self._threads.submit(self._verify, sequence, vectors) for sequence, vectors in jobs]
            return lambda: [f.result() for f in futures]
        return lambda: [self._verify(sequence, vectors) for sequence, vectors in jobs]

    def _verify(self, sequence: str, vectors: np.ndarray) -> list[Alignment | None]:
        return verify(sequence, None, full=self.aligned, codes=self.index.input_codes(vectors))

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._processes is not None:
            # terminate() also waits for the processes; join() would wait for the pool's own threads, and may be
            # called from one of them (a run whose consumer failed is closed whenever it is garbage-collected)
            self._processes.terminate()
        if self._threads is not None:  # (not waiting: this may run in one of its threads too)
            self._threads.shutdown(wait=False, cancel_futures=True)
