"""Encoder inference speed on the CPU: PyTorch eager fp32 vs ONNX fp32 vs ONNX int8, and `clibd classify` end to end.

    python benchmarks/encoders.py [--quick] [--out RESULTS.md] [--no-write]

Why: the field runtime (`clibd_cli`) runs exported ONNX encoders instead of PyTorch.  That is only worth
it if ONNX fp32 is at least as fast as eager PyTorch and the int8 variant is about twice as fast while its
embeddings stay close to fp32; and `clibd classify` (photo decoding in a worker pool, search, report) must
keep the encoder the bottleneck (≥ 90 % of encoder-only photos/s).  This measures all three.

Models are the paper's sizes with random weights (speed does not depend on the values): timm ViT-B/16 at
224 px and BarcodeBERT (12 layers × 768, 12 heads, FFN 3072, 4-mers, 660 bp → 165 tokens), restricted to
the image and DNA modalities.  They are exported once with :func:`clibd_export.onnx.export_bundle` (which
calls :func:`clibd_export.onnx.export_encoder` per modality and checks parity), int8 via
:func:`clibd_export.onnx.quantize_int8`
when the bundle rejects its own int8 (likely with random weights).

Other jobs may share this machine, so the backends are timed *interleaved* (one call each per round, the
order rotated every round) and compared as ratios within one run; each number is the median of the timed
rounds after warm-up.  torch uses ``torch.set_num_threads(2)``; onnxruntime its default intra-op threads.
Part 3 needs the BIOSCAN photos in ``../shared/data/images/bioscan1m_imgfilter_subset`` and is skipped
without them.  ``--quick`` (batch 1 and 4, fewer rounds, 8 photos) is a smoke run and writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS, invocation, write_section

SECTION = "Encoder inference on CPU: PyTorch eager vs ONNX fp32 vs ONNX int8 (paper sizes)"
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "bioscan1m_imgfilter_subset"
BENCHMARKED = ("image", "dna")  # the text encoder is not on the query path
BACKENDS = ("eager fp32", "ONNX fp32", "ONNX int8")
TORCH_THREADS = 2
BARCODE_BP = 658
INDEX_RECORDS = 50


@dataclass(frozen=True)
class Plan:
    """Batch sizes with (warm-up calls, timed rounds) per backend, and the part-3 workload."""

    rounds: dict[int, tuple[int, int]]
    classify_rounds: int
    photo_limit: int | None  # None: every photo in the folder


FULL = Plan(rounds={1: (2, 10), 32: (1, 3)}, classify_rounds=2, photo_limit=None)
QUICK = Plan(rounds={1: (1, 3), 4: (1, 2)}, classify_rounds=1, photo_limit=8)


@dataclass
class Row:
    modality: str
    batch: int
    backend: str
    rounds: int
    seconds: float  # median per call
    cosine_min: float = float("nan")
    cosine_mean: float = float("nan")

    @property
    def items_per_s(self) -> float:
        return self.batch / self.seconds


# ---------------------------------------------------------------------------------------------
# Models and inputs


def paper_model():
    """The paper-size CLIBD model with image and DNA encoders only (no text tokenizer needed), random weights."""
    from clibd_training.models import build_model, paper_config

    config = dataclasses.replace(paper_config(pretrained=False), modalities=("image", "dna"))
    return build_model(config, None, load_pretrained=False).eval()


def export_models(model, directory: Path) -> tuple[Path, dict[str, dict[str, Path]], dict[str, str]]:
    """Bundle (fp32 + int8 where kept) and, per modality, the fp32/int8 ONNX files and how int8 was obtained."""
    from clibd_cli.preprocess import ImagePreprocessing
    from clibd_export.onnx import ExportSource, export_bundle, quantize_int8

    bundle = directory / "bundle"
    source = ExportSource(model, preprocessing=ImagePreprocessing(), text_tokenizer=None,
                          checkpoint=Path(__file__), sha256="bench")
    manifest = export_bundle(source, bundle, int8=True)
    files: dict[str, dict[str, Path]] = {}
    int8_origin: dict[str, str] = {}
    for modality in BENCHMARKED:
        spec = manifest["modalities"][modality]
        files[modality] = {"ONNX fp32": bundle / spec["file"]}
        if spec.get("int8"):
            files[modality]["ONNX int8"] = bundle / spec["int8"]["file"]
            int8_origin[modality] = "kept by export_bundle"
        else:
            target = directory / f"{modality}.int8.onnx"
            quantize_int8(bundle / spec["file"], target)
            files[modality]["ONNX int8"] = target
            reason = manifest.get("int8_rejected", {}).get(modality, {}).get("reason", "?")
            int8_origin[modality] = f"rejected by export_bundle ({reason}); quantised here with quantize_int8"
    return bundle, files, int8_origin


def photo_paths(limit: int | None) -> list[Path]:
    if not PHOTOS.is_dir():
        return []
    from clibd_cli.photos import IMAGE_EXTENSIONS

    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    return paths[:limit] if limit else paths


def preprocessed(paths: list[Path]) -> np.ndarray:
    from clibd_cli.preprocess import ImagePreprocessing, preprocess_image

    spec = ImagePreprocessing()
    return np.stack([preprocess_image(path, spec) for path in paths]) if paths else np.empty((0, 3, 224, 224),
                                                                                             np.float32)


def image_feeds(batch: int, pool: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Real preprocessed photos when there are any (repeated to fill the batch), else normalised noise."""
    if len(pool):
        pixels = pool[np.arange(batch) % len(pool)]
    else:
        from clibd_cli.preprocess import IMAGENET_MEAN, IMAGENET_STD

        mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
        std = np.array(IMAGENET_STD, np.float32)[:, None, None]
        pixels = (rng.random((batch, 3, 224, 224), dtype=np.float32) - mean) / std
    return {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)}


