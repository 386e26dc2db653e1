"""What a training run shows while it trains: one voice (rank 0) on stderr, readable on a terminal and in a log.

`clibd train` used to print nothing for minutes.  Every rank runs the same loop, so only rank 0 speaks
(N processes would print N copies).  On a terminal a rich bar shows epoch, step, loss, samples/s and the
time left; anywhere else (a log file, CI, a test reading a pipe) a bar would be a smear of carriage
returns, so plain lines are printed instead:

* one line when training starts (stage, epochs × steps, batch × processes, where a resume starts);
* at the first step, then at the first step after each :data:`INTERVAL_SECONDS` (``CLIBD_PROGRESS_SECONDS``
  changes it): ``epoch 1/20  step 45/180  loss 2.7634  37.5 samples/s  ETA 0:03:12``;
* at the end of each epoch, with the validation score:
  ``epoch 1/20 done  step 9/180  loss 2.9011  36.8 samples/s  val mean_top1 0.4120  ETA …  (epoch …, validation …)``.

A step line's loss and rate are the mean over the steps since the previous line, an epoch line's over
the epoch (validation time left out of the rate); the ETA is the run's average time per step so far.
Losses are summed as tensors and read (a device sync) only when shown, so progress does not slow a
GPU run down.
Nothing here touches the model, the data order or the RNG: checkpoints and metrics are the same with
progress shown or not.  Lines are written with ``flush``: a worker started by torchrun shares the
user's stderr, and a buffered line would arrive late or, after a crash, never.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from clibd_cli.errors import ClibdError

INTERVAL_SECONDS = 30.0  # plain lines between epoch ends: often enough to see life, few enough to read a log
INTERVAL_VARIABLE = "CLIBD_PROGRESS_SECONDS"


def progress_interval() -> float:
    """``CLIBD_PROGRESS_SECONDS`` (seconds between plain progress lines, 0: every step), checked."""
    raw = os.environ.get(INTERVAL_VARIABLE)
    if raw is None or not raw.strip():
        return INTERVAL_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ClibdError(f"{INTERVAL_VARIABLE}={raw!r}: give the seconds between progress lines as a number "
                         "≥ 0 (0 prints every step), or unset it for the default of "
                         f"{INTERVAL_SECONDS:.0f}.")
    return seconds


def clock(seconds: float) -> str:
    """``h:mm:ss``, the way a log reader compares durations at a glance."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Window:
    """Steps, summed loss and time since a mark (the last line, or the start of the epoch)."""

    def __init__(self, step: int) -> None:
        self.reset(step, time.perf_counter())

    def reset(self, step: int, now: float) -> None:
        self.step, self.started = step, now
        self.loss_sum: Any = 0.0  # a tensor once steps arrive: summed on the device, read when shown
        self.losses = 0

    def add(self, loss: Any) -> None:
        self.loss_sum = self.loss_sum + loss
        self.losses += 1

    def parts(self, step: int, samples_per_step: int, until: float) -> list[str]:
        """``loss L`` (mean over the window) and ``R samples/s`` (over its steps, up to ``until``)."""
        parts = [f"loss {float(self.loss_sum) / self.losses:.4f}"] if self.losses else []
        seconds = until - self.started
        if step > self.step and seconds > 0:
            parts.append(f"{(step - self.step) * samples_per_step / seconds:.1f} samples/s")
        return parts


