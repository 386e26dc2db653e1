"""CLIBD contrastive loss: hand-written references on one process, and a real 2-process gloo run.

The single-process tests pin the loss to independent formulas (CLIP's arange cross-entropy, a loop
over positives for multi-positive targets, dropping masked samples).  The distributed tests then
check that gathering across ranks changes nothing: two gloo processes on 127.0.0.1, each holding its
slice of one seeded global batch, must get the single-process loss of the whole batch and the
gradients that DDP needs to reproduce the single-process gradient exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gloo_ranks import run_ranks  # noqa: E402
from torch import nn  # noqa: E402

from clibd_cli.schema import CONTRASTIVE_PAIRS as PAIRS  # noqa: E402
from clibd_cli.schema import MODALITIES  # noqa: E402
from clibd_training.losses import (  # noqa: E402
    contrastive_loss,
    gather_no_grad,
    gather_with_grad,
)

SCALE = 1 / 0.07  # CLIP's initial exp(logit_scale)
WORLD = 2


def normalised(seed: int, n: int, dim: int = 8, names: tuple[str, ...] = MODALITIES) -> dict[str, torch.Tensor]:
    """Seeded L2-normalised features per modality; modality m+1 is a noisy copy of m, so positives score high."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=gen)
    return {m: F.normalize(base + 0.8 * torch.randn(n, dim, generator=gen), dim=1) for m in names}


