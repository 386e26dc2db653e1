"""CLIBD's contrastive loss: symmetric InfoNCE between every pair of modalities over the global batch.

CLIBD aligns insect images, DNA barcodes and taxonomy text in one embedding space with CLIP's
objective, applied to each pair of modalities (image–DNA, image–text, DNA–text) with equal weights.
Contrastive learning gets better with more negatives, so the paper gathers the features of all
GPUs and every rank scores its samples against the *global* batch (2000 = 4 × 500).

Design points, each of which matters for correctness rather than style:

* **Each rank scores only its own rows** (open_clip's ``local_loss=True`` with ``gather_with_grad=True``).
  The global loss ``L`` is a sum over the global batch's samples as queries, divided by global counts,
  so it splits into one share ``ℓ_r`` per rank: the rows of rank ``r``'s local samples scored against
  the gathered keys of all ranks.  A rank therefore builds ``B × N`` logits per modality pair and
  direction, never the ``N × N`` matrix (at the paper's 2000 = 4 × 500 that is a quarter of the logits
  and target memory per rank).  The keys are gathered with :func:`gather_with_grad`, PyTorch's own
  differentiable ``torch.distributed.nn.functional.all_gather``, whose backward sums onto each rank
  the gradients all ranks computed for its slice.  The value returned is ``L`` itself (the shares are
  all-reduced, so every rank reports the global mean), and its gradient is ``world_size · ∂ℓ_r``: rank
  ``r``'s features then get ``world_size · ∂L/∂(its slice)`` and DistributedDataParallel's averaging
  over ranks divides that factor out again, so the optimiser sees exactly ``∂L/∂θ`` of the
  global-batch loss, the gradient a single process holding the whole batch would get.  The replicated
  ``logit_scale`` gets ``world_size · ∂ℓ_r/∂scale`` on rank ``r``, whose average over ranks is
  ``∂L/∂scale``.  The distributed tests in ``tests/test_losses.py`` check all of it numerically.
* **Missing modalities are masked, not skipped.** BIOSCAN records may lack an image or a barcode; a
  pair of modalities uses only the samples that have both.  Collectives must be issued identically on
  every rank or training hangs, so every rank always gathers every modality, and absent samples (and
  the padding of uneven per-rank batches) are removed by masking the logits, never by control flow
  that depends on local data.  Masking is exact: a masked sample contributes nothing to the loss or
  to any gradient, as if it had been dropped from the batch.  The masked formulation also keeps tensor
  shapes static and needs no device-to-host synchronisation (except reading the ranks' batch sizes,
  which are exchanged so that uneven last batches are padded instead of hanging the collectives).
* **Multi-positive targets** (``positives="species"`` or ``"bin"``): the paper treats two specimens
  of one species in a batch as negatives of each other, which pushes apart embeddings that should
  coincide.  With labels, every sample of the same label is a positive and the target distribution is
  uniform over the positives (soft-target cross-entropy, in both directions); unknown labels (``-1``)
  only match themselves, which is exactly CLIP's target.
* **Float32 inside.** Logits reach ``±scale`` (14 at initialisation, up to the cap of 100 later, see
  ``CLIBDModel.clamp_logit_scale``) and a log-softmax over thousands of such entries is sensitive to
  rounding, so the loss disables autocast and computes in float32 even when the encoders run in
  bf16/fp16 (float64 features stay float64, for exact comparisons in tests); gradients flow back
  through the cast in the encoders' dtype.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from clibd_cli.schema import MODALITIES

POSITIVES: tuple[str, ...] = ("sample", "species", "bin")

__all__ = ["MODALITIES", "POSITIVES", "contrastive_loss", "gather_no_grad", "gather_with_grad", "is_distributed",
           "pair_name"]


def is_distributed() -> bool:
    """True when a default process group with more than one rank exists, i.e. when gathering means anything."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(t: Tensor) -> Tensor:
    """All ranks' ``t`` concatenated along dim 0 (rank order), differentiable back to each rank's own slice.

    Every rank must call this with a tensor of the same shape.  The backward sums the gradients all
    ranks computed for a slice onto the rank that owns it (see the module docstring for why that,
    combined with DDP's gradient averaging, yields the exact global-batch gradient).  Without an
    initialised process group, or with a single rank, ``t`` itself is returned.
    """
    if not is_distributed():
        return t
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch >= 2.x flags this autograd-aware collective as deprecated in favour of the private
        # torch.distributed._functional_collectives API; it is still the public, supported way to gather
        # with gradients, so the warning (one per training step) is noise here.
        warnings.filterwarnings("ignore", message=r".*distributed\.nn\.functional\.all_gather is deprecated.*",
                                category=FutureWarning)
        parts = all_gather(t)
    return torch.cat(parts, dim=0)


