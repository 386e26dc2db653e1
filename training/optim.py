"""The optimiser and learning-rate schedule of every clibd training stage.

One recipe for contrastive training and DNA pretraining alike: AdamW with the CLIBD paper's
one-cycle schedule.  Its state is saved in each checkpoint, so a resumed run continues the same
schedule rather than restarting it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from clibd_training.config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module, total_steps: int,
                    world: int) -> tuple[torch.optim.AdamW, OneCycleLR]:
    """AdamW and the paper's one-cycle schedule (initial_lr → max → final_lr, cosine).

    Like the official code, the peak rate scales with the global batch / 500 unless switched off, so
    a recipe keeps its meaning when run on more or fewer GPUs.  The global batch counts accumulation
    too, and rightly: with ``grad_accum`` > 1 the contrastive task scores every sample against all
    ``batch_size × world × grad_accum`` samples of the step (:mod:`clibd_training.accumulation`), so
    fewer GPUs with accumulation train with the same contrastive batch, and the same rate, as more GPUs.
    """
    global_batch = cfg.batch_size * world * cfg.grad_accum
    max_lr = cfg.optim.lr * (global_batch / 500 if cfg.optim.scale_lr_with_batch else 1.0)
    params = list(model.parameters())
    # The fused CUDA kernel updates every parameter in a few launches instead of a dozen per tensor
    # (benchmarks/train_throughput.py measures it); it needs every parameter on the GPU.
    fused = bool(params) and all(p.is_cuda for p in params)
    optimizer = torch.optim.AdamW(params, lr=max_lr, weight_decay=cfg.optim.weight_decay,
                                  betas=tuple(cfg.optim.betas), fused=fused or None)
    scheduler = OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=cfg.optim.pct_start, anneal_strategy="cos",
        div_factor=max_lr / cfg.optim.initial_lr, final_div_factor=cfg.optim.initial_lr / cfg.optim.final_lr,
        cycle_momentum=False)
    return optimizer, scheduler