def leaves(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {m: f.detach().clone().requires_grad_() for m, f in features.items()}


def clip_reference(a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """CLIP's loss as usually written: arange targets, cross-entropy in both directions, averaged."""
    logits = scale * a @ b.T
    targets = torch.arange(len(a))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def multi_positive_reference(a: torch.Tensor, b: torch.Tensor, labels: list[int], scale: float) -> torch.Tensor:
    """Soft-target InfoNCE spelled out: row i's target is uniform over {i} ∪ {j : labels[j] = labels[i] ≥ 0}."""
    logits = (scale * a @ b.T).double()
    n = len(labels)

    def one_direction(rows: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for i in range(n):
            positives = [j for j in range(n) if j == i or (labels[i] >= 0 and labels[j] == labels[i])]
            log_norm = torch.logsumexp(rows[i], dim=0)
            total = total + sum(log_norm - rows[i, j] for j in positives) / len(positives)
        return total / n

    return ((one_direction(logits) + one_direction(logits.T)) / 2).float()


# ---------------------------------------------------------------------------------------------------------------
# Single process
# ---------------------------------------------------------------------------------------------------------------


def test_sample_positives_match_clip_reference() -> None:
    features = normalised(0, 12)
    total, pairs = contrastive_loss(features, torch.tensor(SCALE))
    expected = {f"{a}_{b}": clip_reference(features[a], features[b], SCALE) for a, b in PAIRS}
    assert set(pairs) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(pairs[name], value)
    torch.testing.assert_close(total, torch.stack(list(expected.values())).mean())
    assert total.dtype == torch.float32


def test_two_modalities_give_one_pair() -> None:
    features = normalised(1, 7, names=("image", "dna"))
    total, pairs = contrastive_loss(features, torch.tensor(SCALE))
    assert list(pairs) == ["image_dna"]
    torch.testing.assert_close(total, clip_reference(features["image"], features["dna"], SCALE))


@pytest.mark.parametrize("positives", ["sample", "species"])
def test_masking_a_sample_equals_dropping_it(positives: str) -> None:
    """Losses and gradients with masks equal those of the batch without the masked samples, pair by pair."""
    n = 10
    features = leaves(normalised(2, n))
    labels = torch.tensor([0, 1, 0, 2, 1, -1, 0, 3, 3, 1])
    missing = {"image": {1, 4}, "dna": {4, 7}, "text": set()}
    masks = {m: torch.tensor([i not in missing[m] for i in range(n)]) for m in ("image", "dna")}  # text: no mask

    total, pairs = contrastive_loss(features, torch.tensor(SCALE), masks=masks, labels=labels, positives=positives)
    grads = torch.autograd.grad(total, [features[m] for m in MODALITIES])

    dropped = {}
    for a, b in PAIRS:
        keep = [i for i in range(n) if i not in missing[a] | missing[b]]
        sub = {a: features[a][keep], b: features[b][keep]}
        dropped[f"{a}_{b}"] = contrastive_loss(sub, torch.tensor(SCALE), labels=labels[keep], positives=positives)[0]
    expected_total = torch.stack(list(dropped.values())).mean()
    expected_grads = torch.autograd.grad(expected_total, [features[m] for m in MODALITIES])

    for name, value in dropped.items():
        torch.testing.assert_close(pairs[name], value)
    torch.testing.assert_close(total, expected_total)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    # Text sample 4 is in no valid pair (its image and barcode are both missing): exactly no gradient.
    assert torch.count_nonzero(grads[2][4]) == 0
    # The dropped-batch values are themselves CLIP's loss on the kept samples (sample positives).
    if positives == "sample":
        keep = [0, 2, 3, 5, 6, 8, 9]
        torch.testing.assert_close(pairs["image_dna"], clip_reference(features["image"][keep].detach(),
                                                                      features["dna"][keep].detach(), SCALE))


@pytest.mark.parametrize("positives", ["species", "bin"])
@pytest.mark.parametrize("labels", [[5, 3, 9, 0, 1, 2, 7, 4], [-1] * 8, [0, 1, 2, 3, -1, -1, 4, 5]])
def test_distinct_labels_reduce_to_sample_positives(positives: str, labels: list[int]) -> None:
    features = normalised(3, 8)
    expected_total, expected = contrastive_loss(features, torch.tensor(SCALE))
    total, pairs = contrastive_loss(features, torch.tensor(SCALE), labels=torch.tensor(labels), positives=positives)
    torch.testing.assert_close(total, expected_total)
    for name in expected:
        torch.testing.assert_close(pairs[name], expected[name])


@pytest.mark.parametrize("drop", [(), (2, 6)])
def test_duplicated_labels_give_uniform_soft_targets(drop: tuple[int, ...]) -> None:
    """Checked against a loop over positives, also with masked samples (whose labels must not count)."""
    labels = [0, 1, 0, 2, -1, 1, 0, -1, 3, 2]
    n = len(labels)
    features = normalised(4, n)
    masks = {"image": torch.tensor([i not in drop for i in range(n)])}
    total, pairs = contrastive_loss(features, torch.tensor(SCALE), masks=masks, labels=torch.tensor(labels),
                                    positives="species")
    keep = [i for i in range(n) if i not in drop]
    kept_labels = [labels[i] for i in keep]
    expected = {
        "image_dna": multi_positive_reference(features["image"][keep], features["dna"][keep], kept_labels, SCALE),
        "image_text": multi_positive_reference(features["image"][keep], features["text"][keep], kept_labels, SCALE),
        "dna_text": multi_positive_reference(features["dna"], features["text"], labels, SCALE),
    }
    for name, value in expected.items():
        torch.testing.assert_close(pairs[name], value)
    torch.testing.assert_close(total, torch.stack(list(expected.values())).mean())
    # Not vacuous: treating same-species samples as negatives (the paper) gives a different loss.
    sample_total, _ = contrastive_loss(features, torch.tensor(SCALE), masks=masks)
    assert not torch.isclose(total, sample_total)


def test_gradients_reach_every_feature_and_a_learnable_scale() -> None:
    features = leaves(normalised(5, 6))
    log_scale = nn.Parameter(torch.tensor(math.log(SCALE)))
    total, _ = contrastive_loss(features, log_scale.exp(), labels=torch.tensor([0, 0, 1, 2, 1, -1]),
                                positives="species")
    total.backward()
    for m in MODALITIES:
        grad = features[m].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, m
    assert log_scale.grad is not None and torch.isfinite(log_scale.grad) and log_scale.grad != 0


def test_computes_in_float32_under_autocast() -> None:
    """bf16 features under autocast: the loss must equal the float32 loss of the same values, not a bf16 one."""
    features = {m: f.to(torch.bfloat16).requires_grad_() for m, f in normalised(6, 16, dim=32).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, pairs = contrastive_loss(features, torch.tensor(SCALE))
    expected, _ = contrastive_loss({m: f.detach().float() for m, f in features.items()}, torch.tensor(SCALE))
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in pairs.values())
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(features[m].grad is not None and features[m].grad.dtype == torch.bfloat16 for m in MODALITIES)


def test_empty_pairs_are_zero_and_left_out_of_the_mean() -> None:
    n = 6
    features = leaves(normalised(7, n))
    masks = {"image": torch.arange(n) < 3, "dna": torch.arange(n) >= 3}  # no sample has both
    total, pairs = contrastive_loss(features, torch.tensor(SCALE), masks=masks)
    assert pairs["image_dna"].item() == 0.0
    torch.testing.assert_close(total, (pairs["image_text"] + pairs["dna_text"]) / 2)
    total.backward()
    assert all(torch.isfinite(features[m].grad).all() for m in MODALITIES)

    nothing = {m: torch.zeros(n, dtype=torch.bool) for m in MODALITIES}
    scale = torch.tensor(SCALE, requires_grad=True)
    total, pairs = contrastive_loss(leaves(normalised(7, n)), scale, masks=nothing)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in pairs.values())
    total.backward()  # still connected to the graph, so DDP sees every parameter used
    assert scale.grad is not None and scale.grad.item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positives": "genus"}, "positives"),
        ({"positives": "species"}, "needs labels"),
        ({"positives": "bin", "labels": torch.zeros(3)}, "integer"),
        ({"masks": {"image": torch.ones(4, dtype=torch.bool)}}, "masks"),
        ({"masks": {"image": torch.ones(3)}}, "masks"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        contrastive_loss(normalised(8, 3), torch.tensor(SCALE), **kwargs)


@pytest.mark.parametrize(
    "features",
    [
        {"image": torch.zeros(3, 4)},
        {"image": torch.zeros(3, 4), "barcode": torch.zeros(3, 4)},
        {"image": torch.zeros(3, 4), "dna": torch.zeros(2, 4)},
    ],
)
def test_rejects_bad_features(features: dict) -> None:
    with pytest.raises(ValueError):
        contrastive_loss(features, torch.tensor(SCALE))


def test_gathers_are_identity_without_a_process_group() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t
    mask = torch.tensor([True, False, True])
    assert gather_no_grad(mask) is mask


# ---------------------------------------------------------------------------------------------------------------
# Two processes, gloo
# ---------------------------------------------------------------------------------------------------------------
#
# How gradients relate.  Every rank reports the same global loss L = Σ_r ℓ_r, but builds only its own
# share ℓ_r (its local samples as queries against the gathered keys) and back-propagates WORLD · ℓ_r.
# torch.distributed.nn.functional.all_gather's backward sends each rank the gradient that *every* rank
# computed for that rank's slice and sums them, so rank r ends up with
#
#     grad_r(features_r) = WORLD · ∂L/∂features[slice r]                      (checked below)
#
# while the replicated, un-gathered logit_scale gets WORLD · ∂ℓ_r/∂scale, which differs between ranks and
# averages to ∂L/∂scale.  DDP averages parameter gradients over ranks (divides by WORLD), which cancels
# the factor for the encoder parameters and turns the scale's into ∂L/∂scale, so the optimiser sees
# exactly the single-process gradient of the whole batch:
#
#     DDP grad(θ) = (1/WORLD) Σ_r WORLD · ∂L/∂features_r · ∂features_r/∂θ = ∂L/∂θ   (checked with real DDP)


@dataclass(frozen=True)
class Case:
    """One global batch split over the ranks; `sizes` are the ranks' local batch sizes (may differ)."""

    sizes: tuple[int, ...]
    positives: str = "sample"
    masked: bool = False
    seed: int = 0

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def bounds(self, rank: int) -> tuple[int, int]:
        start = sum(self.sizes[:rank])
        return start, start + self.sizes[rank]

    def masks(self) -> dict[str, torch.Tensor] | None:
        """Rank 1 has no image at all (so no local image pair: it must still join every collective);
        barcodes are missing at random; text has no mask."""
        if not self.masked:
            return None
        image = torch.ones(self.n, dtype=torch.bool)
        image[self.bounds(1)[0]:] = False
        image[0] = False
        dna = torch.rand(self.n, generator=torch.Generator().manual_seed(self.seed + 1)) > 0.3
        dna[1] = True  # at least one image-DNA pair survives
        return {"image": image, "dna": dna}

    def local(self, lo: int, hi: int) -> dict:
        """Keyword arguments of `contrastive_loss` (masks, labels, positives) for samples lo:hi."""
        masks, labels = self.masks(), self.labels()
        return {"masks": None if masks is None else {m: v[lo:hi] for m, v in masks.items()},
                "labels": None if labels is None else labels[lo:hi], "positives": self.positives}

    def labels(self) -> torch.Tensor | None:
        """Few classes, so same-label samples sit on both ranks; some unknown (-1)."""
        if self.positives == "sample":
            return None
        gen = torch.Generator().manual_seed(self.seed + 2)
        return torch.randint(-1, 3, (self.n,), generator=gen)


CASES = {
    "clip": Case((4, 4), seed=10),
    "masked_species": Case((6, 6), "species", masked=True, seed=20),
    "uneven_masked_bin": Case((5, 3), "bin", masked=True, seed=30),
}
DDP_CASE = Case((5, 3), "species", masked=True, seed=40)


class TinyEncoders(nn.Module):
    """A linear 'encoder' per modality and a learnable log-scale: enough parameters to check DDP's gradients."""

    def __init__(self, dim_in: int = 5, dim_out: int = 4) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(dim_in, dim_out) for m in MODALITIES})
        self.log_scale = nn.Parameter(torch.tensor(math.log(SCALE)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {m: F.normalize(self.proj[m](x), dim=1) for m, x in inputs.items()}, self.log_scale.exp()


def tiny_model_and_inputs(case: Case) -> tuple[TinyEncoders, dict[str, torch.Tensor]]:
    torch.manual_seed(case.seed)
    model = TinyEncoders()
    gen = torch.Generator().manual_seed(case.seed + 3)
    return model, {m: torch.randn(case.n, 5, generator=gen) for m in MODALITIES}


def run_case(case: Case, lo: int, hi: int, gather: bool = True) -> dict:
    """Loss, pair losses and gradients (features, scale) for samples lo:hi of the case's global batch."""
    features = {m: f[lo:hi].clone().requires_grad_() for m, f in normalised(case.seed, case.n).items()}
    scale = torch.tensor(SCALE, requires_grad=True)
    total, pairs = contrastive_loss(features, scale, **case.local(lo, hi), gather=gather)
    total.backward()
    return {"total": total.detach(), "pairs": {k: v.detach() for k, v in pairs.items()},
            "grads": {m: f.grad for m, f in features.items()}, "scale_grad": scale.grad}


def run_ddp_case(case: Case, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Parameter gradients of the tiny encoders on samples lo:hi, through DDP when a process group exists."""
    model, inputs = tiny_model_and_inputs(case)
    if dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(model)
    features, scale = model({m: x[lo:hi] for m, x in inputs.items()})
    total, _ = contrastive_loss(features, scale, **case.local(lo, hi))
    total.backward()
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def _rank_results(rank: int) -> dict:
    """One rank: every case with gathering, the clip case without, and the DDP case."""
    results = {name: run_case(case, *case.bounds(rank)) for name, case in CASES.items()}
    results["clip_local"] = run_case(CASES["clip"], *CASES["clip"].bounds(rank), gather=False)
    results["ddp"] = run_ddp_case(DDP_CASE, *DDP_CASE.bounds(rank))
    return results


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list[dict]:
    """WORLD gloo processes, started once for all distributed checks; their results, by rank."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return run_ranks(_rank_results, WORLD, tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("name", list(CASES))
def test_distributed_loss_and_gradients_match_single_process(distributed_results: list[dict], name: str) -> None:
    """Each rank: loss = whole-batch loss; own feature grads = WORLD × the whole-batch grads of its slice;
    the scale's gradient, averaged over ranks as DDP does, is the whole-batch one."""
    case = CASES[name]
    reference = run_case(case, 0, case.n)
    for rank, results in enumerate(distributed_results):
        got = results[name]
        lo, hi = case.bounds(rank)
        torch.testing.assert_close(got["total"], reference["total"])
        assert got["pairs"].keys() == reference["pairs"].keys()
        for pair, value in reference["pairs"].items():
            torch.testing.assert_close(got["pairs"][pair], value)
        for m in MODALITIES:
            torch.testing.assert_close(got["grads"][m], WORLD * reference["grads"][m][lo:hi])
    # The scale's gradient is each rank's own rows' (times WORLD): different per rank, right on average.
    scale_grads = [results[name]["scale_grad"] for results in distributed_results]
    torch.testing.assert_close(sum(scale_grads) / WORLD, reference["scale_grad"])
    assert not torch.isclose(scale_grads[0], scale_grads[1])  # each rank really scored only its own rows
    # The same statement the other way round: the ranks' gradients, concatenated and divided by WORLD (what
    # DDP's averaging does to everything downstream of them), are the single-process gradients.
    for m in MODALITIES:
        stitched = torch.cat([results[name]["grads"][m] for results in distributed_results]) / WORLD
        torch.testing.assert_close(stitched, reference["grads"][m])
    if case.masked:  # rank 1 has no image, so its image features get no gradient at all
        assert torch.count_nonzero(distributed_results[1][name]["grads"]["image"]) == 0


def test_distributed_without_gather_is_the_local_loss(distributed_results: list[dict]) -> None:
    case = CASES["clip"]
    for rank, results in enumerate(distributed_results):
        local = run_case(case, *case.bounds(rank))  # no process group here: the rank's slice alone
        torch.testing.assert_close(results["clip_local"]["total"], local["total"])
        for m in MODALITIES:
            torch.testing.assert_close(results["clip_local"]["grads"][m], local["grads"][m])


def test_ddp_parameter_gradients_equal_single_process(distributed_results: list[dict]) -> None:
    """Through real DDP (gradient averaging), uneven batches, masks and species positives: exact gradients."""
    reference = run_ddp_case(DDP_CASE, 0, DDP_CASE.n)
    for results in distributed_results:
        assert results["ddp"].keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(results["ddp"][name], grad, msg=lambda text, name=name: f"{name}: {text}")
