"""Accumulation that enlarges the contrastive batch, and the temperature clamped after each step.

* Two gloo processes under real DDP, float64: K micro-batches of B per rank through
  ``accumulate_large_batch`` must give the loss and parameter gradients of one process holding all
  2·K·B samples in one batch (with masks, species positives and a learned temperature), and plain
  accumulation (each micro-batch its own contrastive batch) must not.
* On the real CLIBD model with dropout: the recomputed micro-batches draw the dropout masks of the
  cached pass, so the gradient equals that of one forward of all micro-batches in order.
* ``logit_scale`` above the cap after a step is clamped back to the cap, and keeps its gradient.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gloo_ranks import run_ranks  # noqa: E402
from torch import nn  # noqa: E402

from clibd_cli.schema import MODALITIES  # noqa: E402
from clibd_training import accumulation  # noqa: E402
from clibd_training.accumulation import accumulate_large_batch  # noqa: E402
from clibd_training.contrastive import ContrastiveTask  # noqa: E402
from clibd_training.losses import contrastive_loss  # noqa: E402

WORLD, PASSES, MICRO = 2, 3, 4  # 2 ranks × 3 micro-batches × 4 samples = one contrastive batch of 24
N = WORLD * PASSES * MICRO


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is ~20x faster than several on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyModel(nn.Module):
    """A linear encoder per modality and a learned temperature, with the interface ContrastiveTask uses."""

    def __init__(self, dim_in: int = 6, dim_out: int = 5, cap: float = math.log(100)) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(dim_in, dim_out) for m in MODALITIES})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.config = SimpleNamespace(modalities=MODALITIES, max_logit_scale=cap)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: F.normalize(self.proj[m](batch[f"x_{m}"]), dim=1) for m in MODALITIES}

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp()


class Task(ContrastiveTask):
    """The real ContrastiveTask's encode / features_loss / loss, around a given model (no data set needed)."""

    def __init__(self, model: nn.Module, positives: str = "species") -> None:  # no super().__init__: no data set
        self.model = model
        self.modalities = tuple(model.config.modalities)
        self.cfg = SimpleNamespace(positives=positives)
        self.env = SimpleNamespace(device=torch.device("cpu"))


def global_batch() -> dict[str, torch.Tensor]:
    """N samples: inputs, missing images/barcodes, few species (so positives span ranks and micro-batches)."""
    gen = torch.Generator().manual_seed(7)
    batch = {f"x_{m}": torch.randn(N, 6, generator=gen, dtype=torch.float64) for m in MODALITIES}
    batch["has_image"] = torch.rand(N, generator=gen) > 0.2
    batch["has_dna"] = torch.rand(N, generator=gen) > 0.2
    batch["species_index"] = torch.randint(-1, 5, (N,), generator=gen)
    return batch


