"""Run a function on several gloo processes on this machine and return what each rank computed.

The distributed tests (the contrastive loss, accumulation under DDP) each need the same harness, kept
here once so that what makes it dependable is kept once too:

* The rendezvous store is opened in the test process on 127.0.0.1 port 0 (the OS picks a free port)
  and stays open while the ranks run, so nothing can take the port between choosing and using it.
* gloo's own sockets use the loopback interface, whatever the host name resolves to.
* Every rank waits at a barrier before it leaves the group: a rank that tears down its connections
  while another still reads from them can make gloo abort the other process.
* Each rank's stderr goes to a file and Python's fault handler is on, so a rank killed by a signal
  (a C++ abort prints only to fd 2) is reported with what it printed and where Python was, in the
  error every dependent test shows, instead of a bare "terminated with signal SIGABRT".
* A rank that dies by a signal, with no Python exception, is a crash below the code under test (the
  collectives' transport); the whole run is then repeated once and the crash reported as a warning.
  A Python exception or a wrong result is never repeated.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

LOCALHOST = "127.0.0.1"
TIMEOUT = timedelta(seconds=60)  # a hang fails the test instead of blocking it


def run_ranks(fn: Callable[[int], Any], world: int, out_dir: Path) -> list[Any]:
    """``fn(rank)`` on ``world`` gloo processes; the values returned, by rank.

    ``fn`` must be a module-level function (the ranks are spawned, not forked) and issue the same
    collectives on every rank.  Files go to ``out_dir``: ``rank{r}.pt`` (the value) and ``rank{r}.log``.
    """
    for attempt in (1, 2):
        run_dir = out_dir / f"attempt{attempt}"
        run_dir.mkdir(parents=True)
        try:
            _spawn(fn, world, run_dir)
        except ProcessExitedException as exc:  # killed by a signal: a crash below the code under test
            report = f"{exc}\n{_logs(run_dir, world)}"
            if attempt == 2:
                raise RuntimeError(f"the gloo ranks crashed twice; the second time:\n{report}") from None
            warnings.warn(f"gloo ranks crashed, run repeated once:\n{report}", RuntimeWarning, stacklevel=2)
            continue
        except ProcessRaisedException as exc:
            raise RuntimeError(f"{exc}\n{_logs(run_dir, world)}") from None
        return [torch.load(run_dir / f"rank{r}.pt") for r in range(world)]
    raise AssertionError("unreachable")


def _spawn(fn: Callable[[int], Any], world: int, run_dir: Path) -> None:
    store = dist.TCPStore(LOCALHOST, 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    try:
        mp.spawn(_rank, args=(fn, world, store.port, str(run_dir)), nprocs=world, join=True)
    finally:
        del store


def _rank(rank: int, fn: Callable[[int], Any], world: int, store_port: int, run_dir: str) -> None:
    """One process: join the group, compute, wait for the others, save, leave."""
    log = open(Path(run_dir) / f"rank{rank}.log", "w")  # noqa: SIM115 (open until the process ends)
    os.dup2(log.fileno(), 2)
    faulthandler.enable(file=log)
    torch.set_num_threads(1)
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    if loopback is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    store = dist.TCPStore(LOCALHOST, store_port, is_master=False, timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        result = fn(rank)
        torch.save(result, Path(run_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _logs(run_dir: Path, world: int) -> str:
    """The end of what each rank printed to stderr."""
    parts = []
    for r in range(world):
        path = run_dir / f"rank{r}.log"
        text = path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"
        parts.append(f"--- rank {r} stderr ---\n{text.strip() or '(empty)'}")
    return "\n".join(parts)