def gather_no_grad(t: Tensor) -> Tensor:
    """All ranks' ``t`` concatenated along dim 0 without autograd: for labels, masks and sizes.

    Every rank must call this with a tensor of the same shape.  Booleans travel as uint8 because not
    every backend (gloo in particular) reduces or gathers bool tensors.  Without an initialised process
    group, or with a single rank, ``t`` itself is returned.
    """
    if not is_distributed():
        return t
    payload = t.detach().contiguous()
    is_bool = payload.dtype == torch.bool
    if is_bool:
        payload = payload.to(torch.uint8)
    parts = [torch.empty_like(payload) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, payload)
    out = torch.cat(parts, dim=0)
    return out.bool() if is_bool else out


def pair_name(a: str, b: str) -> str:
    """Key of a modality pair in the loss dictionary, e.g. ``image_dna``."""
    return f"{a}_{b}"


def contrastive_loss(features: dict[str, Tensor], logit_scale: Tensor, *, masks: dict[str, Tensor] | None = None,
                     labels: Tensor | None = None, positives: str = "sample",
                     gather: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """Symmetric InfoNCE over every pair of present modalities, averaged over the pairs.

    Args:
        features: L2-normalised embeddings per modality (``image``, ``dna``, ``text``; at least two),
            each ``[B, D]`` and local to this rank, all with the same ``B``.
        logit_scale: the already exponentiated temperature (``model.scale()``), a scalar tensor.
        masks: optional bool ``[B]`` per modality: which samples have that modality.  A modality
            without a mask is present for every sample.  A pair uses only samples that have both.
        labels: long ``[B]`` species or BIN ids (``-1`` = unknown), required unless
            ``positives="sample"``; ids must mean the same on every rank.
        positives: ``"sample"`` (CLIP: only the paired sample is positive) or ``"species"``/``"bin"``
            (every sample with the same label is positive, targets uniform over the positives).
        gather: score this rank's samples against the global batch of all ranks (keys gathered with
            gradients; the returned value is the global loss, see the module docstring for its gradient).
            Ignored without an initialised process group.  Ranks may have different ``B``.

    Returns:
        ``(total, per_pair)``: ``total`` is the mean of the pair losses over the pairs that have at
        least one valid sample in the (global) batch, 0 if none has; ``per_pair`` maps
        ``image_dna``, ``image_text``, ``dna_text`` (those whose modalities are in ``features``) to
        each pair's loss, the mean of its two directions over its valid samples (0 when empty).  All
        values are float32 (float64 for float64 features), identical on every rank when gathering, and
        always connected to the graph so DDP never sees unused parameters.  Every rank must call this
        (and ``backward``) whenever one does, as with any collective.
    """
    names = _check_inputs(features, masks, labels, positives)
    first = features[names[0]]
    batch = first.shape[0]
    device = first.device
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32

    with torch.autocast(device_type=device.type, enabled=False):
        scale = logit_scale.to(device=device, dtype=dtype)
        rows = {m: features[m].to(dtype) for m in names}
        row_valid = {m: _local_mask(masks, m, batch, device) for m in names}
        row_labels = labels.to(device=device, dtype=torch.long) if positives != "sample" else None

        world = 1
        if gather and is_distributed():
            keys, key_valid, key_labels, offset = _gather_batch(rows, row_valid, row_labels, batch, device)
            world = dist.get_world_size()
        else:
            keys, key_valid, key_labels, offset = rows, row_valid, row_labels, 0

        n = next(iter(keys.values())).shape[0]
        # Positives of each local row among the global keys: its own sample (at offset + i), plus (with
        # labels) every key of the same known label; -1 = unknown matches nothing else.
        same = torch.arange(n, device=device)[None, :] == (offset + torch.arange(batch, device=device))[:, None]
        if key_labels is not None:
            same = same | ((row_labels[:, None] == key_labels[None, :]) & (row_labels >= 0)[:, None])

        shares, counts = [], []
        for a, b in combinations(names, 2):
            shares.append(_pair_rows(rows[a], rows[b], keys[a], keys[b], row_valid[a] & row_valid[b],
                                     key_valid[a] & key_valid[b], same, scale))
            counts.append((key_valid[a] & key_valid[b]).sum())  # global: the same on every rank
        count = torch.stack(counts).to(dtype)
        # This rank's share of each pair loss (mean of two directions over the pair's global valid samples).
        local = torch.stack(shares) / (2.0 * count.clamp(min=1.0))
        pair_losses = _GlobalSum.apply(local, world) if world > 1 else local
        # Empty pairs contribute an exact (graph-connected) zero, so summing all and dividing by the number
        # of non-empty pairs is the mean over non-empty pairs without any host synchronisation.
        total = pair_losses.sum() / (count > 0).to(dtype).sum().clamp(min=1.0)
        per_pair = {pair_name(a, b): pair_losses[i] for i, (a, b) in enumerate(combinations(names, 2))}
    return total, per_pair


class _GlobalSum(torch.autograd.Function):
    """Forward: the sum over ranks of each rank's share; backward: ``world ×`` the gradient of the own share.

    The value is what every rank reports (the global loss).  The gradient is deliberately not that of
    the all-reduced sum: the shares' other-rank terms reach this rank's features through the
    all-gather's backward instead, and the factor ``world`` is the one DDP's averaging removes (see
    the module docstring).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, share: Tensor, world: int) -> Tensor:
        ctx.world = world
        total = share.detach().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.world, None


def _check_inputs(features: dict[str, Tensor], masks: dict[str, Tensor] | None, labels: Tensor | None,
                  positives: str) -> list[str]:
    """Validate arguments eagerly: a wrong shape here would otherwise surface as a hang or a silent misfit."""
    if positives not in POSITIVES:
        raise ValueError(f"positives={positives!r}: use one of {', '.join(POSITIVES)}")
    unknown = set(features) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}: use {', '.join(MODALITIES)}")
    names = [m for m in MODALITIES if m in features]
    if len(names) < 2:
        raise ValueError(f"a contrastive loss needs at least two modalities, got {names}")
    shapes = {m: tuple(features[m].shape) for m in names}
    first = shapes[names[0]]
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"features must all be [B, D] with the same B and D, got {shapes}")
    batch = first[0]
    for m, mask in (masks or {}).items():
        if m not in features:
            raise ValueError(f"mask given for modality {m!r} that has no features")
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch,):
            raise ValueError(f"masks[{m!r}] must be a bool tensor of shape [{batch}], got {mask.dtype} "
                             f"{tuple(mask.shape)}")
    if positives != "sample":
        if labels is None:
            raise ValueError(f"positives={positives!r} needs labels (long [B], -1 = unknown)")
        if tuple(labels.shape) != (batch,) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of shape [{batch}], got {labels.dtype} "
                             f"{tuple(labels.shape)}")
    return names


def _local_mask(masks: dict[str, Tensor] | None, modality: str, batch: int, device: torch.device) -> Tensor:
    if masks is not None and modality in masks:
        return masks[modality].to(device)
    return torch.ones(batch, dtype=torch.bool, device=device)


def _gather_batch(feats: dict[str, Tensor], valid: dict[str, Tensor], labels: Tensor | None, batch: int,
                  device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None, int]:
    """Global features, masks and labels, and where this rank's rows sit among them.

    Uneven per-rank batches are padded to the largest and masked out.

    Collectives need equal shapes on all ranks (a mismatch hangs or corrupts NCCL), and the last batch
    of an epoch need not be equal everywhere, so the local sizes are exchanged first (one tiny
    collective, the price of never hanging) and every rank pads to the largest with invalid rows.
    """
    sizes = gather_no_grad(torch.tensor([batch], device=device))
    longest = int(sizes.max())
    pad = longest - batch
    if pad:
        feats = {m: F.pad(f, (0, 0, 0, pad)) for m, f in feats.items()}
        valid = {m: F.pad(v, (0, pad), value=False) for m, v in valid.items()}
        if labels is not None:
            labels = F.pad(labels, (0, pad), value=-1)
    # Fixed modality order, so every rank issues the same collectives in the same order.
    gathered = {m: gather_with_grad(feats[m]) for m in MODALITIES if m in feats}
    gathered_valid = {m: gather_no_grad(valid[m]) for m in MODALITIES if m in valid}
    gathered_labels = gather_no_grad(labels) if labels is not None else None
    return gathered, gathered_valid, gathered_labels, dist.get_rank() * longest


def _pair_rows(row_a: Tensor, row_b: Tensor, key_a: Tensor, key_b: Tensor, row_ok: Tensor, key_ok: Tensor,
               same: Tensor, scale: Tensor) -> Tensor:
    """Summed (soft-target) InfoNCE of this rank's rows in both directions: rows of ``a`` against all keys of
    ``b``, and rows of ``b`` against all keys of ``a``.

    Logits of pairs involving an invalid sample are set to the most negative float, so they get
    softmax probability exactly 0 (and zero gradient) instead of ``-inf``, which would turn rows with no
    valid entry into NaN; such rows have all-zero targets and therefore contribute exactly 0.
    """
    pair_ok = row_ok[:, None] & key_ok[None, :]
    lowest = torch.finfo(scale.dtype).min
    targets = (same & pair_ok).to(scale.dtype)
    # Positives are symmetric (same sample, same label), so one row-normalised target matrix serves both
    # directions: row i of b against the keys of a has the same positives as row i of a against b.
    targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=1.0)
    a_to_b = F.cross_entropy((scale * (row_a @ key_b.T)).masked_fill(~pair_ok, lowest), targets, reduction="sum")
    b_to_a = F.cross_entropy((scale * (row_b @ key_a.T)).masked_fill(~pair_ok, lowest), targets, reduction="sum")
    return a_to_b + b_to_a
