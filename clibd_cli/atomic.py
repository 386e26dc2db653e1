"""Manifest files and atomic folder writes: an interrupted export never leaves half a model bundle.

A folder is written into a temporary sibling that replaces the target in one rename (the old one, if
any, is moved aside first and removed after).  Indexes, which are also appended to and recalibrated in
place, use generation folders and a single manifest switch instead (:mod:`clibd_cli.indexdir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(directory: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``directory``; on success it becomes ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; indexes and bundles are shared like any folder
    try:
        yield tmp
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: Path, error: type[Exception], remedy: str) -> Any:
    """A JSON manifest, or ``error`` naming the file and ``remedy`` when it is missing or not JSON."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path.parent}: no {path.name}. {remedy}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}). {remedy}") from exc


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
