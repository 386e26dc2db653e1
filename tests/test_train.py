"""End-to-end training through torchrun on 2 gloo processes, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import one_error_line
from typer.testing import CliRunner

from clibd_cli.app import app
from clibd_training.checkpoint import load_state  # plain data only: the project's own checkpoints must pass

runner = CliRunner()


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    invoke("simulate", "-o", str(out), "--species", "30", "--seed", "3", "--image-size", "64", "--force")
    return out


def last_val(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [line for line in lines if line["kind"] == "val"]
    assert vals, "no validation metrics written"
    return vals[-1]


def chance(sim: Path) -> float:
    """Top-1 accuracy of a random key: mean share of the keys that hold each seen query's species."""
    import csv

    with (sim / "specimens.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    keys = [r["species"] for r in rows if r["split"] in ("seen_keys", "val_unseen_keys")]
    queries = [r["species"] for r in rows if r["split"] == "val_seen"]
    return sum(keys.count(s) for s in queries) / len(queries) / len(keys)


@pytest.mark.slow
def test_tiny_training_on_two_processes(sim: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    invoke("train", "--config", "tiny-cpu", "--data", str(sim), "--output", str(run), "--nproc-per-node", "2")
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    best = load_state(run / "checkpoints" / "best.pt")
    assert best["world_size"] == 2 and best["step"] > 0
    val = last_val(run)
    floor = chance(sim)
    for pair in ("dna_to_dna", "image_to_image", "image_to_dna"):
        accuracy = val[f"seen/{pair}/species/micro_top1"]
        assert accuracy > 3 * floor, f"{pair}: species top-1 {accuracy:.3f} not clearly above chance {floor:.3f}"
    train_losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["kind"] == "train"]
    assert train_losses[-1] < train_losses[0]


@pytest.mark.slow
@pytest.mark.parametrize(("processes", "accum"), [(2, 1), (1, 2)])
def test_resume_gives_identical_parameters(sim: Path, tmp_path: Path, processes: int, accum: int) -> None:
    """A run stopped after an optimizer step and resumed ends where the unbroken run ends: on 2 processes,
    and with accumulation, which keeps state between micro-batches (the cached features, the dropout RNG
    of each cached pass)."""
    steps = 8 // accum
    common = ["--config", "tiny-cpu", "--data", str(sim), "--nproc-per-node", str(processes), "--set", "epochs=2",
              "--set", "batch_size=8", "--set", f"grad_accum={accum}", "--set", "checkpoint_every=1000"]
    full, split = tmp_path / "full", tmp_path / "split"
    invoke("train", *common, "--output", str(full), "--set", f"max_steps={steps}")
    invoke("train", *common, "--output", str(split), "--set", f"max_steps={steps // 2}")
    stopped = load_state(split / "checkpoints" / "last.pt")
    assert stopped["step"] == steps // 2
    if processes > 1:
        refused = runner.invoke(app, ["train", "--output", str(split), "--resume"])
        assert refused.exit_code == 2 and f"{processes} processes" in refused.output
    invoke("train", "--output", str(split), "--resume", "--nproc-per-node", str(processes), "--set",
           f"max_steps={steps}")
    a = load_state(full / "checkpoints" / "last.pt")
    b = load_state(split / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


@pytest.mark.slow
def test_dna_pretraining_feeds_the_contrastive_dna_encoder(sim: Path, tmp_path: Path) -> None:
    from clibd_training.models import DNAEncoder, DNAEncoderConfig

    run = tmp_path / "pretrain"
    invoke("train", "--config", "tiny-cpu", "--stage", "dna-pretrain", "--data", str(sim), "--output", str(run),
           "--set", "epochs=2")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert val and val[-1]["masked_accuracy"] > 0.05  # 4-mers: chance is 1 in 256
    saved = run / "dna_encoder"
    encoder = DNAEncoder(DNAEncoderConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, k=4,
                                          pretrained=str(saved)), embed_dim=64)
    state = load_state(run / "checkpoints" / "last.pt")["model"]
    word = state["mlm.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(encoder.bert.embeddings.word_embeddings.weight, word)


def test_metric_log_writes_jsonl_and_tensorboard(tmp_path: Path) -> None:
    from clibd_training.metrics_log import MetricLog

    log = MetricLog(tmp_path, enabled=True)
    log.write({"kind": "train", "step": 3, "epoch": 0, "loss": 1.5})
    log.write({"kind": "val", "step": 3, "epoch": 1, "mean_top1": 0.25})
    assert [json.loads(line)["kind"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        ["train", "val"]
    assert log.tb is not None and any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    MetricLog(tmp_path / "other", enabled=False).write({"kind": "train", "step": 1})
    assert not (tmp_path / "other" / "metrics.jsonl").exists()


@pytest.mark.parametrize(("override", "mentions"), [
    ("epochs=ten", ("--set epochs=ten", "epochs", "'ten'", "an integer")),
    ("optim.lr=fast", ("optim.lr", "'fast'", "a number")),
    ("optim.betas=[0.9]", ("optim.betas", "[0.9]", "a list of 2 numbers")),
    ("data.train_splits=train_seen", ("data.train_splits", "'train_seen'", "a list of strings")),
    ("max_steps=2.5", ("max_steps", "2.5", "an integer or null")),
    ("model.embed_dim=big", ("model.embed_dim", "'big'", "an integer")),
    ("precision=fp16", ("precision", "'fp16'", "auto, bf16, fp32")),
    ("batch_size=0", ("batch_size", "at least 1")),
    ("optim.clip_grad_norm=0", ("optim.clip_grad_norm", "a positive number or null")),
    ("data.nope=1", ("--set data.nope=1", "unknown keys in 'data': nope")),
])
def test_train_refuses_an_ill_typed_override_in_one_line(tmp_path: Path, override: str, mentions: tuple) -> None:
    """`--set epochs=ten` used to be written to config.yaml and fail later inside a worker."""
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--output", str(run), "--set", override])
    one_error_line(result, *mentions)
    assert not run.exists()  # refused before anything was written or any worker started


def test_config_file_fields_are_type_checked(tmp_path: Path) -> None:
    from clibd_cli.errors import ClibdError
    from clibd_training.config import PRESETS_DIR, load_config

    raw = yaml.safe_load((PRESETS_DIR / "tiny-cpu.yaml").read_text())
    raw["data"]["num_workers"] = "two"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ClibdError, match=r"bad\.yaml: data\.num_workers must be an integer, not 'two' \(text\)"):
        load_config(str(config))
    result = runner.invoke(app, ["train", "--config", str(config), "--data", str(tmp_path), "--output",
                                 str(tmp_path / "run")])
    one_error_line(result, "bad.yaml", "data.num_workers", "'two'", "an integer")
    # Numbers YAML 1.1 leaves as text where a float belongs are read as numbers; nothing else is converted.
    loaded = load_config("tiny-cpu", ["optim.lr=1e-4", "max_steps=3", "name=2024"])
    assert loaded.optim.lr == 1e-4 and loaded.max_steps == 3 and loaded.name == "2024"


def test_gradient_clipping_bounds_the_step_and_logs_the_norm(sim: Path, tmp_path: Path) -> None:
    """After AdamW's first step its first moment is (1 - beta1) x the gradient it was given, so the
    checkpoint shows whether the gradient was clipped: to `clip` with clipping, the logged norm without."""
    clip = 1e-3
    norms = {}
    for name, extra in (("clipped", ["--set", f"optim.clip_grad_norm={clip}"]), ("free", [])):
        run = tmp_path / name
        invoke("train", "--config", "tiny-cpu", "--data", str(sim), "--output", str(run), "--set", "max_steps=1",
               "--set", "log_every=1", *extra)
        state = load_state(run / "checkpoints" / "last.pt")
        beta1 = state["config"]["optim"]["betas"][0]
        moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
        norms[name] = float(torch.sqrt(sum((m.double() ** 2).sum() for m in moments))) / (1 - beta1)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logged = [r["grad_norm"] for r in records if r["kind"] == "train" and "grad_norm" in r]
        if name == "clipped":
            assert len(logged) == 1 and logged[0] > 10 * clip  # a real clip: the raw norm was far above
            raw = logged[0]
        else:
            assert logged == []
    assert norms["clipped"] == pytest.approx(clip, rel=1e-3)
    assert norms["free"] == pytest.approx(raw, rel=1e-3)  # same seed, same first batch: the same raw gradient


@pytest.mark.slow
def test_accumulation_trains_one_large_contrastive_batch_and_clamps_the_scale(sim: Path, tmp_path: Path) -> None:
    """Step 1 of 2 × 8 accumulated scores the first 16 samples together: its loss is the loss of one batch of 16
    (up to dropout, drawn differently for 2 × 8 and 16 samples), not that of a batch of 8.  All runs start with
    logit_scale above the cap (log 100), so the step must leave it clamped at the cap."""
    import math

    losses, scales = {}, {}
    for name, batch, accum in (("accum", 8, 2), ("one16", 16, 1), ("one8", 8, 1)):
        run = tmp_path / name
        invoke("train", "--config", "tiny-cpu", "--data", str(sim), "--output", str(run), "--set", "max_steps=1",
               "--set", "log_every=1", "--set", f"batch_size={batch}", "--set", f"grad_accum={accum}",
               "--set", "model.init_logit_scale=6.0")
        record = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                      if json.loads(line)["kind"] == "train")
        losses[name] = record["loss"]
        scales[name] = (load_state(run / "checkpoints" / "last.pt")["model"]["logit_scale"], record["logit_scale"])
    assert abs(losses["accum"] - losses["one16"]) < 0.2 * abs(losses["accum"] - losses["one8"]), losses
    cap = torch.tensor(math.log(100), dtype=torch.float32)
    for name, (parameter, logged) in scales.items():
        assert torch.equal(parameter, cap), name
        assert logged == pytest.approx(100.0, rel=1e-5), name
