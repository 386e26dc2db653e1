"""The one training loop of clibd, driven by a :class:`Task` (contrastive CLIBD or DNA pretraining).

Both stages need exactly the same machinery, and each copy of it used to drift: DDP with gradient
accumulation (``no_sync`` between optimizer steps; for a contrastive task, feature caching that makes
the K micro-batches one contrastive batch, :mod:`clibd_training.accumulation`), bf16 autocast, the one-cycle AdamW of
:mod:`clibd_training.optim`, a DistributedSampler reseeded every epoch (``set_epoch``, which the official
CLIBD code forgets), metric records, progress on rank 0 (:mod:`clibd_training.progress`), and
checkpoints from which ``--resume`` continues exactly.  A task says only what differs: its model and
data, the loss of a batch, how it validates and what else its checkpoint holds.

Checkpoints (``RUN/checkpoints/last.pt`` and ``best.pt``) hold model, optimizer, scheduler, step, epoch,
position in the epoch, best score and every rank's RNG state, written atomically with a small JSON
beside them.  They hold only tensors and plain data, so they are read without the code-running part of
pickle (:mod:`clibd_training.checkpoint`).  On CPU (num_workers 0) a resumed run ends with bit-identical
parameters (tests/test_train.py).  Validation runs on every rank, never on rank 0 alone while the
others wait.
"""

from __future__ import annotations

import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from clibd_cli.errors import ClibdError
from clibd_training.accumulation import accumulate_large_batch
from clibd_training.config import TrainConfig
from clibd_training.distributed import Dist, gather_objects, use_bf16, wrap_ddp
from clibd_training.metrics_log import MetricLog
from clibd_training.models import compile_blocks
from clibd_training.optim import build_optimizer
from clibd_training.progress import TrainingProgress
from clibd_training.rng import rng_state, set_rng_state

CHECKPOINTS = "checkpoints"


class Task(ABC):
    """What one kind of training adds to the engine; the loop, checkpoints and logs are the engine's.

    A task is built on every rank before the engine (so model initialisation draws from the freshly
    seeded RNG in the same order on every run) and puts its model on ``env.device`` itself.
    """

    #: The bare model (not the DDP wrapper): its parameters are optimised and its state_dict saved.
    model: nn.Module
    #: The training examples; the engine shards them with a DistributedSampler.
    train_set: Dataset
    #: What ``train_set`` holds, for the "too few" error ("training records", "barcodes").
    records: str = "training records"
    #: Extra fields at the front of every metric record (e.g. ``{"stage": "dna-pretrain"}``).
    tags: ClassVar[dict[str, str]] = {}
    #: The validation metric that decides which checkpoint is ``best.pt``, and its direction.
    score: str
    higher_is_better: bool = True
    #: True when a sample's loss depends on the other samples of its batch (a contrastive loss).  Then
    #: ``grad_accum`` > 1 caches features and scores every micro-batch against all of them
    #: (:mod:`clibd_training.accumulation`; the task implements its ``CrossSampleTask`` methods);
    #: otherwise summing the micro-batches' gradients is already the large batch's gradient.
    couples_samples: ClassVar[bool] = False

    @abstractmethod
    def loader(self, sampler: Sampler) -> DataLoader:
        """Training batches of ``cfg.batch_size`` (last incomplete one dropped) in ``sampler``'s order."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one batch and its named parts (logged as ``loss_<name>``), under autocast.

        ``model`` is the DDP wrapper: call it, not :attr:`model`, so gradients are synchronised.
        """

    def after_step(self) -> None:
        """Called after every optimizer step, before anything is logged (e.g. to clamp a parameter)."""
        return None

    def log_fields(self) -> dict[str, float]:
        """Values for a training record read after the optimizer step (e.g. the learned logit scale)."""
        return {}

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Validation metrics, computed on every rank; ``{}`` when there is nothing to validate on."""

    def checkpoint(self) -> dict[str, Any]:
        """What a checkpoint holds beyond the engine's state (plain data only)."""
        return {}

    def finish(self, save: Callable[[str], None]) -> None:
        """Called on every rank after the last step; ``save(name)`` writes a checkpoint (collective)."""
        return None


