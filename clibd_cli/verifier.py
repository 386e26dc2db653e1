"""Alignment verification of many queries at once, off the thread that searches the next batch.

:func:`clibd_cli.align.verify` is many small NumPy steps and Opal alignments per query.  In threads they
contend for Python's interpreter lock, so where the platform forks (Linux) :class:`Verifier` runs them in
processes that inherit the loaded index; elsewhere in threads.  `clibd match` also makes its calls there
(:meth:`Verifier.map`): ranking the verified hits, voting, and the rivals' searches and alignments of the calls
a lead decides took 45 % of the proposing process's time, which on 2 cores was what the run waited for.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import numpy as np

from clibd_cli.align import Alignment, verify
from clibd_cli.errors import ClibdError
from clibd_cli.index import ReferenceIndex

_FORK = sys.platform.startswith("linux")  # forked processes inherit the loaded index (elsewhere: threads)
FORK_CHUNK = 16  # queries sent to a verification process at a time
# Each live Verifier's index and context, which its forked processes inherit.
_forked: dict[int, tuple[ReferenceIndex, object]] = {}
Work = Callable[..., list]  # what a Verifier runs: work(index, context, chunk of items, *args) -> a result per item
_forking = threading.RLock()  # (re-entered when a pool fails to start: Verifier._close)


def verify_vectors(index: ReferenceIndex, sequence: str, vectors: np.ndarray, aligned: int) -> list[Alignment | None]:
    """:func:`clibd_cli.align.verify` of ``sequence`` against distinct reference vectors of ``index``, at most
    ``aligned`` of them in full: their barcodes' base codes are the index's own, encoded once."""
    return verify(sequence, None, full=aligned, codes=index.input_codes(vectors))


def _verify_chunk(index: ReferenceIndex, context: object, chunk: Sequence[tuple[str, np.ndarray]], aligned: int,
                  ) -> list[list[Alignment | None]]:
    """:func:`verify_vectors` of each (query sequence, candidate vectors) of ``chunk``."""
    return [verify_vectors(index, sequence, vectors, aligned) for sequence, vectors in chunk]


def _work_forked(work: Work, chunk: Sequence, args: tuple, key: int) -> list:
    """``work`` in a forked process, with the index and context it inherited."""
    index, context = _forked[key]
    return work(index, context, chunk, *args)


def _worker_signals() -> None:
    """A verification process leaves Ctrl-C (sent to the whole process group) and the clean stop on SIGTERM to the
    parent, and dies at once on SIGTERM itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_worker(parent: int) -> None:
    """:func:`_worker_signals`; killed with its parent (``kill -9`` of `clibd match` must not leave processes
    waiting for work forever, holding the terminal's pipes); and glibc told to keep freed memory: each query's
    few hundred kB of NumPy temporaries were otherwise handed back to the kernel and faulted in again (a fifth of
    a run's CPU time was the kernel's; keeping them, a run is 5 % faster)."""
    _worker_signals()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


@contextmanager
def _forking_signals() -> Iterator[None]:
    """Processes forked here start with :func:`_worker_signals`' handlers, not the parent's: a SIGTERM that reaches
    a worker before it ran its initializer would otherwise raise in it and leave it waiting for work forever."""
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
    """Aligns proposals to their candidates (and, for `clibd match`, calls them: :meth:`map`) in the background, so
    that the next batch is proposed meanwhile.

    Verification is many small NumPy steps and Opal alignments per query.  In threads they contend for the
    GIL (two threads verified 1.4× as many queries per second as one), so where the platform forks (Linux)
    it runs in ``threads`` processes (default: one per core) instead, which inherit the loaded index
    copy-on-write (its base codes are read, never written; :func:`gc.freeze` keeps the collector from
    touching the rest) and get only each job's items (query sequences and candidate numbers; for calls, the
    proposals): 1.8× on 2 cores.  Elsewhere threads; with one thread, in line.
    """

    def __init__(self, index: ReferenceIndex, threads: int | None = None, context: object = None) -> None:
        """``context``: what every job of :meth:`map` gets besides its items (inherited by the processes, never
        pickled: it may hold the index)."""
        self.index, self.context = index, context
        workers = threads or os.cpu_count() or 1
        self._processes: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None
        if index.size:  # the shared lookup tables are built on first use: before workers read them
            if not index.look_up_inputs:  # (else each process reads the few barcodes it needs)
                index.input_codes([0])
            index.members(0)
            index.taxa(0)
        if workers > 1 and _FORK and index.size:
            with _forking, _forking_signals():
                _forked[id(self)] = index, context
                gc.freeze()
                try:
                    self._processes = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"),
                                                          initializer=_start_worker, initargs=(os.getpid(),))
                    self._processes.submit(int).result()  # the processes are forked now, with these signals
                except BaseException:
                    self._close()
                    raise
                finally:
                    gc.unfreeze()
        elif workers > 1:
            self._threads = ThreadPoolExecutor(workers)

    def submit(self, jobs: Sequence[tuple[str, np.ndarray]], aligned: int,
               ) -> Callable[[], list[list[Alignment | None]]]:
        """Start aligning each (query sequence, candidate vectors), at most ``aligned`` candidates each in full
        (:func:`clibd_cli.align.verify`); returns what waits for the alignments."""
        return self.map(_verify_chunk, jobs, aligned)

    def map(self, work: Work, items: Sequence, *args: object) -> Callable[[], list]:
        """Start ``work(index, context, chunk, *args)`` over chunks of ``items`` (``work`` a module-level function:
        processes get it, the chunk and ``args`` pickled); returns what waits for the results, one per item, in
        order.  In line (one thread) the work is done when waited for, over the same chunks: what ``work`` does
        with a chunk at once (a vote in one matrix) is done alike whatever the threads."""
        chunks = [items[i : i + FORK_CHUNK] for i in range(0, len(items), FORK_CHUNK)]
        if self._processes is not None:
            futures = [self._processes.submit(_work_forked, work, chunk, args, id(self)) for chunk in chunks]
            return lambda: [found for f in futures for found in _result(f)]
        if self._threads is not None:
            futures = [self._threads.submit(work, self.index, self.context, chunk, *args) for chunk in chunks]
            return lambda: [found for f in futures for found in f.result()]
        return lambda: [found for chunk in chunks for found in work(self.index, self.context, chunk, *args)]

    def _close(self) -> None:
        if self._processes is not None:  # the chunks being aligned finish (~0.1 s); waited for by the main thread
            # only: a run closed by the garbage collector may be closed in one of the pool's own threads
            self._processes.shutdown(wait=threading.current_thread() is threading.main_thread(),
                                     cancel_futures=True)
        with _forking:
            _forked.pop(id(self), None)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        if self._threads is not None:  # (not waiting: this may run in one of its threads)
            self._threads.shutdown(wait=False, cancel_futures=True)


def _result(future: Future) -> list[list[Alignment | None]]:
    """A chunk's alignments; a verification process that died (killed, or out of memory) is one clear error."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise ClibdError("a verification process ended unexpectedly (killed, or out of memory?). Rows written so "
                         "far are kept: run again with --resume, with fewer --threads to use less memory.") from None
