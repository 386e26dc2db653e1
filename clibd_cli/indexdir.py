"""How an index folder changes: one writer at a time, a new generation, one atomic switch.

An index folder holds ``index.json`` and generation folders (``gen-000007/records.sqlite``,
``gen-000007/dna.hnsw``).  ``index.json`` names the generation in use, so replacing that one file with
``os.replace`` is the only step that changes what readers see: a reader opens the old generation or the
new one, never a mixture, and a writer killed at any moment leaves the previous index intact.  (The
previous design renamed whole folders twice; a kill between the renames left no index at all.)

Writers (``build-index``, ``--append``, ``calibrate``) hold an exclusive lock on ``.clibd.lock`` in the
folder for their whole read-modify-write, with :mod:`filelock` (Windows, macOS, Linux): two concurrent
appends both land instead of one silently overwriting the other.  A second writer waits and says so.

Files are fsynced before the switch and the folder after it, so a power cut after "wrote" cannot leave
a manifest that names unwritten data.  Every write also removes what earlier, killed writers left behind
(unfinished ``.gen-*.tmp`` folders, generations no manifest names); files clibd did not write are never
touched.  The generation before the current one is kept, so a reader that opened ``index.json`` just
before a switch still finds its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clibd_cli.checksums import sealed

LOCK = ".clibd.lock"
MANIFEST = "index.json"
_GENERATION = re.compile(r"^gen-(\d{6,})$")
_UNFINISHED = re.compile(r"^\.gen-\d{6,}\.tmp(-\d+)?$")
_locks: dict[str, Any] = {}
_locks_guard = threading.Lock()


def ignorable(name: str) -> bool:
    """Names that do not make a folder "occupied" (the lock a failed first build may leave)."""
    return name == LOCK


@contextlib.contextmanager
def writing(directory: Path, notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the folder's write lock (re-entrant within this process); wait, saying so, if another holds it."""
    from filelock import FileLock, Timeout

    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    with _locks_guard:
        lock = _locks.setdefault(key, FileLock(str(directory / LOCK), thread_local=False))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if notify is not None:
            notify(f"{directory}: another clibd is writing this index; waiting for it to finish "
                   f"(lock {directory / LOCK})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
        if created and lock.lock_counter == 0 and [p.name for p in directory.iterdir()] == [LOCK]:
            with contextlib.suppress(OSError):  # a first build that failed leaves no folder behind
                (directory / LOCK).unlink()
                directory.rmdir()


def generations(directory: Path) -> list[str]:
    """Generation folders present, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in Path(directory).iterdir()
             if p.is_dir() and (m := _GENERATION.match(p.name))]
    return [name for _, name in sorted(found)]


@contextlib.contextmanager
def new_generation(directory: Path) -> Iterator[tuple[str, Path]]:
    """Yield (generation name, empty folder to write it into); on success the folder is fsynced and renamed
    to the name.

    The caller holds :func:`writing`.  The generation is not in use until :func:`switch` names it.
    """
    directory = Path(directory)
    existing = generations(directory)
    number = int(_GENERATION.match(existing[-1]).group(1)) + 1 if existing else 1
    name = f"gen-{number:06d}"
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield name, tmp
        for path in tmp.iterdir():
            _fsync_file(path)
        _fsync_dir(tmp)
        os.replace(tmp, directory / name)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def switch(directory: Path, manifest: dict) -> None:
    """Make ``manifest`` the folder's ``index.json`` in one atomic replace (fsynced before and after), sealed
    with the checksum of its own content (:mod:`clibd_cli.checksums`)."""
    directory = Path(directory)
    tmp = directory / f".{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(sealed(manifest), indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)
    _fsync_dir(directory)


def clean(directory: Path, keep: set[str], legacy: set[str] = frozenset()) -> None:
    """Remove what clibd wrote and no longer needs: generations not in ``keep``, unfinished generations and
    manifests of killed writers, and ``legacy`` files (the flat layout of format-3 indexes).  The caller
    holds :func:`writing`, so nothing it removes is being written.  Foreign files stay.
    """
    directory = Path(directory)
    for path in directory.iterdir():
        name = path.name
        if (_GENERATION.match(name) and name not in keep) or _UNFINISHED.match(name):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(f".{MANIFEST}.tmp-") or (name in legacy and path.is_file()):
            with contextlib.suppress(OSError):
                path.unlink()
    # the old design's siblings: .NAME.tmp-XXXX (killed builds) and .NAME.old-PID (killed switches)
    for path in directory.parent.glob(f".{directory.name}.*"):
        if re.match(rf"^\.{re.escape(directory.name)}\.(tmp-\w+|old-\d+)$", path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename); Windows cannot open folders and persists renames itself."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
