"""The `clibd` command line: parses options, calls the library, prints.

Commands are grouped by concern: :mod:`~clibd_cli.cli.identify` (match, classify, check),
:mod:`~clibd_cli.cli.references` (build-index, calibrate, embed), :mod:`~clibd_cli.cli.models` (export),
:mod:`~clibd_cli.cli.models_group` (models list, models get),
:mod:`~clibd_cli.cli.training` (simulate, train, split), :mod:`~clibd_cli.cli.evaluation` (evaluate).
The workflows they call are the library's (:mod:`clibd_cli.api` lists them), the options several share
are declared once in :mod:`~clibd_cli.cli.options`, and :mod:`~clibd_cli.cli.errors` turns a user's
mistake into one line and an exit code.

Heavy modules (numpy, onnxruntime, Bio, torch for training) are imported inside the commands, so
`clibd --help` starts fast and the inference commands never load torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from clibd_cli import __version__
from clibd_cli.cli.helpstyle import ClibdGroup

app = typer.Typer(
    name="clibd",
    help="Identify insects from DNA barcodes (and, with a model, photos) against a reference library, "
         "offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=ClibdGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clibd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """clibd: CLIBD embeddings for barcodes and photos, with honest per-rank calls."""
    _refuse_bomb_warnings()


def _refuse_bomb_warnings() -> None:
    """Make PIL's decompression-bomb warning an error for the whole process, which the command line owns.

    PIL only warns for images between its pixel limit and twice that; clibd refuses them
    (:func:`clibd_cli.preprocess.load_image` turns the warning into an error per call).  On Python 3.11 that
    per-call filter is process-global, so with several decoding threads one can restore the filters while
    another is inside and the warning prints.  Set once here, before any thread starts, every filter list the
    threads save and restore holds it.  (PIL.Image imports in ~20 ms; the library itself sets no global filter.)
    """
    import warnings

    from PIL import Image

    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


from clibd_cli.cli import evaluation, identify, models, references, report, training  # noqa: E402  (commands need `app`'s module loaded)

# Registered here, in the order `clibd --help` lists them.
COMMANDS = (
    ("build-index", references.build_index),
    ("match", identify.match),
    ("classify", identify.classify),
    ("calibrate", references.calibrate),
    ("simulate", training.simulate),
    ("train", training.train),
    ("check", identify.check),
    ("embed", references.embed),
    ("export", models.export_command),
    ("evaluate", evaluation.evaluate),
    ("split", training.split_command),
    ("report", report.report_command),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)

from clibd_cli.cli.models_group import models_app  # noqa: E402  (`clibd models list|get`, a group of commands)

app.add_typer(models_app, name="models")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (`kill`, `docker stop`, a scheduler's time limit) stops a run the way Ctrl-C does: as a
    KeyboardInterrupt, so the writers close, finished rows stay, JSON ends valid and --resume continues.
    A second SIGTERM is ignored so it cannot cut that clean-up short (SIGKILL still ends the process)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()
