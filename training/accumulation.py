"""Gradient accumulation that enlarges the contrastive batch, as open_clip's ``accum_freq`` does.

Summing the gradients of K micro-batches is the gradient of one K-times larger batch only when each
sample's loss depends on its own sample alone.  A contrastive loss scores every sample against the
others of its batch, so plain accumulation trains with K small contrastive batches (each micro-batch
sees only its own negatives) while the learning rate is scaled for the large one.  This module makes
the large batch real, following open_clip's ``train_one_epoch``:

1. **First pass, without gradients**: every micro-batch's features (and its masks/labels) are
   computed and cached.  Cheap: no activations are kept.
2. **Second pass, with gradients**: micro-batch ``j`` is encoded again, its features replace the cached
   ones in the concatenation of all K, the loss of that whole K-batch (gathered over ranks as usual)
   is computed and back-propagated.  Only micro-batch ``j`` is live, so its parameters' gradient is
   ``∂L/∂features_j · ∂features_j/∂θ``; the sum over ``j`` is exactly ``∂L/∂θ`` of the one big batch.

Two details make the equality exact rather than approximate:

* **The same random numbers in both passes.**  Dropout (the BERT encoders have it) must drop the same
  units when micro-batch ``j`` is recomputed, or the live features differ from the cached ones; the
  torch RNG state (CPU and CUDA) is saved before each first-pass forward and restored before the
  matching second-pass forward, and afterwards set to where the first pass left it.
* **Replicated parameters used by the loss itself** (the learned temperature) get the full
  ``∂L/∂scale`` in each of the K passes; :func:`scale_grad` gives them weight ``1/K`` per pass so the
  sum is one big batch's gradient (open_clip sums K of them).

BatchNorm would see different statistics per micro-batch than in one big batch; CLIBD's encoders (ViT,
BERTs: LayerNorm only) have none.  The cost is one extra forward pass per micro-batch and K loss
evaluations per step, against memory for one micro-batch's activations.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["CrossSampleTask", "accumulate_large_batch", "scale_grad"]


class CrossSampleTask(Protocol):
    """What a task with a loss across samples provides (ContrastiveTask does)."""

    def to_device(self, batch: Any) -> Any:
        """The batch on the training device (done once, before both passes)."""

    def encode(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """Per-sample tensors the loss needs (features, masks, labels), each with the batch on dim 0."""

    def features_loss(self, features: dict[str, Tensor], passes: int = 1) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the (concatenated) features; ``passes`` weights the temperature's gradient (scale_grad)."""


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, value: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return value.view_as(value)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(value: Tensor, factor: float) -> Tensor:
    """``value`` unchanged, with the gradient flowing back through it multiplied by ``factor``."""
    return _ScaleGrad.apply(value, factor)


def torch_rng_state() -> tuple[Tensor, list[Tensor]]:
    """The torch CPU and CUDA generator states, which dropout draws from."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_torch_rng_state(state: tuple[Tensor, list[Tensor]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


def accumulate_large_batch(task: CrossSampleTask, model: nn.Module, batches: list[Any],
                           autocast: Callable[[], AbstractContextManager] = nullcontext
                           ) -> tuple[Tensor, dict[str, Tensor]]:
    """Back-propagate the loss of ``batches`` taken together as one batch; returns its loss and parts (detached).

    ``model`` is the DDP wrapper (or a bare module): the first pass runs its bare module under
    ``no_grad``; the second calls the wrapper, under ``no_sync`` for every micro-batch but the last, so
    DDP all-reduces once per step.  Gradients are added to ``.grad`` (the caller zeroes them after the
    optimizer step).  Every rank must call this with the same number of micro-batches.
    """
    if not batches:
        raise ValueError("accumulate_large_batch needs at least one micro-batch")
    passes = len(batches)
    bare = getattr(model, "module", model)
    batches = [task.to_device(b) for b in batches]
    states, cached = [], []
    with torch.no_grad(), autocast():
        for batch in batches:
            states.append(torch_rng_state())
            cached.append({k: v.detach() for k, v in task.encode(bare, batch).items()})
    after = torch_rng_state()
    loss, parts = torch.zeros(()), {}
    for j, batch in enumerate(batches):
        set_torch_rng_state(states[j])
        last = j == passes - 1
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast():
                live = task.encode(model, batch)
                features = {k: torch.cat([c[k] for c in cached[:j]] + [v] + [c[k] for c in cached[j + 1:]])
                            for k, v in live.items()}
                loss, parts = task.features_loss(features, passes=passes)
            loss.backward()
    set_torch_rng_state(after)
    return loss.detach(), {k: v.detach() for k, v in parts.items()}
