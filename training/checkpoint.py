"""Opening `clibd train` checkpoints without running code hidden in them.

A ``.pt`` file is a pickle, and a pickle can name any Python function to call while it is read: a
checkpoint handed over by someone else (or a ``RUN/checkpoints/last.pt`` swapped in a shared run
folder) would run its payload under `clibd export`, `clibd evaluate --model` or `clibd train
--resume`.  clibd therefore writes checkpoints that hold only tensors, numbers, strings, lists,
tuples and dicts (RNG states included, see :func:`clibd_training.train.rng_state`) and reads them with
PyTorch's restricted unpickler (``weights_only=True``), which refuses to import anything else.

A file that needs more (checkpoints written by clibd before this format, or by other code) is
refused with one line; ``--trust-checkpoint`` reads it with the full unpickler, for files whose
origin the user vouches for.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from clibd_cli.errors import InputError

TRUST_HINT = "If you trust where it comes from, pass --trust-checkpoint to load it anyway."


def load_state(path: str | Path, *, trust: bool = False, mmap: bool = False) -> Any:
    """The object saved in ``path``; with ``trust`` False only plain data can come out of it.

    ``mmap`` maps tensor storages instead of reading them, so checking a multi-GB checkpoint before
    torchrun starts its workers costs milliseconds (zip-format files only; others are read).
    """
    path = Path(path)
    try:
        return _load(path, trust=trust, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if trust:
            raise InputError(f"{path}: cannot be read as a PyTorch checkpoint ({_first_line(exc)}).") from exc
        raise _refusal(path, exc) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as a PyTorch checkpoint ({_first_line(exc)}).") from exc


def _load(path: Path, *, trust: bool, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # a legacy (non-zip) file cannot be mapped: read it instead
            return torch.load(path, map_location="cpu", weights_only=not trust)
        raise


def _refusal(path: Path, exc: pickle.UnpicklingError) -> InputError:
    """Tell a file that is no pickle at all from one that would import code when unpickled."""
    message = str(exc)
    if "Unsupported operand" in message:  # the restricted unpickler met bytes that are no pickle it knows
        return InputError(f"{path}: cannot be read as a PyTorch checkpoint (not a file written by torch.save).")
    found = re.search(r"GLOBAL ([\w.]+)", message)
    what = f"it would import {found.group(1)}" if found else "it holds Python objects other than tensors and data"
    return InputError(f"{path}: not a safe checkpoint ({what}, which can run code when opened; clibd train "
                      f"writes only tensors and plain data). {TRUST_HINT}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
