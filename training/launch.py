"""`clibd train`'s side of a run: resolve the config, check a resume, start the workers through torchrun.

This runs in the user's `clibd` process, never in a worker, so it refuses a bad config, an occupied
run folder or an unsafe checkpoint with one line before any worker starts.  Multi-GPU and multi-node
training is PyTorch's own: `torch.distributed.run` (torchrun) starts one process per device, each
running :data:`WORKER_MODULE` (:func:`clibd_training.train.main`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from clibd_cli.errors import ClibdError
from clibd_training.config import STAGES, load_config, save_config
from clibd_training.engine import CHECKPOINTS
from clibd_training.progress import progress_interval

WORKER_MODULE = "clibd_training.train"  # `python -m` entry point of every worker


def launch(config: str, *, output: Path, data: str | None = None, nproc_per_node: int = 1, nnodes: int = 1,
           node_rank: int = 0, rdzv_endpoint: str | None = None, resume: bool = False,
           overrides: list[str] | None = None, stage: str | None = None, trust_checkpoint: bool = False) -> Path:
    """Resolve the config, write `output/config.yaml`, and run the workers through torchrun.

    On --resume the checkpoint is opened here first (tensors mapped, not read), so a file that is not
    a safe checkpoint is refused with one line before any worker starts (``trust_checkpoint`` skips it).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    output = Path(output)
    progress_interval()  # a bad CLIBD_PROGRESS_SECONDS is one line here, not a traceback in every worker
    if resume:
        _check_resume(output, nproc_per_node * nnodes, overrides, trust_checkpoint)
    else:
        _start_run(config, output, data, overrides, stage)
    if nproc_per_node > 1:  # what torchrun sets itself, minus the multi-line warning it prints about it
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = torchrun_argv(output, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                         rdzv_endpoint=rdzv_endpoint, resume=resume, trust_checkpoint=trust_checkpoint)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        failed = ", ".join(str(rank) for rank in sorted(exc.failures))
        raise ClibdError(f"training failed in worker rank(s) {failed}; the worker's traceback is printed above. "
                         f"Fix the cause and rerun, or continue with --resume --output {output}.") from None
    return output


def torchrun_argv(output: Path, *, nproc_per_node: int = 1, nnodes: int = 1, node_rank: int = 0,
                  rdzv_endpoint: str | None = None, resume: bool = False, trust_checkpoint: bool = False) -> list[str]:
    """torchrun's arguments: standalone on one machine, c10d rendezvous across several."""
    argv = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ClibdError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node).")
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--node-rank={node_rank}"]
    else:
        argv += ["--standalone"]
    argv += ["-m", WORKER_MODULE, "--config", str(output / "config.yaml"), "--output", str(output)]
    if resume:
        argv.append("--resume")
    if trust_checkpoint:
        argv.append("--trust-checkpoint")
    return argv


def _start_run(config: str, output: Path, data: str | None, overrides: list[str] | None,
               stage: str | None) -> None:
    """A new run: the resolved config is written to `output/config.yaml`, which every worker reads."""
    cfg = load_config(config, overrides)
    if data is not None:
        cfg.data.path = str(Path(data).resolve())
    if stage is not None:
        if stage not in STAGES:
            raise ClibdError(f"--stage {stage}: use one of {', '.join(STAGES)}.")
        cfg.stage = stage
    if cfg.data.path is None:
        raise ClibdError("no training data: give --data PATH (a simulate folder, CLIBD HDF5 or manifest).")
    if (output / CHECKPOINTS / "last.pt").exists():
        raise ClibdError(f"{output}: holds a run already; use --resume to continue it or another --output.")
    output.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output / "config.yaml")


def _check_resume(output: Path, world: int, overrides: list[str] | None, trust_checkpoint: bool) -> None:
    """A resume continues exactly only with a safe checkpoint and as many processes as saved it."""
    resolved = output / "config.yaml"
    if not (output / CHECKPOINTS / "last.pt").exists():
        raise ClibdError(f"{output}: no checkpoints/last.pt to resume from.")
    if not trust_checkpoint:
        from clibd_training.checkpoint import load_state

        load_state(output / CHECKPOINTS / "last.pt", mmap=True)
    summary_file = output / CHECKPOINTS / "last.json"
    saved_world = json.loads(summary_file.read_text())["world_size"] if summary_file.exists() else None
    if saved_world is not None and saved_world != world:
        raise ClibdError(f"{output}: the run was saved by {saved_world} processes; resume with "
                         f"--nproc-per-node × --nnodes = {saved_world} to continue exactly.")
    if overrides:  # e.g. a later max_steps; everything else must stay as it was
        save_config(load_config(str(resolved), overrides), resolved)
