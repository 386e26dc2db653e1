"""One training worker: `clibd train` starts one per device through torchrun (`python -m clibd_training.train`).

A worker joins the process group, seeds its RNGs (seed + rank), builds the task its config's stage
names and runs the engine on it.  The parts live in their own modules:

* :mod:`clibd_training.launch` – the `clibd train` side: config, resume checks, the torchrun command;
* :mod:`clibd_training.engine` – the training loop, validation schedule, checkpoints and resume;
* :mod:`clibd_training.contrastive` / :mod:`clibd_training.pretrain` – the two tasks it trains;
* :mod:`clibd_training.distributed`, :mod:`clibd_training.rng`, :mod:`clibd_training.optim`,
  :mod:`clibd_training.metrics_log` – process group, random streams, optimiser, metric records.

The names other code imported from here before that split are re-exported below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clibd_training.config import TrainConfig, load_config
from clibd_training.contrastive import PAIRS, ContrastiveTask
from clibd_training.distributed import Dist, setup_distributed, teardown_distributed, use_bf16
from clibd_training.engine import CHECKPOINTS, Engine, SkipFirst, Task, save_atomic
from clibd_training.launch import launch
from clibd_training.metrics_log import MetricLog
from clibd_training.optim import build_optimizer
from clibd_training.pretrain import DNAPretrainTask
from clibd_training.rng import rng_state, seed_everything, set_rng_state

__all__ = [
    "CHECKPOINTS", "PAIRS", "Dist", "MetricLog", "SkipFirst", "build_optimizer", "build_task", "launch", "main",
    "rng_state", "save_atomic", "seed_everything", "set_rng_state", "setup_distributed", "use_bf16", "worker",
]

TASKS: dict[str, type[ContrastiveTask] | type[DNAPretrainTask]] = {
    "contrastive": ContrastiveTask,
    "dna-pretrain": DNAPretrainTask,
}


def build_task(cfg: TrainConfig, output: Path, env: Dist) -> Task:
    """The task of ``cfg.stage`` (config.STAGES), with its model on this rank's device."""
    return TASKS[cfg.stage](cfg, output, env)


def worker(cfg: TrainConfig, output: Path, resume: bool = False, trust_checkpoint: bool = False) -> None:
    """One training process: join the group, seed, build the task and train it with the engine."""
    env = setup_distributed()
    try:
        seed_everything(cfg.seed + env.rank)
        Engine(build_task(cfg, output, env), cfg, output, env).fit(resume, trust_checkpoint)
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> None:
    """Worker entry point (`python -m clibd_training.train`, started by torchrun; see launch.py)."""
    parser = argparse.ArgumentParser(description="CLIBD training worker (started by torchrun)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--trust-checkpoint", action="store_true")
    args = parser.parse_args(argv)
    worker(load_config(args.config), args.output, resume=args.resume, trust_checkpoint=args.trust_checkpoint)


if __name__ == "__main__":
    main()
