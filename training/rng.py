"""Seeding and saving every random stream a worker draws from, so `--resume` continues bit for bit.

Python's ``random``, NumPy's legacy global generator and torch (CPU and CUDA) each keep a state; a
checkpoint stores all of them per rank.  The states are stored as tensors and plain numbers, never
as NumPy arrays or tuples of objects, so a checkpoint opens with torch's restricted unpickler
(:mod:`clibd_training.checkpoint`) and cannot smuggle code in.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; each rank passes its own seed (config seed + rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states as tensors and numbers.

    Plain data only, so the checkpoint holding them opens with torch's restricted unpickler
    (:mod:`clibd_training.checkpoint`); a NumPy array inside would need the full, code-running one.
    """
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output (or the tuples of checkpoints written before it, --trust-checkpoint)."""
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"])
    random.setstate(python)
    if isinstance(numpy_state, dict):
        numpy_state = ("MT19937", numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