class TrainingProgress:
    """Progress of one run on rank 0: a rich bar on a terminal, plain flushed lines elsewhere; silent off rank 0.

    The engine calls :meth:`start`, :meth:`step` after each optimizer step, :meth:`validating` and
    :meth:`epoch_done` around validation, :meth:`stopped` when ``max_steps`` ends a run mid-epoch, and
    :meth:`close`.  ``stream``/``terminal`` default to ``sys.stderr`` and whether it is a TTY (tests
    pass their own).
    """

    def __init__(self, enabled: bool, *, stage: str, epochs: int, steps_per_epoch: int, last_step: int,
                 samples_per_step: int, processes: int, stream: IO[str] | None = None,
                 terminal: bool | None = None, interval: float | None = None) -> None:
        self.enabled = enabled
        self.stage, self.epochs, self.steps_per_epoch = stage, epochs, steps_per_epoch
        self.last_step = last_step  # total_steps, or max_steps when that ends the run sooner
        self.samples_per_step, self.processes = samples_per_step, processes
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.interval = progress_interval() if interval is None and enabled else (interval or 0.0)
        self.bar: Any = None
        self.first_step = 0
        self.started = self.last_line = time.perf_counter()
        self.recent, self.this_epoch = Window(0), Window(0)  # since the last line; since the epoch began
        self.validation_started: float | None = None

    # ------------------------------------------------------------------------------ engine calls
    def start(self, step: int, epoch: int) -> None:
        """Say what will run; on a terminal, open the bar at ``step`` (a resumed run starts part-way)."""
        if not self.enabled:
            return
        self.first_step = step
        self.started = time.perf_counter()
        self.recent, self.this_epoch = Window(step), Window(step)
        noun = "process" if self.processes == 1 else "processes"
        where = f", resuming at step {step}" if step else ""
        self._line(f"training {self.stage}: {self.epochs} epochs × {self.steps_per_epoch} steps "
                   f"(batch {self.samples_per_step // self.processes} × {self.processes} {noun}), "
                   f"{self.last_step} steps{where}")
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
                                transient=True)
            self.task = self.bar.add_task(self._epoch_label(epoch), total=self.last_step, completed=step,
                                          status="")
            self.bar.start()

    def step(self, step: int, epoch: int, loss: Any) -> None:
        """One optimizer step done (``loss``: that step's loss tensor); print or redraw when it is time."""
        if not self.enabled:
            return
        loss = loss.detach().float()
        self.recent.add(loss)
        self.this_epoch.add(loss)
        now = time.perf_counter()
        if self.bar is not None:
            if now - self.last_line >= 1.0:  # reading the loss syncs a GPU: at most once a second
                self.last_line = now
                self.bar.update(self.task, completed=step, description=self._epoch_label(epoch),
                                status="  ".join(self._recent(step, now)))
            else:
                self.bar.update(self.task, completed=step)
            return
        if step == self.first_step + 1 or now - self.last_line >= self.interval:
            parts = self._recent(step, now) + self._eta(step, now)
            self._line("  ".join([f"{self._epoch_label(epoch)}  step {step}/{self.last_step}", *parts]))

    def validating(self) -> None:
        """The epoch's steps are done and validation starts (its time is kept out of samples/s)."""
        if not self.enabled:
            return
        self.validation_started = time.perf_counter()
        if self.bar is not None:
            self.bar.update(self.task, status="validating")

    def epoch_done(self, step: int, epoch: int, metrics: dict[str, float], score: str | None) -> None:
        """An epoch and its validation are done (``epoch`` counts finished epochs): always a line.

        Its loss and samples/s are the whole epoch's, validation left out of the rate."""
        if not self.enabled:
            return
        now = time.perf_counter()
        trained = self.validation_started if self.validation_started is not None else now
        parts = self.this_epoch.parts(step, self.samples_per_step, trained)
        if score is not None and score in metrics:
            parts.append(f"val {score} {metrics[score]:.4f}")
        parts += self._eta(step, now)
        timing = f"epoch {clock(now - self.this_epoch.started)}"
        if self.validation_started is not None:
            timing += f", validation {clock(now - self.validation_started)}"
        self._line("  ".join([f"epoch {epoch}/{self.epochs} done  step {step}/{self.last_step}", *parts,
                              f"({timing})"]))
        self.recent.reset(step, now)
        self.this_epoch.reset(step, now)
        self.validation_started = None
        if self.bar is not None:
            self.bar.update(self.task, description=self._epoch_label(epoch), status="")

    def stopped(self, step: int) -> None:
        """``max_steps`` ended the run in the middle of an epoch (``--resume`` continues it)."""
        if self.enabled:
            parts = self.this_epoch.parts(step, self.samples_per_step, time.perf_counter())  # this epoch's part
            self._line("  ".join([f"stopped at step {step} (max_steps)", *parts]))

    def close(self) -> None:
        """Take the bar down (the lines printed above it stay)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    # ------------------------------------------------------------------------------ text
    def _epoch_label(self, epoch: int) -> str:
        return f"epoch {min(epoch + 1, self.epochs)}/{self.epochs}"

    def _recent(self, step: int, now: float) -> list[str]:
        """Loss and rate since the last line, which starts a new window."""
        parts = self.recent.parts(step, self.samples_per_step, now)
        self.recent.reset(step, now)
        return parts

    def _eta(self, step: int, now: float) -> list[str]:
        """The run's average time per step so far (validations included) times the steps left."""
        done = step - self.first_step
        if done <= 0 or step >= self.last_step:
            return []
        return [f"ETA {clock((now - self.started) / done * (self.last_step - step))}"]

    def _line(self, text: str) -> None:
        self.last_line = time.perf_counter()
        if self.bar is not None:
            self.bar.console.print(text, markup=False)
        else:
            print(text, file=self.stream, flush=True)
