"""BarcodeBERT-style masked k-mer pretraining of the DNA encoder (`clibd train --stage dna-pretrain`).

No pretrained BarcodeBERT weights can be downloaded in an offline lab, yet a DNA encoder that has
seen barcodes before contrastive training learns faster and generalises to unseen species better
(BarcodeBERT, CLIBD).  This stage trains :class:`clibd_training.models.DNAMaskedLM` on any barcode file
clibd reads (FASTA, BOLD TSV, BIOSCAN, simulate folders) and saves `RUN/dna_encoder/`, which a
contrastive config then names as `model.dna.pretrained`.  Same engine as contrastive training:
torchrun workers, DDP, DistributedSampler with set_epoch, one-cycle AdamW, atomic checkpoints with
every rank's RNG, exact resume.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from clibd_cli.errors import ClibdError
from clibd_training.config import TrainConfig

VAL_SHARE = 0.02


def read_barcodes(path: str) -> list[str]:
    """Normalised barcodes from a sequence file, or from a simulate folder / training manifest."""
    source = Path(path)
    if source.is_dir() or source.suffix.lower() in (".h5", ".hdf5"):
        from clibd_training.data import load_specimens

        return [s.sequence for s in load_specimens(source) if s.sequence]
    from clibd_cli.sequences import read_sequences

    return [r.sequence for r in read_sequences([source]).records if r.sequence]


def run_dna_pretraining(cfg: TrainConfig, output: Path, env, resume: bool, trust_checkpoint: bool = False) -> None:
    """Masked-k-mer training loop on one rank; rank 0 writes `output/dna_encoder` at the end."""
    from clibd_training.checkpoint import load_state
    from clibd_training.models import DNAMaskedLM, ModelConfig
    from clibd_training.train import (
        CHECKPOINTS,
        MetricLog,
        SkipFirst,
        build_optimizer,
        rng_state,
        save_atomic,
        set_rng_state,
        use_bf16,
    )

    dna_cfg = ModelConfig.from_dict(cfg.model).dna
    model = DNAMaskedLM(dna_cfg).to(env.device)
    sequences = read_barcodes(cfg.data.path)
    if len(sequences) < 10:
        raise ClibdError(f"{cfg.data.path}: only {len(sequences)} barcodes; DNA pretraining needs more.")
    order = np.random.default_rng(cfg.seed).permutation(len(sequences))
    n_val = max(1, int(len(sequences) * VAL_SHARE))
    ids, mask = model.tokenizer([sequences[i] for i in order])
    tensors = torch.from_numpy(ids), torch.from_numpy(mask)
    train_set = TensorDataset(tensors[0][n_val:], tensors[1][n_val:])
    val_ids, val_mask = tensors[0][:n_val], tensors[1][:n_val]

    ddp = DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_epoch = len(sampler) // cfg.batch_size // cfg.grad_accum
    if per_epoch == 0:
        raise ClibdError(f"{cfg.data.path}: too few barcodes for batch size {cfg.batch_size} × {env.world} processes.")
    total = per_epoch * cfg.epochs
    optimizer, scheduler = build_optimizer(cfg, model, total, env.world)
    bf16 = use_bf16(cfg, env)
    log = MetricLog(output, enabled=env.main)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": math.inf}
    last = output / CHECKPOINTS / "last.pt"

    def save(name: str) -> None:
        rng: list = [None] * env.world
        dist.all_gather_object(rng, rng_state())
        if env.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), **state, "rng": rng, "world_size": env.world,
                         "config": cfg.to_dict(), "stage": "dna-pretrain"}, output / CHECKPOINTS / name)
        dist.barrier()

    if resume:
        saved = load_state(last, trust=trust_checkpoint)  # plain data only, unless the user trusts the file
        if saved["world_size"] != env.world:
            raise ClibdError(f"{last}: saved by {saved['world_size']} processes; resume with as many.")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.update({k: saved[k] for k in state})
        pending_rng = saved["rng"][env.rank]  # restored once the epoch's loader exists (it draws a seed)
    else:
        pending_rng = None

    stop = False
    while state["epoch"] < cfg.epochs and not stop:
        sampler.set_epoch(state["epoch"])
        skip = state["batch_in_epoch"] * cfg.batch_size * cfg.grad_accum
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=SkipFirst(sampler, skip), drop_last=True)
        started, micro = time.perf_counter(), 0
        batches = iter(loader)
        if pending_rng is not None:
            set_rng_state(pending_rng)
            pending_rng = None
        for input_ids, attention_mask in batches:
            input_ids, attention_mask = input_ids.to(env.device), attention_mask.to(env.device)
            masked, labels = model.mask_tokens(input_ids, attention_mask, cfg.mlm_probability)
            sync = (micro + 1) % cfg.grad_accum == 0
            context = ddp.no_sync() if not sync else nullcontext()
            with context, torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = ddp(masked, attention_mask, labels).loss
                (loss / cfg.grad_accum).backward()
            micro += 1
            if not sync:
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_in_epoch"] += 1
            if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                log.write({"kind": "train", "stage": "dna-pretrain", "step": state["step"], "epoch": state["epoch"],
                           "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                           "samples_per_s": micro * cfg.batch_size * env.world / (time.perf_counter() - started)})
            if state["step"] % cfg.checkpoint_every == 0:
                save("last.pt")
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                stop = True
                break
        if stop and state["batch_in_epoch"] < per_epoch:
            save("last.pt")
            break
        state["epoch"] += 1
        state["batch_in_epoch"] = 0
        val_loss, val_acc = _validate(model, val_ids, val_mask, cfg, env, bf16)
        log.write({"kind": "val", "stage": "dna-pretrain", "step": state["step"], "epoch": state["epoch"],
                   "masked_loss": val_loss, "masked_accuracy": val_acc})
        if val_loss < state["best"]:
            state["best"] = val_loss
            save("best.pt")
        save("last.pt")
    if env.main:
        model.save_pretrained(output / "dna_encoder")
    dist.barrier()


@torch.no_grad()
def _validate(model, ids: torch.Tensor, mask: torch.Tensor, cfg: TrainConfig, env, bf16: bool) -> tuple[float, float]:
    """Masked-token loss and accuracy on the held-out barcodes, with a fixed mask (same on every rank)."""
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(ids), cfg.batch_size):
        input_ids, attention_mask = ids[start : start + cfg.batch_size], mask[start : start + cfg.batch_size]
        masked, labels = model.mask_tokens(input_ids, attention_mask, cfg.mlm_probability, generator=generator)
        masked, labels, attention_mask = masked.to(env.device), labels.to(env.device), attention_mask.to(env.device)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(masked, attention_mask, labels)
        chosen = labels != -100
        n = int(chosen.sum())
        total_loss += float(out.loss) * n
        correct += int((out.logits.argmax(-1)[chosen] == labels[chosen]).sum())
        count += n
    model.train()
    return total_loss / max(count, 1), correct / max(count, 1)