class SkipFirst(Sampler):
    """A sampler that drops its first `skip` indices once (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a truncated checkpoint.

    A small JSON beside it (step, epoch, world size) lets `--resume` check the launch before any
    worker starts, without reading a multi-GB checkpoint.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    summary = {k: state[k] for k in ("step", "epoch", "world_size") if k in state}
    path.with_suffix(".json").write_text(json.dumps(summary) + "\n")


class Engine:
    """Trains ``task`` on this rank: the loop, validation after each epoch, checkpoints, resume."""

    def __init__(self, task: Task, cfg: TrainConfig, output: Path, env: Dist) -> None:
        self.task, self.cfg, self.output, self.env = task, cfg, Path(output), env
        if cfg.compile:
            compile_blocks(task.model)
        self.ddp = wrap_ddp(task.model, env)
        self.sampler = DistributedSampler(task.train_set, num_replicas=env.world, rank=env.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        per_epoch = len(self.sampler) // cfg.batch_size // cfg.grad_accum
        if per_epoch == 0:
            raise ClibdError(f"{cfg.data.path}: {len(task.train_set)} {task.records} are too few for batch size "
                             f"{cfg.batch_size} × {env.world} processes × {cfg.grad_accum} accumulation steps.")
        self.steps_per_epoch = per_epoch
        self.total_steps = per_epoch * cfg.epochs
        self.optimizer, self.scheduler = build_optimizer(cfg, task.model, self.total_steps, env.world)
        self.bf16 = use_bf16(cfg, env)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best = -math.inf if task.higher_is_better else math.inf
        self._pending_rng: dict | None = None
        self.log = MetricLog(self.output, enabled=env.main)

    # ------------------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, trust_checkpoint: bool = False) -> None:
        """Train until ``cfg.epochs`` (or ``cfg.max_steps``), continuing ``last.pt`` when resuming."""
        cfg, env = self.cfg, self.env
        if resume:
            self.load(self.output / CHECKPOINTS / "last.pt", trust=trust_checkpoint)
        last_step = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        progress = TrainingProgress(env.main, stage=cfg.stage, epochs=cfg.epochs,
                                    steps_per_epoch=self.steps_per_epoch, last_step=last_step,
                                    samples_per_step=cfg.batch_size * cfg.grad_accum * env.world, processes=env.world)
        progress.start(self.step, self.epoch)
        try:
            self._loop(progress)
        finally:
            progress.close()  # a live bar left up would garble the traceback or the next prompt
        self.task.finish(self.save)

    def _loop(self, progress: TrainingProgress) -> None:
        """Epochs and steps until ``cfg.epochs`` or ``cfg.max_steps``; validation and checkpoints after each epoch."""
        cfg, env, task = self.cfg, self.env, self.task
        accum = cfg.grad_accum
        large_batch = accum > 1 and task.couples_samples
        stop = False
        while self.epoch < cfg.epochs and not stop:
            self.sampler.set_epoch(self.epoch)
            skip = self.batch_in_epoch * cfg.batch_size * accum  # batches this epoch already trained on
            micro = 0
            started = time.perf_counter()
            batches = iter(task.loader(SkipFirst(self.sampler, skip)))  # draws a base seed: restore RNG after it
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            pending: list[Any] = []
            for batch in batches:
                micro += 1
                if large_batch:  # one contrastive batch of all `accum` micro-batches
                    pending.append(batch)
                    if len(pending) < accum:
                        continue
                    loss, parts = accumulate_large_batch(task, self.ddp, pending, self._autocast)
                    pending = []
                else:
                    sync = micro % accum == 0
                    context = self.ddp.no_sync() if not sync else nullcontext()
                    with context, self._autocast():
                        loss, parts = task.loss(self.ddp, batch)
                        (loss / accum).backward()
                    if not sync:
                        continue
                clipped = {}
                if cfg.optim.clip_grad_norm is not None:  # grads are all-reduced here: every rank clips alike
                    norm = torch.nn.utils.clip_grad_norm_(self.ddp.parameters(), cfg.optim.clip_grad_norm)
                    clipped = {"grad_norm": norm.item()}
                self.optimizer.step()
                task.after_step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.batch_in_epoch += 1
                if self.step % cfg.log_every == 0 or self.step == 1:
                    elapsed = time.perf_counter() - started
                    self.log.write({"kind": "train", **task.tags, "step": self.step, "epoch": self.epoch,
                                    "loss": loss.item(), **{f"loss_{k}": v.item() for k, v in parts.items()},
                                    "lr": self.scheduler.get_last_lr()[0], **task.log_fields(), **clipped,
                                    "samples_per_s": micro * cfg.batch_size * env.world / max(elapsed, 1e-9)})
                progress.step(self.step, self.epoch, loss)
                if self.step % cfg.checkpoint_every == 0:
                    self.save("last.pt")
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    stop = True
                    break
            if stop and self.batch_in_epoch < self.steps_per_epoch:
                self.save("last.pt")  # stopped mid-epoch: no validation, --resume continues from here
                progress.stopped(self.step)
                break
            self.epoch += 1
            self.batch_in_epoch = 0
            progress.validating()
            metrics = self.validate()
            progress.epoch_done(self.step, self.epoch, metrics, self.task.score)
            self.save("last.pt")

    def _autocast(self) -> torch.autocast:
        """The training forward's precision context: bf16 autocast when the run uses it, else a no-op."""
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def validate(self) -> dict[str, float]:
        """Log the task's validation metrics and keep ``best.pt`` when its score improved; returns them."""
        metrics = self.task.validate()
        if not metrics:
            return metrics
        self.log.write({"kind": "val", **self.task.tags, "step": self.step, "epoch": self.epoch, **metrics})
        score = metrics.get(self.task.score)
        if score is None:
            return metrics
        better = score > self.best if self.task.higher_is_better else score < self.best  # NaN never is
        if better:
            self.best = score
            self.save("best.pt")
        return metrics

    # ------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs, every rank's RNG included (a collective: all ranks call it)."""
        rng = gather_objects(rng_state(), self.env)
        return {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "best": self.best, "rng": rng, "world_size": self.env.world,
                "config": self.cfg.to_dict(), **self.task.checkpoint()}

    def save(self, name: str) -> None:
        """Write ``RUN/checkpoints/<name>`` from rank 0; every rank takes part and waits for it."""
        state = self.state()
        if self.env.main:
            save_atomic(state, self.output / CHECKPOINTS / name)
        dist.barrier()

    def load(self, path: Path, trust: bool = False) -> None:
        """Continue from a checkpoint, read as plain data unless the user trusts it (training/checkpoint.py)."""
        from clibd_training.checkpoint import load_state

        state = load_state(path, trust=trust)
        if state["world_size"] != self.env.world:
            raise ClibdError(f"{path}: saved by {state['world_size']} processes; resume with the same "
                             f"--nproc-per-node × --nnodes to continue exactly.")
        self.task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best = state["batch_in_epoch"], state["best"]
        self._pending_rng = state["rng"][self.env.rank]  # restored once the epoch's loader exists
