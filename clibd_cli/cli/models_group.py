"""`clibd models list` and `clibd models get NAME`: the published checkpoints, installed as bundles by name.

The catalogue is :mod:`clibd_cli.published`, the install :mod:`clibd_cli.model_install` and the cache
:mod:`clibd_cli.model_cache`; this module parses and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clibd_cli.cli.console import stderr, stdout
from clibd_cli.cli.errors import user_errors

models_app = typer.Typer(
    name="models",
    help="Published CLIBD models: list them, and install one by name (then use --model NAME).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@models_app.command("list")
@user_errors
def list_models() -> None:
    """The published models, what each knows, where it comes from, and which are installed."""
    from rich.table import Table

    from clibd_cli.model_cache import installed_names, installed_path, models_dir
    from clibd_cli.published import catalogue

    entries = catalogue()
    table = Table(title=f"clibd models (installed ones live in {models_dir()})")
    for column in ("name", "installed", "knows", "model", "hub repository", "file"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(entry.name, "yes" if installed_path(entry.name) else "no", entry.knows, entry.description,
                      entry.repo, entry.filename)
    published = {entry.name for entry in entries}
    for name in installed_names():
        if name not in published:
            table.add_row(name, "yes", "–", "installed bundle, not in the catalogue", "–", "–")
    stdout().print(table)
    stderr().print("Install one with 'clibd models get NAME'; then give --model NAME to any command.")


@models_app.command("get")
@user_errors
def get_model(
    name: Annotated[str, typer.Argument(help="A name from 'clibd models list'.")],
    force: Annotated[bool, typer.Option(help="Download (if needed) and install again over an installed copy.")
                     ] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write int8 encoders, kept only if they agree with "
                                       "fp32.")] = False,
    sample_images: Annotated[list[str] | None, typer.Option(help="Real photos (files, folders, patterns) for the "
                                                            "parity and int8 checks.")] = None,
    sample_barcodes: Annotated[Path | None, typer.Option(help="Real barcodes (with taxonomy, for text too) for the "
                                                         "parity and int8 checks.")] = None,
) -> None:
    """Download a published checkpoint, convert it to a verified bundle and install it under its name."""
    from clibd_cli.cli.models import _parity_table
    from clibd_cli.model_install import install_model

    console = stderr()
    result = install_model(name, force=force, int8=int8, sample_images=sample_images,
                           sample_barcodes=sample_barcodes, progress=lambda message: console.print(f"{message}…"))
    manifest = result.manifest
    if result.already:
        console.print(f"{name} is already installed in {result.path} (--force installs it again); "
                      f"use --model {name}.")
        return
    stdout().print(_parity_table(result.path, manifest))
    console.print(f"[green]installed[/green] {name} in {result.path} ({', '.join(manifest['modalities'])}; "
                  f"fingerprint {manifest['fingerprint']}); use --model {name}.")
