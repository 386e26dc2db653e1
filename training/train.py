"""The CLIBD trainer: `clibd train` launches workers through torchrun; each worker runs :func:`worker`.

Multi-GPU and multi-node training is PyTorch's own engine: `torch.distributed.run` (torchrun) starts
one process per device, `DistributedDataParallel` averages gradients, `DistributedSampler` shards the
data (with `set_epoch`, which the official code forgets), NCCL on GPUs and gloo on CPUs.  The loss
all-gathers features with gradients (training/losses.py), so every rank sees the global batch.

Checkpoints hold model, optimizer, scheduler, step, position in the epoch and every rank's RNG
state, written atomically, so `--resume` continues exactly where a run stopped: on CPU (num_workers 0)
a resumed run ends with bit-identical parameters (tests/test_train.py).  They hold only tensors and
plain data, so they are read without the code-running part of pickle (training/checkpoint.py).
Validation runs on every rank (sharded embedding, gathered), never on rank 0 alone while the others wait.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from clibd_cli.errors import ClibdError
from clibd_cli.metrics import harmonic_mean, knn_accuracy
from clibd_cli.sequences import RANKS
from clibd_training.config import TrainConfig, load_config, save_config

CHECKPOINTS = "checkpoints"
PAIRS = (("dna", "dna"), ("image", "image"), ("image", "dna"), ("image", "text"), ("dna", "text"))


# ------------------------------------------------------------------------------------- launching

def launch(config: str, *, output: Path, data: str | None = None, nproc_per_node: int = 1, nnodes: int = 1,
           node_rank: int = 0, rdzv_endpoint: str | None = None, resume: bool = False,
           overrides: list[str] | None = None, stage: str | None = None, trust_checkpoint: bool = False) -> Path:
    """Resolve the config, write `output/config.yaml`, and run the workers through torchrun.

    On --resume the checkpoint is opened here first (tensors mapped, not read), so a file that is not
    a safe checkpoint is refused with one line before any worker starts (``trust_checkpoint`` skips it).
    """
    from torch.distributed.run import parse_args, run

    output = Path(output)
    if resume:
        resolved = output / "config.yaml"
        if not (output / CHECKPOINTS / "last.pt").exists():
            raise ClibdError(f"{output}: no checkpoints/last.pt to resume from.")
        if not trust_checkpoint:
            from clibd_training.checkpoint import load_state

            load_state(output / CHECKPOINTS / "last.pt", mmap=True)
        summary_file = output / CHECKPOINTS / "last.json"
        saved_world = json.loads(summary_file.read_text())["world_size"] if summary_file.exists() else None
        if saved_world is not None and saved_world != nproc_per_node * nnodes:
            raise ClibdError(f"{output}: the run was saved by {saved_world} processes; resume with "
                             f"--nproc-per-node × --nnodes = {saved_world} to continue exactly.")
        if overrides:  # e.g. a later max_steps; everything else must stay as it was
            save_config(load_config(str(resolved), overrides), resolved)
    else:
        cfg = load_config(config, overrides)
        if data is not None:
            cfg.data.path = str(Path(data).resolve())
        if stage is not None:
            cfg.stage = stage
        if cfg.data.path is None:
            raise ClibdError("no training data: give --data PATH (a simulate folder, CLIBD HDF5 or manifest).")
        if (output / CHECKPOINTS / "last.pt").exists():
            raise ClibdError(f"{output}: holds a run already; use --resume to continue it or another --output.")
        output.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output / "config.yaml")
    argv = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ClibdError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node).")
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--node-rank={node_rank}"]
    else:
        argv += ["--standalone"]
    argv += ["-m", "clibd_training.train", "--config", str(output / "config.yaml"), "--output", str(output)]
    if resume:
        argv.append("--resume")
    if trust_checkpoint:
        argv.append("--trust-checkpoint")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        failed = ", ".join(str(rank) for rank in sorted(exc.failures))
        raise ClibdError(f"training failed in worker rank(s) {failed}; the worker's traceback is printed above. "
                         f"Fix the cause and rerun, or continue with --resume --output {output}.") from None
    return output


def main(argv: list[str] | None = None) -> None:
    """Worker entry point (`python -m clibd_training.train`, started by torchrun)."""
    parser = argparse.ArgumentParser(description="CLIBD training worker (started by torchrun)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--trust-checkpoint", action="store_true")
    args = parser.parse_args(argv)
    worker(load_config(args.config), args.output, resume=args.resume, trust_checkpoint=args.trust_checkpoint)


# ------------------------------------------------------------------------------------- the worker

@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's Python, NumPy and torch RNG states as tensors and numbers.

    Plain data only, so the checkpoint holding them opens with torch's restricted unpickler
    (:mod:`clibd_training.checkpoint`); a NumPy array inside would need the full, code-running one.
    """
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
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


