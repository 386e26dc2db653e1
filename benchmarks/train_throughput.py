"""Training throughput and peak memory of the paper-sized CLIBD model (ViT-B/16 224 px, BarcodeBERT
12 layers × 768, BERT-small text) on the device present: one full step (3 encoders forward, the
3-pair contrastive loss, backward, AdamW) per batch, bf16 autocast on CUDA, fp32 on CPU.

    python benchmarks/train_throughput.py                       # this machine, writes RESULTS.md
    python benchmarks/train_throughput.py --json OUT.json --no-write   # e.g. on a lent GPU
    python benchmarks/train_throughput.py --from-json OUT.json  # record a run made elsewhere
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section

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


def measure(batch: int, steps: int, warmup: int, device_name: str) -> dict:
    import torch

    from clibd_training.losses import contrastive_loss
    from clibd_training.models import build_model, paper_config
    from clibd_training.text_tokenizer import train_text_tokenizer

    device = torch.device(device_name)
    names = [f"Order{i % 20} Family{i % 50} Genus{i % 300} Genus{i % 300} sp{i}" for i in range(3000)]
    tokenizer = train_text_tokenizer(names)
    config = paper_config(pretrained=False)
    model = build_model(config, text_tokenizer=tokenizer).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    bf16 = device.type == "cuda"
    data = synthetic_batch(model, batch, config.image.image_size, device, len(tokenizer))
    if device.type == "cuda":
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
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in model.parameters())
    return {"device": device_name, "batch": batch, "steps": steps, "precision": "bf16 autocast" if bf16 else "fp32",
            "samples_per_s": batch * steps / elapsed, "step_s": elapsed / steps, "peak_memory_gib": peak / 2**30,
            "parameters_m": params / 1e6, "torch": torch.__version__}


def render(results: list[dict]) -> str:
    lines = ["| device | precision | batch | samples/s | s/step | peak memory (GiB) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['device']} | {r['precision']} | {r['batch']} | {r['samples_per_s']:.1f} | "
                     f"{r['step_s']:.3f} | {r['peak_memory_gib']:.1f} |")
    r = results[0]
    lines += ["", f"Model: {r['parameters_m']:.0f} M parameters (image + DNA + text encoders and heads), torch "
              f"{r['torch']}; {r['steps']} timed steps after warm-up, random inputs of the real shapes "
              "(224 px images, 165 DNA tokens, 20 text tokens). Peak memory is CUDA's max allocated on a GPU, "
              "the process's max RSS on CPU."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default: 8 on CPU, 64,128,256 on GPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--from-json", type=Path, help="record results measured elsewhere")
    parser.add_argument("--no-write", action="store_true")
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
    results = [measure(b, steps, warmup=3 if device == "cuda" else 1, device_name=device) for b in sizes]
    text = render(results)
    print(text)
    command = "python benchmarks/train_throughput.py" + "".join(f" {a}" for a in sys.argv[1:])
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results, "command": command}, indent=1))
    if not args.no_write:
        write_section(SECTION + f" — {machine()}", text, command)


if __name__ == "__main__":
    main()