def rows(batch: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    return {k: v[lo:hi] for k, v in batch.items()}


def micro_batches(rank: int) -> list[dict[str, torch.Tensor]]:
    """Rank r holds samples [r·K·B, (r+1)·K·B) of the global batch, in K micro-batches of B."""
    batch = global_batch()
    start = rank * PASSES * MICRO
    return [rows(batch, start + j * MICRO, start + (j + 1) * MICRO) for j in range(PASSES)]


def fresh_model() -> TinyModel:
    torch.manual_seed(3)
    return TinyModel().double()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _rank_results(rank: int) -> dict:
    """One rank: K micro-batches through accumulate_large_batch under DDP; the loss and gradients."""
    model = fresh_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    loss, parts = accumulate_large_batch(Task(model), ddp, micro_batches(rank))
    return {"loss": loss, "parts": parts, "grads": grads(model)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return run_ranks(_rank_results, WORLD, tmp_path_factory.mktemp("accum"))


def one_big_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss, pair losses and gradients of one process holding all N samples in one step."""
    model = fresh_model()
    loss, parts = Task(model).loss(model, global_batch())
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, grads(model)


def assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_accumulation_on_two_ranks_equals_one_big_batch(two_ranks: list[dict]) -> None:
    loss, parts, want = one_big_batch()
    for result in two_ranks:
        assert result["loss"].dtype == torch.float64
        torch.testing.assert_close(result["loss"], loss, rtol=1e-12, atol=0)
        for name, value in parts.items():
            torch.testing.assert_close(result["parts"][name], value, rtol=1e-12, atol=0)
        assert_same_grads(result["grads"], want)
    assert want["logit_scale"].abs() > 1e-6  # the temperature's gradient is compared, not vacuously zero


def test_plain_accumulation_would_not_be_one_big_batch() -> None:
    """What the engine did before: each step of K micro-batches, each its own contrastive batch of WORLD·B."""
    _, _, want = one_big_batch()
    model = fresh_model()
    task = Task(model)
    batch = global_batch()
    for j in range(PASSES):  # micro-batch j of every rank, as gathering would have put them together
        parts = [rows(batch, r * PASSES * MICRO + j * MICRO, r * PASSES * MICRO + (j + 1) * MICRO)
                 for r in range(WORLD)]
        micro = {k: torch.cat([p[k] for p in parts]) for k in batch}
        (task.loss(model, micro)[0] / PASSES).backward()
    got = grads(model)
    assert not torch.allclose(got["proj.image.weight"], want["proj.image.weight"], rtol=1e-3)
    assert not torch.allclose(got["logit_scale"], want["logit_scale"], rtol=1e-3)


def test_accumulation_in_one_process_equals_one_big_batch() -> None:
    """Without a process group: the N samples as N / B micro-batches of B in one process."""
    loss, _, want = one_big_batch()
    model = fresh_model()
    batch = global_batch()
    micros = [rows(batch, i * MICRO, (i + 1) * MICRO) for i in range(N // MICRO)]
    got_loss, _ = accumulate_large_batch(Task(model), model, micros)
    torch.testing.assert_close(got_loss, loss, rtol=1e-12, atol=0)
    assert_same_grads(grads(model), want)


# ---------------------------------------------------------------------------------------------------------------
# Dropout: the real CLIBD model (BERT dropout 0.1), train mode
# ---------------------------------------------------------------------------------------------------------------


def clibd_with_dropout():
    from dataclasses import replace

    from clibd_training.models import build_model, tiny_config

    torch.manual_seed(0)
    model = build_model(replace(tiny_config(), modalities=("image", "dna")), load_pretrained=False).train()
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())  # or this test proves nothing
    return model


def clibd_micro_batches(model) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for j in range(2):
        sequences = ["".join("ACGT"[int(i)] for i in torch.randint(0, 4, (40,), generator=gen)) for _ in range(3)]
        batch = {"pixel_values": torch.randn(3, 3, 32, 32, generator=gen)}
        batch |= model.dna_encoder.tokenize(sequences, prefix="dna_")
        batch["species_index"] = torch.tensor([0, 1, 0]) + j
        out.append(batch)
    return out


def test_recomputed_micro_batches_replay_the_cached_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reference: one forward of both micro-batches in order from the same RNG state, one loss, one backward."""
    model = clibd_with_dropout()
    task = Task(model)
    micros = clibd_micro_batches(model)

    torch.manual_seed(11)
    features = [task.encode(model, b) for b in micros]
    loss = task.features_loss({k: torch.cat([f[k] for f in features]) for k in features[0]})[0]
    loss.backward()
    want, rng_after = grads(model), torch.get_rng_state()
    model.zero_grad(set_to_none=True)

    torch.manual_seed(11)
    got_loss, _ = accumulate_large_batch(task, model, micros)
    torch.testing.assert_close(got_loss, loss.detach())
    for name, value in want.items():
        torch.testing.assert_close(model.get_parameter(name).grad, value, msg=lambda m, name=name: f"{name}: {m}")
    assert torch.equal(torch.get_rng_state(), rng_after)  # later draws continue as after the cached pass

    # Not vacuous: without restoring the RNG, the recomputed micro-batches drop other units.
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(accumulation, "set_torch_rng_state", lambda state: None)
    torch.manual_seed(11)
    accumulate_large_batch(task, model, micros)
    dna = "dna_encoder.head.weight"
    assert not torch.allclose(model.get_parameter(dna).grad, want[dna], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# The temperature: clamped after the step, never inside forward
# ---------------------------------------------------------------------------------------------------------------


def test_logit_scale_is_clamped_after_the_step_and_keeps_its_gradient() -> None:
    model = clibd_with_dropout()
    cap = model.config.max_logit_scale
    with torch.no_grad():
        model.logit_scale.fill_(cap - 0.01)
    optimizer = torch.optim.SGD([model.logit_scale], lr=0.05)
    (-model.scale()).backward()  # a loss that wants a larger scale: the step (≈ +5) overshoots the cap
    optimizer.step()
    assert model.logit_scale.item() > cap + 1
    model.clamp_logit_scale()
    assert model.logit_scale.item() == torch.tensor(cap, dtype=torch.float32).item()
    assert model.scale().item() == pytest.approx(100.0, rel=1e-6)

    # The next step: positives pointing away from each other, so the loss wants a smaller scale.  Its
    # gradient reaches the parameter at the cap (a clamp inside forward gave exactly 0 above it).
    optimizer.zero_grad(set_to_none=True)
    image = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    loss, _ = contrastive_loss({"image": image, "dna": -image}, model.scale())
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.item() > 0
    optimizer.step()
    model.clamp_logit_scale()
    assert model.logit_scale.item() < cap  # it came back down