class SkipFirst(Sampler):
    """A sampler that drops its first `skip` indices once (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def worker(cfg: TrainConfig, output: Path, resume: bool = False, trust_checkpoint: bool = False) -> None:
    """One training process: data, model, DDP, the loop, validation, checkpoints."""
    env = setup_distributed()
    try:
        seed_everything(cfg.seed + env.rank)
        if cfg.stage == "dna-pretrain":
            from clibd_training.pretrain import run_dna_pretraining

            run_dna_pretraining(cfg, output, env, resume, trust_checkpoint)
        else:
            Trainer(cfg, output, env).fit(resume, trust_checkpoint)
    finally:
        dist.barrier()
        dist.destroy_process_group()


class Trainer:
    """Contrastive training of the CLIBD model on one rank."""

    def __init__(self, cfg: TrainConfig, output: Path, env: Dist) -> None:
        from clibd_training.data import build_label_maps, load_specimens
        from clibd_training.models import ModelConfig, build_model

        self.cfg, self.output, self.env = cfg, Path(output), env
        self.model_cfg = ModelConfig.from_dict(cfg.model)
        self.modalities = tuple(self.model_cfg.modalities)
        specimens = load_specimens(cfg.data.path)
        self.by_split: dict[str, list] = {}
        for s in specimens:
            self.by_split.setdefault(s.split, []).append(s)
        train = self._splits(cfg.data.train_splits, required=True)
        self.label_maps = build_label_maps(specimens)
        self.text_tokenizer = self._text_tokenizer(specimens) if "text" in self.modalities else None
        model = build_model(self.model_cfg, text_tokenizer=self.text_tokenizer).to(env.device)
        self.model = model
        self.ddp = DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        self.train_set = self._dataset(train, train=True)
        self.sampler = DistributedSampler(self.train_set, num_replicas=env.world, rank=env.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        per_epoch = len(self.sampler) // cfg.batch_size // cfg.grad_accum
        if per_epoch == 0:
            raise ClibdError(f"{cfg.data.path}: {len(train)} training records are too few for batch size "
                             f"{cfg.batch_size} × {env.world} processes × {cfg.grad_accum} accumulation steps.")
        self.steps_per_epoch = per_epoch
        self.total_steps = per_epoch * cfg.epochs
        self.optimizer, self.scheduler = build_optimizer(cfg, model, self.total_steps, env.world)
        self.bf16 = use_bf16(cfg, env)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best = -math.inf
        self._pending_rng: dict | None = None
        self.log = MetricLog(self.output, enabled=env.main)

    # ------------------------------------------------------------------------------ helpers
    def _splits(self, names: list[str], required: bool = False) -> list:
        out = [s for name in names for s in self.by_split.get(name, [])]
        if required and not out:
            raise ClibdError(f"{self.cfg.data.path}: no records in splits {', '.join(names)} "
                             f"(found: {', '.join(sorted(self.by_split))}).")
        return out

    def _text_tokenizer(self, specimens):
        from clibd_cli.sequences import taxonomy_text
        from clibd_training.text_tokenizer import load_text_tokenizer, train_text_tokenizer

        pretrained = self.model_cfg.text.pretrained
        if pretrained:
            return load_text_tokenizer(pretrained)
        folder = self.output / "text_tokenizer"
        if self.env.main and not (folder / "tokenizer.json").exists() and not (folder / "vocab.txt").exists():
            texts = [taxonomy_text(s.taxonomy) for s in specimens]
            train_text_tokenizer(texts, out_dir=folder)
        dist.barrier()
        return load_text_tokenizer(str(folder))

    def _dataset(self, specimens, train: bool):
        from clibd_cli.preprocess import ImagePreprocessing
        from clibd_cli.tokenizer import KmerTokenizer
        from clibd_training.data import ImageTransforms, SpecimenDataset

        transforms = None
        if "image" in self.modalities:
            spec = ImagePreprocessing.from_dict(self.cfg.data.image)
            transforms = ImageTransforms(spec)
            transforms = transforms.train if train else transforms.eval
        tokenizer = KmerTokenizer(self.model_cfg.dna.tokenizer_config())
        return SpecimenDataset(specimens, tokenizer, text_tokenizer=self.text_tokenizer, image_transform=transforms,
                               text_max_len=self.model_cfg.text.max_len, label_maps=self.label_maps)

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool = False) -> DataLoader:
        from clibd_training.data import collate

        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.cfg.data.num_workers,
                          collate_fn=collate, pin_memory=self.env.device.type == "cuda", drop_last=drop_last)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.env.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _labels(self, batch: dict) -> torch.Tensor | None:
        key = {"species": "species_index", "bin": "bin_index"}.get(self.cfg.positives)
        return batch[key] if key else None

    # ------------------------------------------------------------------------------ the loop
    def fit(self, resume: bool, trust_checkpoint: bool = False) -> None:
        from clibd_training.losses import contrastive_loss

        cfg, env = self.cfg, self.env
        if resume:
            self.load(self.output / CHECKPOINTS / "last.pt", trust=trust_checkpoint)
        progress = _progress(env.main, self.total_steps, self.step)
        accum = cfg.grad_accum
        stop = False
        while self.epoch < cfg.epochs and not stop:
            self.sampler.set_epoch(self.epoch)
            skip = self.batch_in_epoch * cfg.batch_size * accum
            loader = self._loader(self.train_set, SkipFirst(self.sampler, skip), cfg.batch_size, drop_last=True)
            micro = 0
            started = time.perf_counter()
            batches = iter(loader)  # draws the loader's base seed from the RNG: restore the RNG after it
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            for batch in batches:
                batch = self._to_device(batch)
                sync = (micro + 1) % accum == 0
                context = self.ddp.no_sync() if not sync else nullcontext()
                with context, torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    features = self.ddp(batch)
                    masks = {m: batch[f"has_{m}"] for m in ("image", "dna") if f"has_{m}" in batch and m in features}
                    loss, parts = contrastive_loss(features, self.model.scale(), masks=masks,
                                                   labels=self._labels(batch), positives=cfg.positives)
                    (loss / accum).backward()
                micro += 1
                if not sync:
                    continue
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.batch_in_epoch += 1
                if self.step % cfg.log_every == 0 or self.step == 1:
                    elapsed = time.perf_counter() - started
                    self.log.write({"kind": "train", "step": self.step, "epoch": self.epoch, "loss": loss.item(),
                                    **{f"loss_{k}": v.item() for k, v in parts.items()},
                                    "lr": self.scheduler.get_last_lr()[0], "logit_scale": self.model.scale().item(),
                                    "samples_per_s": micro * cfg.batch_size * env.world / max(elapsed, 1e-9)})
                progress.advance()
                if self.step % cfg.checkpoint_every == 0:
                    self.save("last.pt")
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    stop = True
                    break
            if stop and self.batch_in_epoch < self.steps_per_epoch:
                self.save("last.pt")
                break
            self.epoch += 1
            self.batch_in_epoch = 0
            metrics = self.validate()
            score = metrics.get("mean_top1", -math.inf)
            if score > self.best:
                self.best = score
                self.save("best.pt")
            self.save("last.pt")
        progress.close()
        if not (self.output / CHECKPOINTS / "best.pt").exists():
            self.save("best.pt")

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def embed(self, specimens) -> dict[str, np.ndarray]:
        """Embeddings of `specimens` for every modality, computed sharded and gathered on all ranks."""
        if not specimens:
            return {}
        dataset = self._dataset(specimens, train=False)
        sampler = DistributedSampler(dataset, num_replicas=self.env.world, rank=self.env.rank, shuffle=False,
                                     drop_last=False)
        self.model.eval()
        local: dict[str, list] = {"index": []}
        for batch in self._loader(dataset, sampler, self.cfg.batch_size):
            batch = self._to_device(batch)
            with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                features = self.model(batch)
            local["index"].append(batch["index"].cpu())
            for modality, value in features.items():
                local.setdefault(modality, []).append(value.float().cpu())
        self.model.train()
        shard = {k: torch.cat(v).numpy() for k, v in local.items()}
        gathered: list = [None] * self.env.world
        dist.all_gather_object(gathered, shard)
        index = np.concatenate([g["index"] for g in gathered])
        _, first = np.unique(index, return_index=True)  # DistributedSampler pads with repeats
        return {k: np.concatenate([g[k] for g in gathered])[first] for k in shard if k != "index"}

    def validate(self) -> dict:
        """The paper's micro/macro top-k per rank for each query→key modality pair, seen and unseen."""
        cfg = self.cfg
        keys = self._splits(cfg.data.key_splits)
        groups = {"seen": self._splits(cfg.data.val_seen_splits), "unseen": self._splits(cfg.data.val_unseen_splits)}
        if not keys or not any(groups.values()):
            return {}
        key_emb = self.embed(keys)
        key_labels = _labels_of(keys)
        summary: dict = {"kind": "val", "step": self.step, "epoch": self.epoch}
        top1 = []
        for group, queries in groups.items():
            if not queries:
                continue
            query_emb = self.embed(queries)
            query_labels = _labels_of(queries)
            for q_mod, k_mod in PAIRS:
                if q_mod not in query_emb or k_mod not in key_emb:
                    continue
                qmask = _has(queries, q_mod)
                kmask = _has(keys, k_mod)
                if not qmask.any() or not kmask.any():
                    continue
                result = knn_accuracy(query_emb[q_mod][qmask], key_emb[k_mod][kmask],
                                      {r: v[qmask] for r, v in query_labels.items()},
                                      {r: v[kmask] for r, v in key_labels.items()})
                pair = f"{q_mod}_to_{k_mod}"
                for rank, values in result.items():
                    for name, value in values.items():
                        summary[f"{group}/{pair}/{rank}/{name}"] = value
                if k_mod != "text":
                    top1 += [result[r]["micro_top1"] for r in RANKS if result[r]["n"]]
        for q_mod, k_mod in PAIRS:
            pair = f"{q_mod}_to_{k_mod}"
            seen = summary.get(f"seen/{pair}/species/micro_top1")
            unseen = summary.get(f"unseen/{pair}/species/micro_top1")
            if seen is not None and unseen is not None:
                summary[f"harmonic/{pair}/species/micro_top1"] = harmonic_mean(seen, unseen)
        summary["mean_top1"] = float(np.mean(top1)) if top1 else float("nan")
        self.log.write(summary)
        return summary

    # ------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        rng: list = [None] * self.env.world
        dist.all_gather_object(rng, rng_state())
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": None, "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "best": self.best, "rng": rng, "world_size": self.env.world,
                "config": self.cfg.to_dict(), "model_config": asdict(self.model_cfg),
                "label_maps": self.label_maps,
                "text_tokenizer": str(self.output / "text_tokenizer") if self.text_tokenizer is not None else None}

    def save(self, name: str) -> None:
        state = self.state()  # every rank takes part in the gather
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
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best = state["batch_in_epoch"], state["best"]
        self._pending_rng = state["rng"][self.env.rank]  # restored once the epoch's loader exists


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, total_steps: int, world: int):
    """AdamW and the paper's one-cycle schedule (initial_lr → max → final_lr, cosine).

    Like the official code, the peak rate scales with the global batch / 500 unless switched off.
    """
    global_batch = cfg.batch_size * world * cfg.grad_accum
    max_lr = cfg.optim.lr * (global_batch / 500 if cfg.optim.scale_lr_with_batch else 1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=cfg.optim.weight_decay,
                                  betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=cfg.optim.pct_start, anneal_strategy="cos",
        div_factor=max_lr / cfg.optim.initial_lr, final_div_factor=cfg.optim.initial_lr / cfg.optim.final_lr,
        cycle_momentum=False)
    return optimizer, scheduler


def use_bf16(cfg: TrainConfig, env: Dist) -> bool:
    """bf16 autocast when asked, or by default on CUDA (fp32 on CPU)."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")


def save_atomic(state: dict, path: Path) -> None:
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


def _labels_of(specimens) -> dict[str, np.ndarray]:
    return {rank: np.array([s.taxonomy.get(rank, "") for s in specimens], dtype=object) for rank in RANKS}


def _has(specimens, modality: str) -> np.ndarray:
    if modality == "image":
        return np.array([s.image is not None for s in specimens])
    if modality == "dna":
        return np.array([bool(s.sequence) for s in specimens])
    return np.ones(len(specimens), dtype=bool)


class MetricLog:
    """Metrics as JSON lines in RUN/metrics.jsonl, and to TensorBoard when it is installed (rank 0)."""

    def __init__(self, output: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch") and math.isfinite(value):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record.get("step", 0))
            self.tb.flush()


class _progress:
    """A rich progress bar on rank 0 when stderr is a terminal; silent otherwise."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.task = self.bar.add_task("training", total=total, completed=done)
            self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


if __name__ == "__main__":
    main()
