"""Which process this is, on which device, in which precision: a worker's torch.distributed plumbing.

torchrun starts one process per device and tells each its rank through environment variables; this
module turns those into a :class:`Dist` and a joined process group (NCCL on GPUs, gloo on CPUs).  A
worker started by hand, without torchrun, joins a group of one, so the same code path runs in tests
and on a laptop.  Kept apart from the engine so that tasks (validation, tokenizer training on rank 0)
can use the same few helpers without importing the training loop.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clibd_training.config import TrainConfig


@dataclass
class Dist:
    """This process's place in the run: global rank, number of processes, local device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0 alone writes files (checkpoints, metrics, the pretrained encoder)."""
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group torchrun prepared (or run alone when started without torchrun)."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def teardown_distributed() -> None:
    """Wait for every rank, then leave the group (a rank that left early would hang the others)."""
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wrap_ddp(model: nn.Module, env: Dist) -> DistributedDataParallel:
    """The model under DDP, which averages gradients across ranks during backward."""
    return DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)


def gather_objects(value: Any, env: Dist) -> list[Any]:
    """``value`` from every rank, in rank order, on every rank (a collective: all ranks must call it)."""
    gathered: list[Any] = [None] * env.world
    dist.all_gather_object(gathered, value)
    return gathered


def use_bf16(cfg: TrainConfig, env: Dist) -> bool:
    """bf16 autocast when asked, or by default on CUDA (fp32 on CPU, where bf16 is slow and rarely needed)."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")
