"""`clibd classify` on a GPU: photos/s end to end against the image encoder alone, and fp16 vs fp32.

    python3 benchmarks/classify_gpu.py --out DIR [--photos 1000] [--device cuda] [--tiny]
    python3 benchmarks/classify_gpu.py --from-json DIR/classify_gpu.json   # record it in RESULTS.md

Issue 14 asks for `clibd classify` at GPU speed: ≥ 80 % of the rate of the image encoder alone, with the
fp16 encoder agreeing with fp32.  One run measures, side by side, each after a warm-up:

(a) encoder only: the bundle's image session (``ModelBundle.embed_pixels``: IO binding on CUDA) at the
    classify batch size (32) on preprocessed random pixels, fp16 and fp32;
(b) the decode pool alone: :func:`clibd_cli.photos.iter_preprocessed` over the N JPEGs with classify's
    default workers, and with 16;
(c) end to end: the library path of `clibd classify` (:class:`clibd_cli.classify.PhotoRun`: photos
    collected, bundle and index opened, the image session started and run once on zeros — timed apart as
    "open" — then every result), fp16 and fp32, default workers and 16; and the CLI itself in-process
    (``clibd classify DIR --index … --device … -o out.csv``, start-up and CSV writing included);
(d) fp16 vs fp32 on the N photos: min/mean cosine of the embeddings, share of identical calls (status,
    rank, taxon) and top-1 hits.

Ratios decode/encoder and classify/encoder are printed: when the decode pool is slower than the encoder,
the output says that the decode pool, not the GPU, sets the pace.

The model has random weights (speed does not depend on them): the paper's ViT-B/16 at 224 px (timm),
exported with ``clibd export --fp16``'s code (:func:`clibd_export.onnx.export_bundle`, parity and fp16 gates
included).  Its DNA encoder is a small BarcodeBERT (tiny preset's sizes, 768-d head): classify never runs
it, it only embeds the reference barcodes, and a 12 × 768 one would add a minute of export on the CPU.
The reference is 300 random barcodes in 30 species (``build-index --no-calibrate``, exact search when
hnswlib is absent).  Photos: N JPEGs (quality 90) of 1024 × 768, BIOSCAN-1M's size, with structure
(smooth background, ellipses, noise), written by a process pool.  ``--tiny`` uses the tiny preset's
32-px model (a CPU smoke run: ``--tiny --device cpu --photos 40``).  No network (HF_HUB_OFFLINE=1 is set);
runs from a checkout without installing clibd.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

SECTION = "clibd classify on a GPU: photos/s vs the image encoder, fp16 vs fp32"
BATCH = 32  # `clibd classify --batch-size` default
WIDTH, HEIGHT = 1024, 768
SPECIES, PER_SPECIES = 30, 10
WARMUP_BATCHES = 5


def _importable() -> None:
    """clibd_training and clibd_export from this checkout even when clibd is not pip-installed (the
    packages are the folders training/ and export/ under other names)."""
    sys.path.insert(0, str(ROOT))
    for name, folder in (("clibd_training", "training"), ("clibd_export", "export")):
        if importlib.util.find_spec(name) is not None:
            continue
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


# ---------------------------------------------------------------------------------------------
# Model, photos, reference


def export(directory: Path, tiny: bool) -> tuple[Path, dict[str, Any], float]:
    """A random-weight model exported with fp16 variants; returns (bundle, manifest, seconds)."""
    import torch

    from clibd_cli.preprocess import ImagePreprocessing
    from clibd_export.onnx import ExportSource, export_bundle
    from clibd_training.models import build_model, paper_config, tiny_config

    torch.manual_seed(0)
    small = tiny_config()
    config = small if tiny else dataclasses.replace(paper_config(pretrained=False), dna=small.dna)
    config = dataclasses.replace(config, modalities=("image", "dna"))
    model = build_model(config, None, load_pretrained=False).eval()
    size = config.image.image_size
    spec = ImagePreprocessing() if size == 224 else ImagePreprocessing(size=size, resize=size + 4)
    source = ExportSource(model, spec, None, Path(__file__), "benchmark", info={"run": "classify_gpu"})
    start = time.perf_counter()
    manifest = export_bundle(source, directory / "bundle", fp16=True, force=True,
                             progress=lambda step: print(f"  {step}…", flush=True))
    return directory / "bundle", manifest, time.perf_counter() - start


def _photo(args: tuple[Path, int]) -> int:
    from PIL import Image, ImageDraw

    path, seed = args
    rng = np.random.default_rng(seed)
    grid = rng.uniform(40, 220, (6, 8, 3)).astype(np.uint8)  # smooth, lit background
    image = Image.fromarray(grid).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # a "specimen": a few overlapping ellipses
        x, y = rng.integers(100, WIDTH - 100), rng.integers(100, HEIGHT - 100)
        w, h = rng.integers(20, 260, 2)
        draw.ellipse((x - w, y - h, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (HEIGHT, WIDTH, 3)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.stat().st_size


def write_photos(folder: Path, n: int) -> tuple[float, float]:
    """N JPEGs by a process pool; returns (seconds, mean KB)."""
    from multiprocessing import get_context

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with get_context("spawn").Pool(min(16, os.cpu_count() or 1)) as pool:
        sizes = pool.map(_photo, [(folder / f"photo_{i:05d}.jpg", i) for i in range(n)], chunksize=8)
    return time.perf_counter() - start, float(np.mean(sizes)) / 1024


def write_reference(path: Path) -> None:
    """Random barcodes with a taxonomy: SPECIES species × PER_SPECIES barcodes (FASTA, clibd's header)."""
    rng = np.random.default_rng(1)
    bases = np.array(list("ACGT"))
    lines = []
    for s in range(SPECIES):
        genus, family = f"Genus{s % 12}", f"Family{s % 5}"
        for j in range(PER_SPECIES):
            lines += [f">REF{s:03d}_{j:02d}|Diptera|{family}|{genus}|{genus} species{s}|",
                      "".join(bases[rng.integers(0, 4, 658)])]
    path.write_text("\n".join(lines) + "\n")


def cli(*args: Any) -> None:
    """`clibd ARGS` in this process (the CLI's own code path); raises on a non-zero exit."""
    from clibd_cli.app import app

    try:
        code = app([str(a) for a in args], standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    if code:
        raise RuntimeError(f"clibd {' '.join(map(str, args))} exited with {code}")


# ---------------------------------------------------------------------------------------------
# Measurements


def encoder_only(bundle_path: Path, device: str, fp16: bool, n: int) -> dict[str, Any]:
    """(a) photos/s of ``embed_pixels`` at the classify batch size on random preprocessed pixels."""
    from clibd_cli.bundle import ModelBundle

    bundle = ModelBundle.load(bundle_path, device=device, fp16=fp16)
    spec = bundle.preprocessing
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((BATCH, 3, spec.size, spec.size), dtype=np.float32)
    start = time.perf_counter()
    bundle.embed_pixels(pixels)
    session_s = time.perf_counter() - start
    for _ in range(WARMUP_BATCHES):
        bundle.embed_pixels(pixels)
    batches = max(3, -(-n // BATCH))
    start = time.perf_counter()
    for _ in range(batches):
        bundle.embed_pixels(pixels)
    elapsed = time.perf_counter() - start
    return {"precision": bundle.precision("image"), "device": bundle.used_device, "photos_per_s":
            batches * BATCH / elapsed, "batches": batches, "first_call_s": session_s}


def decode_only(photos: list, spec, workers: int | None) -> dict[str, Any]:
    """(b) photos/s of the decode pool alone."""
    from clibd_cli.photos import iter_preprocessed

    for _ in iter_preprocessed(photos[: 2 * BATCH], spec, batch_size=BATCH, workers=workers):
        pass  # warm-up: threads, PIL's codecs
    start = time.perf_counter()
    done = sum(len(batch.photos) for batch in iter_preprocessed(photos, spec, batch_size=BATCH, workers=workers))
    elapsed = time.perf_counter() - start
    default = min(8, os.cpu_count() or 1)
    return {"workers": workers or default, "default": workers is None, "photos_per_s": done / elapsed}


def classify_run(photo_dir: Path, bundle_path: Path, index: Path, device: str, fp16: bool,
                 workers: int | None) -> dict[str, Any]:
    """(c) the library path of `clibd classify`: open (bundle, index, photo list) and results, timed apart."""
    from clibd_cli.bundle import ModelBundle
    from clibd_cli.classify import ClassifyOptions, PhotoRun

    start = time.perf_counter()
    bundle = ModelBundle.load(bundle_path, device=device, fp16=fp16)
    run = PhotoRun.open([photo_dir], model=bundle, index=index, options=ClassifyOptions(workers=workers, top_k=1),
                        notify=lambda *_: None)
    size = bundle.preprocessing.size
    bundle.embed_pixels(np.zeros((BATCH, 3, size, size), np.float32))  # session + first-call kernel set-up
    opened = time.perf_counter() - start
    start = time.perf_counter()
    results = list(run.results())
    elapsed = time.perf_counter() - start
    calls = {r.row["query_id"]: (r.row["status"], r.row["rank"], *(r.row[k] for k in ("species", "genus")))
             for r in results}
    hits = {r.row["query_id"]: r.row.get("top_hit_id") for r in results}
    return {"precision": bundle.precision("image"), "device": bundle.used_device,
            "workers": workers or min(8, os.cpu_count() or 1), "open_s": opened, "photos": len(results),
            "photos_per_s": len(results) / elapsed, "errors": sum(r.row["status"] == "error" for r in results),
            "_calls": calls, "_hits": hits}


def classify_cli(photo_dir: Path, bundle: Path, index: Path, device: str, out: Path, n: int) -> dict[str, Any]:
    """(c) `clibd classify DIR --model B --index I --device D -o out.csv --force` in-process, wall time."""
    args = ["classify", photo_dir, "--model", bundle, "--index", index, "--device", device, "-o", out, "--force"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        start = time.perf_counter()
        cli(*args)
        elapsed = time.perf_counter() - start
    found = re.search(r"\d[\d,]* photos on .*", " ".join(err.getvalue().split()))
    summary = found.group(0) if found else err.getvalue().strip()[-300:]
    return {"command": "clibd " + " ".join(str(a) for a in args), "wall_s": elapsed, "photos_per_s": n / elapsed,
            "summary": summary}


def agreement(photos: list, bundle_path: Path, device: str, fp16_run: dict, fp32_run: dict) -> dict[str, Any]:
    """(d) fp16 vs fp32: embedding cosines over the N photos, identical calls and top-1 hits."""
    from clibd_cli.bundle import ModelBundle
    from clibd_cli.photos import iter_preprocessed

    half = ModelBundle.load(bundle_path, device=device, fp16=True)
    full = ModelBundle.load(bundle_path, device=device, fp16=False)
    cos = []
    for batch in iter_preprocessed(photos, half.preprocessing, batch_size=BATCH):
        a, b = half.embed_pixels(batch.pixels), full.embed_pixels(batch.pixels)
        cos.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    cos = np.concatenate(cos)
    ids = list(fp32_run["_calls"])
    same_call = np.mean([fp16_run["_calls"][i] == fp32_run["_calls"][i] for i in ids])
    same_hit = np.mean([fp16_run["_hits"][i] == fp32_run["_hits"][i] for i in ids])
    return {"n": len(cos), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "same_call": float(same_call), "same_top1_hit": float(same_hit),
            "precisions": [half.precision("image"), full.precision("image")]}


# ---------------------------------------------------------------------------------------------
# Report


def render(r: dict[str, Any]) -> str:
    enc = {e["precision"]: e["photos_per_s"] for e in r["encoder_only"]}
    fp16_rate = enc.get("fp16") or max(enc.values())
    lines = ["| path | precision | workers | photos/s | % of fp16 encoder-only |", "|---|---|---|---|---|"]
    for e in r["encoder_only"]:
        lines.append(f"| (a) encoder only, batches of {BATCH} ({e['device']}) | {e['precision']} | – | "
                     f"{e['photos_per_s']:.0f} | {100 * e['photos_per_s'] / fp16_rate:.0f} |")
    for d in r["decode"]:
        lines.append(f"| (b) decode pool alone | – | {d['workers']}{' (default)' if d['default'] else ''} | "
                     f"{d['photos_per_s']:.0f} | {100 * d['photos_per_s'] / fp16_rate:.0f} |")
    for c in r["classify"]:
        lines.append(f"| (c) classify, library path, after open + warm-up ({c['open_s']:.1f} s) | {c['precision']} | "
                     f"{c['workers']} | {c['photos_per_s']:.0f} | "
                     f"{100 * c['photos_per_s'] / enc.get(c['precision'], fp16_rate):.0f} (own precision) |")
    c = r["cli"]
    lines.append(f"| (c) `clibd classify` CLI, wall time incl. start-up | auto | default | {c['photos_per_s']:.0f} | "
                 f"{100 * c['photos_per_s'] / fp16_rate:.0f} |")
    a = r["agreement"]
    best_decode = max(d["photos_per_s"] for d in r["decode"])
    default_decode = next(d["photos_per_s"] for d in r["decode"] if d["default"])
    default_classify = next(c for c in r["classify"] if c["precision"] == "fp16" or c is r["classify"][-1])
    verdict = (f"decode pool (default workers) at {default_decode / fp16_rate:.2f}× the fp16 encoder's rate: "
               + ("**the decode pool, not the GPU, sets the pace**" if default_decode < fp16_rate
                  else "the encoder sets the pace"))
    lines += ["", f"Target: classify ≥ 80 % of encoder-only. fp16 classify (default workers) reaches "
              f"{100 * default_classify['photos_per_s'] / fp16_rate:.0f} %; {verdict}; best decode "
              f"{best_decode:.0f} photos/s.",
              "", f"fp16 vs fp32 on {a['n']} photos: embedding cosine min {a['cosine_min']:.5f}, mean "
              f"{a['cosine_mean']:.6f}; identical calls {100 * a['same_call']:.1f} %, identical top-1 hits "
              f"{100 * a['same_top1_hit']:.1f} % (random weights: nearly collinear embeddings make top-1 hits "
              "a harsher test than for a trained model).",
              "", f"{r['photos']} JPEGs {WIDTH}×{HEIGHT} (q90, {r['photo_kb']:.0f} KB on average), model "
              f"{r['model']}, random weights, exported with fp16 in {r['export_s']:.0f} s (fp16 gate: "
              f"{r['fp16_gate']}); reference {SPECIES * PER_SPECIES} random barcodes, search {r['search']}; "
              f"onnxruntime {r['onnxruntime']} ({r['providers']}); whole run {r['total_s']:.0f} s. CLI: "
              f"`{r['cli']['command'].replace(r['out'], 'OUT')}` → {r['cli']['summary']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder; classify_gpu.json is written there")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    parser.add_argument("--tiny", action="store_true", help="the tiny 32-px model (CPU smoke run)")
    parser.add_argument("--from-json", type=Path, help="record a run made elsewhere in benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.from_json:
        payload = json.loads(args.from_json.read_text())
        write_section(SECTION, render(payload), payload["command"], measured_on=payload["machine"])
        return
    if args.out is None:
        parser.error("--out DIR is needed (or --from-json FILE)")
    _importable()
    import onnxruntime

    from clibd_cli.index import ReferenceIndex
    from clibd_cli.photos import collect_photos

    began = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"exporting ({'tiny' if args.tiny else 'ViT-B/16 224 px'}, fp16)…", flush=True)
    bundle, manifest, export_s = export(out, args.tiny)
    gate = {m: spec.get("fp16", {}).get("reason") for m, spec in manifest["modalities"].items()}
    gate.update({m: f"rejected: {why['reason']}" for m, why in manifest.get("fp16_rejected", {}).items()})
    print(f"  {export_s:.0f} s; fp16 gate: {gate}", flush=True)
    photo_dir = out / "photos"
    photo_s, photo_kb = write_photos(photo_dir, args.photos)
    print(f"{args.photos} photos written in {photo_s:.1f} s ({photo_kb:.0f} KB each)", flush=True)
    reference, index = out / "reference.fasta", out / "index"
    write_reference(reference)
    with contextlib.redirect_stderr(io.StringIO()):
        cli("build-index", "-b", reference, "--model", bundle, "-o", index, "--no-calibrate", "--force",
            "--device", args.device)
    search = ReferenceIndex.load(index, "dna").search_description()
    photos, _ = collect_photos([photo_dir])
    from clibd_cli.bundle import ModelBundle

    spec = ModelBundle.load(bundle, device="cpu").preprocessing
    result: dict[str, Any] = {"machine": machine(), "photos": args.photos, "photo_kb": photo_kb,
                              "model": "tiny (32 px)" if args.tiny else "ViT-B/16 224 px (paper)",
                              "export_s": export_s, "fp16_gate": gate, "search": search,
                              "onnxruntime": onnxruntime.__version__,
                              "providers": ", ".join(onnxruntime.get_available_providers()), "out": str(out),
                              "command": "python3 benchmarks/classify_gpu.py" + "".join(f" {a}" for a in sys.argv[1:])}
    print("(a) encoder only…", flush=True)
    result["encoder_only"] = [encoder_only(bundle, args.device, fp16, args.photos) for fp16 in (True, False)]
    print("(b) decode pool…", flush=True)
    result["decode"] = [decode_only(photos, spec, workers) for workers in (None, 16)]
    print("(c) classify…", flush=True)
    runs = [classify_run(photo_dir, bundle, index, args.device, fp16, workers)
            for fp16, workers in ((True, None), (True, 16), (False, None))]
    result["cli"] = classify_cli(photo_dir, bundle, index, args.device, out / "classify.csv", args.photos)
    print("(d) fp16 vs fp32…", flush=True)
    result["agreement"] = agreement(photos, bundle, args.device, runs[0], runs[2])
    result["classify"] = [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs]
    result["total_s"] = time.perf_counter() - began
    (out / "classify_gpu.json").write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"wrote {out / 'classify_gpu.json'}")


if __name__ == "__main__":
    main()
