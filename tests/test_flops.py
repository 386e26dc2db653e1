"""benchmarks/train_throughput.py's FLOP count for MFU: torch's FlopCounterMode on one real training step."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_flops_are_counted_from_the_model_and_grow_with_the_batch() -> None:
    from clibd_training.models import build_model, tiny_config

    bench = load_benchmark()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(replace(tiny_config(), modalities=("image", "dna")), load_pretrained=False)
        gen = torch.Generator().manual_seed(0)

        def batch(n: int) -> dict:
            ids = torch.randint(model.dna_encoder.tokenizer.offset, model.dna_encoder.tokenizer.vocab_size,
                                (n, 40), generator=gen)
            return {"pixel_values": torch.randn(n, 3, 32, 32, generator=gen), "dna_input_ids": ids,
                    "dna_attention_mask": torch.ones_like(ids)}

        small, large = (bench.step_flops(model, batch(n), bf16=False) for n in (2, 4))
    finally:
        torch.set_num_threads(before)
    assert small > 0
    # Encoders cost the same per sample; only the loss's B x B logits grow faster, and they are tiny here.
    assert large / small == pytest.approx(2.0, rel=0.02)
    # Forward + backward of the linear layers alone is at least 6 x weights x samples (2 forward, 4 backward),
    # more since transformers apply them to every token.
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert small > 6 * linear * 2
    assert all(p.grad is None for p in model.parameters())  # the counted step leaves no gradient behind
