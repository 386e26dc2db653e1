"""What long commands show while they run: `clibd train` progress on rank 0, and build-index's stages.

A log (a pipe, CI) gets a few plain lines, a terminal gets a bar; nothing is left silent for minutes.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, one_error_line, write_fasta

from clibd_training.progress import INTERVAL_VARIABLE, TrainingProgress, clock, progress_interval

STEP_LINE = re.compile(r"^epoch (\d+)/(\d+)  step (\d+)/(\d+)  loss (\d+\.\d{4})  (\d+\.\d) samples/s")
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) done  step (\d+)/(\d+)  loss (\d+\.\d{4})  (\d+\.\d) samples/s"
                        r"  val (\S+) (\d+\.\d{4})")


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def progress(stream: io.StringIO, *, interval: float = 30.0, enabled: bool = True) -> TrainingProgress:
    return TrainingProgress(enabled, stage="contrastive", epochs=2, steps_per_epoch=3, last_step=6,
                            samples_per_step=32, processes=2, stream=stream, interval=interval)


def run_two_epochs(p: TrainingProgress) -> None:
    p.start(0, 0)
    for epoch in range(2):
        for i in range(3):
            step = epoch * 3 + i + 1
            p.step(step, epoch, torch.tensor(float(step)))
        p.validating()
        p.epoch_done(epoch * 3 + 3, epoch + 1, {"mean_top1": 0.25 * (epoch + 1), "other": 9.0}, "mean_top1")
    p.close()


def test_a_log_gets_a_start_line_the_first_step_and_one_line_per_epoch() -> None:
    """Between epoch ends a log gets a line only every interval: a run of many steps stays readable."""
    log = io.StringIO()
    run_two_epochs(progress(log))
    lines = log.getvalue().splitlines()
    assert lines[0] == "training contrastive: 2 epochs × 3 steps (batch 16 × 2 processes), 6 steps"
    first = STEP_LINE.match(lines[1])
    assert first and first.group(3) == "1" and first.group(5) == "1.0000"  # the first step's own loss
    epochs = [EPOCH_LINE.match(line) for line in lines[2:]]
    assert len(lines) == 4 and all(epochs), lines
    # an epoch line's loss is the mean over its epoch (steps 1-3, then 4-6), with the validation score
    assert [m.group(5) for m in epochs] == ["2.0000", "5.0000"]
    assert [m.group(8) for m in epochs] == ["0.2500", "0.5000"]
    assert "ETA" in lines[2] and "ETA" not in lines[3]  # nothing left to wait for after the last step
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_interval_zero_prints_every_step_with_the_mean_loss_since_the_last_line() -> None:
    log = io.StringIO()
    run_two_epochs(progress(log, interval=0.0))
    steps = [STEP_LINE.match(line) for line in log.getvalue().splitlines()]
    steps = [m for m in steps if m]
    assert [int(m.group(3)) for m in steps] == [1, 2, 3, 4, 5, 6]
    assert [float(m.group(5)) for m in steps] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert {m.group(1) for m in steps[:3]} == {"1"} and {m.group(1) for m in steps[3:]} == {"2"}


def test_other_ranks_print_nothing() -> None:
    log = io.StringIO()
    run_two_epochs(progress(log, enabled=False))
    assert log.getvalue() == ""


def test_a_terminal_gets_a_bar_and_keeps_the_epoch_lines() -> None:
    tty = Tty()
    run_two_epochs(progress(tty))
    text = tty.getvalue()
    assert "\x1b[" in text  # the bar is drawn (and taken down: transient)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "epoch 1/2 done  step 3/6  loss 2.0000" in plain and "epoch 2/2 done  step 6/6  loss 5.0000" in plain


def test_a_stopped_run_says_where_it_stopped() -> None:
    log = io.StringIO()
    p = progress(log)
    p.start(2, 0)
    p.step(3, 0, torch.tensor(1.5))
    p.stopped(3)
    lines = log.getvalue().splitlines()
    assert lines[0].endswith("6 steps, resuming at step 2")
    assert lines[-1].startswith("stopped at step 3 (max_steps)  loss 1.5000")


def test_clock_and_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [clock(s) for s in (0, 59.6, 61, 3725)] == ["0:00:00", "0:01:00", "0:01:01", "1:02:05"]
    monkeypatch.delenv(INTERVAL_VARIABLE, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(INTERVAL_VARIABLE, "2.5")
    assert progress_interval() == 2.5
    from clibd_cli.errors import ClibdError

    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(INTERVAL_VARIABLE, bad)
        with pytest.raises(ClibdError, match=INTERVAL_VARIABLE):
            progress_interval()


def test_train_refuses_a_bad_interval_before_any_worker_starts(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from clibd_cli.app import app

    monkeypatch.setenv(INTERVAL_VARIABLE, "often")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--output", str(tmp_path / "run")])
    one_error_line(result, f"{INTERVAL_VARIABLE}='often'", "seconds")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ through torchrun


@pytest.mark.slow
def test_clibd_train_shows_progress_on_stderr_while_it_runs(tmp_path: Path) -> None:
    """`clibd train` through torchrun, stderr a pipe: rank 0's plain lines arrive (unbuffered), one per epoch."""
    sim = tmp_path / "sim"
    subprocess.run([sys.executable, "-m", "clibd_cli.app", "simulate", "-o", str(sim), "--species", "12",
                    "--image-size", "64"], check=True, capture_output=True, cwd=ROOT)
    env = {**os.environ, INTERVAL_VARIABLE: "0"}
    train = subprocess.Popen([sys.executable, "-m", "clibd_cli.app", "train", "--config", "tiny-cpu", "--data",
                              str(sim), "--output", str(tmp_path / "run"), "--nproc-per-node", "2", "--set",
                              "epochs=2", "--set", "batch_size=8"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    first = train.stderr.readline()  # arrives while the run goes on, not when the process ends
    assert first.startswith("training contrastive: 2 epochs × "), first  # nothing before it (no OMP warning)
    assert train.poll() is None
    rest, out = train.stderr.read(), train.stdout.read()
    assert train.wait(timeout=600) == 0, rest
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert "Traceback" not in rest and "Traceback" not in out and "OMP_NUM_THREADS" not in rest
    assert "batch 8 × 2 processes" in lines[0]
    steps = [m for m in map(STEP_LINE.match, lines) if m]
    epochs = [m for m in map(EPOCH_LINE.match, lines) if m]
    total = int(steps[0].group(4))
    assert [int(m.group(3)) for m in steps] == list(range(1, total + 1))  # rank 0 alone: each step once
    assert [(m.group(1), m.group(7)) for m in epochs] == [("1", "mean_top1"), ("2", "mean_top1")]
    assert int(epochs[-1].group(3)) == total
    assert any(line.startswith("done: ") for line in lines)


# ------------------------------------------------------------------------------ build-index


def test_build_index_on_a_log_prints_no_progress(tmp_path: Path, reference_specimens) -> None:
    """Not a terminal: no bar, no carriage returns; only what was written and the time."""
    fasta = write_fasta(tmp_path / "ref.fasta", reference_specimens)
    result = subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-o", str(tmp_path / "idx"),
                             "-b", str(fasta)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) <= 12, lines  # the summary: wrote, thresholds, three short-read sets (wrapped), done
    assert lines[-1].startswith("done in ")
    assert not any(stage in result.stderr for stage in BUILD_STAGES)


BUILD_STAGES = ("reading references", "embedding dna", "calibrating dna", "writing the index and its search graph")


def test_build_index_on_a_log_reports_each_long_step_as_it_ends(tmp_path: Path, reference_specimens,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In a log, a step that took long enough gets one line when it ends (here every step counts as long)."""
    from typer.testing import CliRunner

    from clibd_cli.app import app
    from clibd_cli.cli import console

    monkeypatch.setattr(console, "LOGGED_STEP_SECONDS", 0.0)
    fasta = write_fasta(tmp_path / "ref.fasta", reference_specimens)
    result = CliRunner().invoke(app, ["build-index", "-o", str(tmp_path / "idx"), "-b", str(fasta)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    ends = [next((i for i, line in enumerate(lines) if line.startswith(stage) and ": done in " in line), -1)
            for stage in BUILD_STAGES]
    assert -1 not in ends and ends == sorted(ends), lines
    assert f"embedding dna ({len(reference_specimens)}): done in " in result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


def test_build_index_on_a_terminal_shows_each_stage(tmp_path: Path, reference_specimens) -> None:
    """Calibrating and building the search graph took minutes each on 90,000 BOLD barcodes and showed nothing."""
    fasta = write_fasta(tmp_path / "ref.fasta", reference_specimens)
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # rich: treat the pipe as a terminal
    result = subprocess.run([sys.executable, "-m", "clibd_cli.app", "build-index", "-o", str(tmp_path / "idx"),
                             "-b", str(fasta)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    positions = [plain.find(stage) for stage in BUILD_STAGES]
    assert -1 not in positions and positions == sorted(positions), positions
    assert "0/96" in plain and "96/96" in plain  # the embedding bar counts records
    assert plain.rstrip().splitlines()[-1].startswith("done in ")


def test_simulate_reports_its_steps_in_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`clibd simulate` renders photos for a minute at 60 species: a log hears each step as it ends."""
    from typer.testing import CliRunner

    from clibd_cli.app import app
    from clibd_cli.cli import console

    monkeypatch.setattr(console, "LOGGED_STEP_SECONDS", 0.0)
    result = CliRunner().invoke(app, ["simulate", "-o", str(tmp_path / "sim"), "--species", "5", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    records = sum(1 for _ in (tmp_path / "sim" / "images").iterdir())
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"rendering photos ({records}): done in ")
    assert lines[1].startswith("writing clibd.hdf5: done in ")