def random_barcodes(n: int, rng: np.random.Generator) -> list[str]:
    return ["".join(np.array(list("ACGT"))[rng.integers(0, 4, BARCODE_BP)]) for _ in range(n)]


def dna_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from clibd_cli.tokenizer import KmerTokenizer

    ids, mask = KmerTokenizer(k=4)(random_barcodes(batch, rng))
    return {"input_ids": ids, "attention_mask": mask}


def eager_call(model, modality: str, feeds: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    import torch

    def run() -> np.ndarray:
        with torch.inference_mode():
            if modality == "image":
                return model.encode_image(torch.from_numpy(feeds["pixel_values"])).numpy()
            return model.encode_dna(torch.from_numpy(feeds["input_ids"]),
                                    torch.from_numpy(feeds["attention_mask"])).numpy()

    return run


def onnx_call(session, feeds: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(session.run(None, feeds)[0])


# ---------------------------------------------------------------------------------------------
# Timing


def interleaved(calls: dict[str, Callable[[], Any]], warmup: int, rounds: int) -> tuple[dict[str, float], dict]:
    """Median seconds per call of each callable, timed one after another in rotated order every round."""
    names = list(calls)
    outputs = {}
    for _ in range(warmup):
        for name in names:
            outputs[name] = calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def encoder_speed(model, files: dict[str, dict[str, Path]], plan: Plan, pool: np.ndarray) -> list[Row]:
    """Part 1-2: items/s of each backend per modality and batch size, and agreement with eager."""
    from clibd_cli.bundle import make_session

    rng = np.random.default_rng(0)
    rows: list[Row] = []
    for modality in BENCHMARKED:
        sessions = {name: make_session(path, "cpu")[0] for name, path in files[modality].items()}
        for batch, (warmup, rounds) in plan.rounds.items():
            feeds = image_feeds(batch, pool, rng) if modality == "image" else dna_feeds(batch, rng)
            calls = {"eager fp32": eager_call(model, modality, feeds),
                     **{name: onnx_call(session, feeds) for name, session in sessions.items()}}
            medians, outputs = interleaved(calls, warmup, rounds)
            for name in BACKENDS:
                row = Row(modality, batch, name, rounds, medians[name])
                if name != "eager fp32":
                    cos = cosines(outputs["eager fp32"], outputs[name])
                    row.cosine_min, row.cosine_mean = float(cos.min()), float(cos.mean())
                rows.append(row)
                print(f"{modality} b={batch} {name}: {row.items_per_s:.2f} items/s", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Part 3: clibd classify end to end


def write_reference(path: Path, rng: np.random.Generator) -> None:
    """A tiny barcode reference with taxonomy: 10 species × 5 random barcodes."""
    lines = []
    for i in range(INDEX_RECORDS):
        species = i % 10
        genus = f"Genus{species % 5}"
        lines += [f">REF{i:04d}|Diptera|Family{species % 2}|{genus}|{genus} species{species}|",
                  random_barcodes(1, rng)[0]]
    path.write_text("\n".join(lines) + "\n")


def clibd_exe() -> str:
    return shutil.which("clibd") or sys.exit("clibd is not on PATH (pip install -e .)")


def run_classify(bundle: Path, index: Path, photos: list[str], out: Path, int8: bool) -> tuple[float, int]:
    """Wall seconds of one `clibd classify` process (start-up included) and the rows it wrote."""
    cmd = [clibd_exe(), "classify", *photos, "--model", str(bundle), "--index", str(index), "-o", str(out),
           "--force", "--device", "cpu", *(["--int8"] if int8 else [])]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    with out.open(newline="") as handle:
        rows = sum(1 for line in csv.reader(handle) if line and not line[0].startswith("#")) - 1
    return elapsed, rows


def decode_only(paths: list[Path]) -> float:
    """Seconds for the worker pool `clibd classify` uses to decode and preprocess every photo."""
    from clibd_cli.photos import Photo, iter_preprocessed
    from clibd_cli.preprocess import ImagePreprocessing

    start = time.perf_counter()
    for _ in iter_preprocessed([Photo(id=p.name, path=p) for p in paths], ImagePreprocessing()):
        pass
    return time.perf_counter() - start


def classify_speed(bundle: Path, files: dict[str, dict[str, Path]], plan: Plan, paths: list[Path],
                   directory: Path) -> dict[str, Any]:
    """Photos/s of `clibd classify` vs the same image ONNX model on the same photos, batches of 32."""
    from clibd_cli.bundle import ModelBundle, make_session

    reference = directory / "reference.fasta"
    write_reference(reference, np.random.default_rng(1))
    index = directory / "index"
    subprocess.run([clibd_exe(), "build-index", "--barcodes", str(reference), "--model", str(bundle), "-o",
                    str(index), "--no-calibrate", "--device", "cpu"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, text=True)
    manifest = ModelBundle.load(bundle, device="cpu", verify=False).manifest
    bundle_int8 = bool(manifest["modalities"]["image"].get("int8"))
    photos = [str(PHOTOS)] if plan.photo_limit is None else [str(p) for p in paths]
    pixels = preprocessed(paths)
    precisions = ["ONNX fp32", "ONNX int8"]
    sessions = {name: make_session(files["image"][name], "cpu")[0] for name in precisions}

    def encoder_only(name: str) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(pixels), 32):
                sessions[name].run(None, {"pixel_values": pixels[start : start + 32]})
        return run

    calls: dict[str, Callable[[], Any]] = {}
    for name in precisions:
        calls[f"encoder {name}"] = encoder_only(name)
        if name == "ONNX fp32" or bundle_int8:
            calls[f"classify {name}"] = lambda name=name: run_classify(bundle, index, photos,
                                                                       directory / "out.csv", name == "ONNX int8")
    for session in sessions.values():  # warm-up: the encoders once, the photos into the page cache once
        session.run(None, {"pixel_values": pixels[:32]})
    calls["classify 1 photo"] = lambda: run_classify(bundle, index, [str(paths[0])], directory / "one.csv", False)
    rows_written = run_classify(bundle, index, photos, directory / "out.csv", False)[1]
    medians, _ = interleaved(calls, warmup=0, rounds=plan.classify_rounds)
    startup = medians["classify 1 photo"]
    return {"photos": len(paths), "rows": rows_written, "medians": medians, "bundle_int8": bundle_int8,
            "decode_s": decode_only(paths), "startup_s": startup, "rounds": plan.classify_rounds,
            "int8_reason": manifest.get("int8_rejected", {}).get("image", {}).get("reason")}


# ---------------------------------------------------------------------------------------------
# Report


def render_encoders(rows: list[Row], int8_origin: dict[str, str], warmups: dict[int, tuple[int, int]]) -> str:
    eager = {(r.modality, r.batch): r.items_per_s for r in rows if r.backend == "eager fp32"}
    names = {"image": "image ViT-B/16 224 px", "dna": "DNA BarcodeBERT 12×768, 165 tokens"}
    lines = ["| encoder | batch | backend | items/s | × eager | cosine vs eager (min / mean) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.items_per_s / eager[(r.modality, r.batch)]
        cos = "—" if r.backend == "eager fp32" else f"{r.cosine_min:.5f} / {r.cosine_mean:.5f}"
        lines.append(f"| {names[r.modality]} | {r.batch} | {r.backend} | {r.items_per_s:.2f} | {ratio:.2f} | {cos} |")
    fp32_ok = [f"{r.modality} b{r.batch}" for r in rows
               if r.backend == "ONNX fp32" and r.items_per_s >= eager[(r.modality, r.batch)]]
    int8_ok = [f"{r.modality} b{r.batch}" for r in rows
               if r.backend == "ONNX int8" and r.items_per_s >= 2 * eager[(r.modality, r.batch)]]
    cases = len(eager)
    rounds = ", ".join(f"batch {b}: {w} warm-up + {n} timed" for b, (w, n) in warmups.items())
    lines += ["", f"Goals: ONNX fp32 ≥ eager in {len(fp32_ok)}/{cases} cases ({', '.join(fp32_ok) or 'none'}); "
              f"ONNX int8 ≥ 2× eager in {len(int8_ok)}/{cases} ({', '.join(int8_ok) or 'none'}).", "",
              f"Random weights, paper sizes; image inputs are real BIOSCAN photos (preprocessed) when present, DNA "
              f"inputs random {BARCODE_BP} bp ACGT through KmerTokenizer(k=4). Median per call over interleaved "
              f"rounds, backends rotated each round ({rounds}). torch.set_num_threads({TORCH_THREADS}) with "
              "inference_mode; onnxruntime default threads (ORT_ENABLE_ALL, CPU provider). int8: "
              + "; ".join(f"{m} {how}" for m, how in int8_origin.items()) + "."]
    return "\n".join(lines)


def render_classify(result: dict[str, Any] | None, skipped: str) -> str:
    if result is None:
        return f"`clibd classify` end to end: skipped ({skipped})."
    n, med = result["photos"], result["medians"]
    lines = ["| path | precision | photos/s | % of encoder-only |", "|---|---|---|---|"]
    for name in ("ONNX fp32", "ONNX int8"):
        encoder = n / med[f"encoder {name}"]
        lines.append(f"| encoder only (preprocessed photos, batches of 32) | {name} | {encoder:.2f} | 100 |")
        if f"classify {name}" in med:
            whole = n / med[f"classify {name}"]
            lines.append(f"| `clibd classify` wall time, start-up included | {name} | {whole:.2f} | "
                         f"{100 * whole / encoder:.0f} |")
            steady = (n - 1) / (med[f"classify {name}"] - result["startup_s"])
            lines.append(f"| `clibd classify` steady state: (n − 1) / (wall(n) − wall(1 photo)) | {name} | "
                         f"{steady:.2f} | {100 * steady / encoder:.0f} |")
        else:
            lines.append(f"| `clibd classify` | {name} | n/a: the bundle rejected image int8 "
                         f"({result['int8_reason']}) | — |")
    lines += ["", f"{n} BIOSCAN-1M photos (1024×768 JPEG), {result['rows']} rows written; tiny DNA index of "
              f"{INDEX_RECORDS} random barcodes (`--no-calibrate`), `--device cpu`, default decode workers and "
              f"threads. Median of {result['rounds']} interleaved rounds after one warm-up run. For scale: "
              f"decode + preprocess alone (the worker pool) {n / result['decode_s']:.1f} photos/s; "
              f"`clibd classify` on 1 photo takes {result['startup_s']:.1f} s (start-up: imports, the image "
              "encoder's checksum, ONNX session), which the steady-state row leaves out."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 1 and 4, few rounds, 8 photos; "
                        "writes nothing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default benchmarks/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(TORCH_THREADS)
    plan = QUICK if args.quick else FULL
    load = os.getloadavg()[0]
    started = time.perf_counter()
    paths = photo_paths(plan.photo_limit)
    with tempfile.TemporaryDirectory(prefix="clibd-bench-") as tmp:
        directory = Path(tmp)
        model = paper_model()
        bundle, files, int8_origin = export_models(model, directory)
        print(f"exported in {time.perf_counter() - started:.0f} s", flush=True)
        rows = encoder_speed(model, files, plan, preprocessed(paths[:max(plan.rounds)]))
        del model
        skipped = f"{PHOTOS} is absent" if not paths else ""
        result = classify_speed(bundle, files, plan, paths, directory) if paths else None
    body = (render_encoders(rows, int8_origin, plan.rounds) + "\n\n### `clibd classify` vs encoder only\n\n"
            + render_classify(result, skipped)
            + f"\n\nLoad average at start {load:.1f} (other jobs may share the 2 cores); whole run "
            f"{(time.perf_counter() - started) / 60:.1f} min.")
    print(body)
    if not (args.quick or args.no_write):
        write_section(SECTION, body, invocation(), path=args.out)


if __name__ == "__main__":
    main()
