"""Training throughput and peak memory of the paper-sized CLIBD model (ViT-B/16 224 px, BarcodeBERT
12 layers × 768, BERT-small text) on the device present: one full step (3 encoders forward, the
3-pair contrastive loss, backward, AdamW) per batch, bf16 autocast on CUDA, fp32 on CPU.

    python benchmarks/train_throughput.py                       # this machine, writes RESULTS.md
    python benchmarks/train_throughput.py --json OUT.json --no-write   # e.g. on a lent GPU
    python benchmarks/train_throughput.py --from-json OUT.json  # record a run made elsewhere

MFU (model FLOPs utilisation) = FLOPs of one step / step time / the device's peak: the FLOPs are counted
by torch (``torch.utils.flop_counter.FlopCounterMode``) on one real forward + backward of the model and
loss at the measured batch, not estimated from parameter counts; the optimizer step is left out (it is
O(parameters), negligible).  The peak is the dense bf16 figure of the GPU (a small table by name, or
``--peak-tflops``); on CPU MFU is reported only with ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import invocation, machine, write_section

SECTION = "Training throughput (paper model sizes)"


def synthetic_batch(model, batch: int, image_size: int, device, text_vocab: int) -> dict:
    import torch

    dna = model.dna_encoder.tokenizer
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.rand(batch, 3, image_size, image_size, generator=generator).to(device),
        "dna_input_ids": torch.randint(dna.offset, dna.vocab_size, (batch, dna.seq_len),
                                       generator=generator).to(device),
        "dna_attention_mask": torch.ones(batch, dna.seq_len, dtype=torch.long).to(device),
        "text_input_ids": torch.randint(5, text_vocab, (batch, 20), generator=generator).to(device),
        "text_attention_mask": torch.ones(batch, 20, dtype=torch.long).to(device),
    }


#: Dense bf16 tensor-core peak in TFLOP/s (vendor data sheets, SXM parts), matched by name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from PEAK_BF16_TFLOPS, or None when unknown (or a CPU)."""
    import torch

    if not device_name.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device_name))
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def step_flops(model, data: dict, bf16: bool) -> int:
    """FLOPs of one training step's forward and backward (encoders and contrastive loss), counted by torch.

    Runs one real step under FlopCounterMode, which counts every matmul, convolution and attention
    kernel the model dispatches; the gradients it leaves are cleared.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clibd_training.losses import contrastive_loss

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            features = model(data)
            loss, _ = contrastive_loss(features, model.scale())
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


VARIANTS = ("eager", "fused", "compiled")
"""What is switched on, cumulatively: ``eager`` = AdamW's default (foreach) kernels; ``fused`` = the fused
CUDA AdamW that the trainer uses on a GPU; ``compiled`` = fused + each transformer block compiled
(``compile_blocks``, the trainer's ``compile: true``)."""


def attention_kernels(model) -> str:
    """Which attention each encoder runs: timm's fused (SDPA) flag, the BERTs' attn_implementation."""
    parts = []
    if model.image_encoder is not None:
        blocks = getattr(model.image_encoder.backbone, "blocks", None)
        fused = getattr(getattr(blocks[0], "attn", None), "fused_attn", None) if blocks else None
        parts.append(f"image {'sdpa' if fused else 'eager' if fused is not None else '?'}")
    for name in ("dna", "text"):
        encoder = getattr(model, f"{name}_encoder")
        if encoder is not None:
            parts.append(f"{name} {encoder.bert.config._attn_implementation}")
    return ", ".join(parts)


def measure(batches: list[int], variants: list[str], steps: int, warmup: int, device_name: str,
            peak: float | None = None, on_row=None) -> list[dict]:
    """One row per (variant, batch): samples/s, peak memory, counted FLOPs and MFU.

    One model serves every row (variants in the order of VARIANTS, since compiling is in place), so the
    rows compare like with like in one process; the FLOPs of each batch are counted once, eagerly.
    A batch that does not fit is a row saying so, not the end of the run.
    """
    import torch

    from clibd_training.losses import contrastive_loss
    from clibd_training.models import build_model, compile_blocks, paper_config
    from clibd_training.text_tokenizer import train_text_tokenizer

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    names = [f"Order{i % 20} Family{i % 50} Genus{i % 300} Genus{i % 300} sp{i}" for i in range(3000)]
    tokenizer = train_text_tokenizer(names)
    config = paper_config(pretrained=False)
    model = build_model(config, text_tokenizer=tokenizer).to(device)
    params = sum(p.numel() for p in model.parameters())
    attention = attention_kernels(model)
    bf16 = cuda
    flops: dict[int, int] = {}
    rows = []
    for variant in sorted(set(variants), key=VARIANTS.index):
        if variant == "compiled":
            compile_blocks(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=(variant != "eager" and cuda) or None)
        for batch in batches:
            row = {"device": device_name, "variant": variant, "batch": batch, "steps": steps,
                   "precision": "bf16 autocast" if bf16 else "fp32", "parameters_m": params / 1e6,
                   "torch": torch.__version__, "attention": attention, "peak_tflops": peak}
            try:
                data = synthetic_batch(model, batch, config.image.image_size, device, len(tokenizer))
                if batch not in flops:
                    flops[batch] = step_flops(model, data, bf16)
                row.update(_time_steps(model, optimizer, data, steps, warmup, bf16, device, contrastive_loss))
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as exc:  # e.g. a compile failure: a row saying so, and the other rows still run
                row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            else:
                step_s = row["step_s"]
                row.update(step_tflop=flops[batch] / 1e12, achieved_tflops=flops[batch] / step_s / 1e12,
                           mfu=flops[batch] / step_s / (peak * 1e12) if peak else None)
            finally:
                data = None
                optimizer.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.empty_cache()
            print(render_row(row), flush=True)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
        del optimizer
    return rows


def _time_steps(model, optimizer, data: dict, steps: int, warmup: int, bf16: bool, device, contrastive_loss) -> dict:
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            features = model(data)
            loss, _ = contrastive_loss(features, model.scale())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    memory = (torch.cuda.max_memory_allocated() if cuda
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"samples_per_s": data["pixel_values"].shape[0] * steps / elapsed, "step_s": elapsed / steps,
            "peak_memory_gib": memory / 2**30}


HEADER = ["| device | variant | precision | batch | samples/s | s/step | TFLOP/step | TFLOP/s | MFU "
          "| peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]


def render_row(r: dict) -> str:
    if r.get("error"):
        return f"| {r['device']} | {r.get('variant', 'eager')} | {r['precision']} | {r['batch']} | {r['error']} |||||"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "–"
    return (f"| {r['device']} | {r.get('variant', 'eager')} | {r['precision']} | {r['batch']} | "
            f"{r['samples_per_s']:.1f} | {r['step_s']:.3f} | {r.get('step_tflop', float('nan')):.2f} | "
            f"{r.get('achieved_tflops', float('nan')):.1f} | {mfu} | {r['peak_memory_gib']:.1f} |")


def render(results: list[dict]) -> str:
    lines = HEADER + [render_row(r) for r in results]
    r = results[0]
    lines += ["", f"Model: {r['parameters_m']:.0f} M parameters (image + DNA + text encoders and heads), torch "
              f"{r['torch']}, attention: {r.get('attention', '?')}; {r['steps']} timed steps after warm-up, random "
              "inputs of the real shapes (224 px images, 165 DNA tokens, 20 text tokens). Variants: eager = "
              "AdamW's default foreach kernels; fused = fused CUDA AdamW (the trainer's default on a GPU); "
              "compiled = fused + every transformer block compiled (`compile: true`). Peak memory is CUDA's max "
              "allocated on a GPU, the process's max RSS on CPU. TFLOP/step: forward + backward counted by "
              f"torch's FlopCounterMode; MFU against a dense bf16 peak of {r.get('peak_tflops')} TFLOP/s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default: 8 on CPU, 64,128,256 on GPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--variants", default="eager", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--from-json", type=Path, help="record results measured elsewhere")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: by GPU name)")
    args = parser.parse_args()
    if args.from_json:
        payload = json.loads(args.from_json.read_text())
        write_section(SECTION + f" — {payload['machine']}", render(payload["results"]), payload["command"],
                      measured_on=payload["machine"])
        return
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sizes = [int(b) for b in (args.batch_sizes or ("64,128,256" if device == "cuda" else "8")).split(",")]
    steps = args.steps or (20 if device == "cuda" else 3)
    peak = args.peak_tflops or peak_tflops(device)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))} (choose from {', '.join(VARIANTS)})")
    command = invocation()

    def save(rows: list[dict]) -> None:  # after every row: a run stopped by a timeout keeps what it measured
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "results": rows, "command": command}, indent=1))

    results = measure(sizes, variants, steps, warmup=3 if device == "cuda" else 1, device_name=device, peak=peak,
                      on_row=save)
    text = render(results)
    print(text)
    if not args.no_write:
        write_section(SECTION + f" — {machine()}", text, command)


if __name__ == "__main__":
    main()
