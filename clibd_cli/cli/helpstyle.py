"""How `--help` reads: plain metavars, clean usage lines, options grouped into panels, examples below.

Typer renders a parameter's Python type (`<bool>`, `<list[Path]>`, `<int range>`) beside it and writes
required arguments as `{queries}...` in the usage line; every boolean gets a `--no-…` twin.  Field
biologists read that as noise, and at 80 columns the extra columns squeeze the option names until Rich
cuts them (`--sequence-colu…`).  :class:`ClibdGroup` is the one place that fixes it for every command:
click's conventions for metavars (`PATH`, `INTEGER`, `TEXT`; nothing for a flag), `QUERIES...` in usage,
`--no-x` kept only where `--x` is on by default (e.g. `--no-calibrate`), and each option put in a panel
by what it is about (:data:`PANELS`), so shared options sit in the same panel in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args, get_origin

from typer import _click as click  # Typer's own copy of click (no click dependency)
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# Option (its parameter name) → help panel; options not listed stay under "Options".
PANELS: dict[str, str] = {
    **dict.fromkeys(("output", "fmt", "force", "resume", "hits", "top_k", "wide", "plots"), "Output"),
    **dict.fromkeys(("index_path", "neighbours", "exact", "threshold", "thresholds_from", "candidates", "kmer",
                     "against", "precision"), "Search and calls"),
    **dict.fromkeys(("id_column", "sequence_column", "image_column", "min_length", "marker", "manifest",
                     "group_by"), "Input columns and filters"),
    **dict.fromkeys(("model", "device", "int8", "workers", "threads", "batch_size"), "Model and speed"),
}


def _metavar(param: TyperOption) -> str:
    """click's names for a value: PATH, INTEGER, NUMBER, TEXT, or the choices."""
    described = param.type_descriptor
    if described.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in described.choices or ())
    if described.is_path:
        return "PATH"
    annotation = described.annotation
    while get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return {int: "INTEGER", float: "NUMBER"}.get(annotation, "PATH" if annotation is Path else "TEXT")


class _Option(TyperOption):
    def display_type_rich(self, ctx: click.Context) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or _metavar(self)


class _Argument(TyperArgument):
    def _label(self) -> str:
        if self.metavar:
            return self.metavar
        return (self.name or "").upper() + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None

    def _rich_display_name(self) -> str:
        return self._label()

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [self._label() if self.required else f"[{self._label()}]"]


def _tidy(params: list[click.Parameter]) -> list[click.Parameter]:
    """Give each parameter the help behaviour described in the module docstring (in place)."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument
            param.metavar = param._label()  # QUERIES... in the panel and in error messages
        elif isinstance(param, TyperOption):
            param.__class__ = _Option
            if param.is_flag and param.secondary_opts and param.default is not True:
                param.secondary_opts = []  # `--force`, not `--force / --no-force`
            if getattr(param, "rich_help_panel", None) is None:
                param.rich_help_panel = PANELS.get(param.name or "")
            if param.name == "help" and any(getattr(p, "rich_help_panel", None) for p in params[:-1]):
                param.rich_help_panel = "Help"  # last, not alone at the top
    return params


class ClibdCommand(TyperCommand):
    """A Typer command whose help reads well on 80 columns (see the module docstring)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _tidy(super().get_params(ctx))  # the command's own, plus --help


class ClibdGroup(TyperGroup):
    """The `clibd` group (`--version`, `--help`) and its subgroups (`clibd models`), styled like the commands.

    Every command found through the group gets the same style and its examples (:data:`EXAMPLES`), so a
    command or subgroup added later needs nothing of its own.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _tidy(super().get_params(ctx))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if type(command) is TyperGroup:
            command.__class__ = ClibdGroup
        elif type(command) is TyperCommand:
            command.__class__ = ClibdCommand
        if command is not None and not command.epilog:
            path = " ".join([*ctx.command_path.split()[1:], cmd_name])  # e.g. "models get"
            command.epilog = EXAMPLES.get(path)
        return command


def _examples(*lines: str) -> str:
    r"""An epilog of example command lines (``\b`` keeps Typer from joining them into one paragraph)."""
    return "\b\n[bold]Examples[/bold]\n" + "\n".join(f"  {line}" for line in lines)


# Shown under each command's options: the commands a user most likely wants (tests/test_help.py checks that
# each uses only options the command has).
EXAMPLES: dict[str, str] = {
    "build-index": _examples("clibd build-index --barcodes bold_download.tsv -o my_index",
                             "clibd build-index -b refs.tsv --images ref_photos.csv --model my_model -o idx"),
    "match": _examples("clibd match examples/queries.fasta --index examples/reference.fasta",
                       "clibd match reads.fasta -i my_index -o calls.csv --hits hits.tsv"),
    "classify": _examples("clibd classify photos/ --model my_model --index idx",
                          "clibd classify --manifest photos.csv --group-by specimen -m my_model -i idx"),
    "calibrate": _examples("clibd calibrate --index my_index --queries labelled_checks.fasta",
                           "clibd calibrate -i idx -m my_model --images labelled_photos.tsv"),
    "simulate": _examples("clibd simulate -o sim --species 60"),
    "train": _examples("clibd train --config tiny-cpu --data sim --output runs/tiny --nproc-per-node 2",
                       "clibd train --config bioscan1m-idt --data BIOSCAN_1M.hdf5 -o runs/paper --nproc-per-node 4",
                       "clibd train --output runs/paper --resume --nproc-per-node 4"),
    "check": _examples("clibd check --manifest specimens.csv --model my_model --index idx -o qc.csv"),
    "embed": _examples("clibd embed photos/ --model my_model -o photos.parquet"),
    "export": _examples("clibd export runs/tiny/checkpoints/best.pt -o my_model --int8",
                        "clibd export best.pth --from-official -o clibd_bioscan1m"),
    "evaluate": _examples("clibd evaluate --model kmer --data bold_split.tsv",
                          "clibd evaluate --model my_model --data sim/specimens.tsv -o report.json --plots plots/"),
    "split": _examples("clibd split bold.tsv.gz -o bold_split.tsv"),
    "models list": _examples("clibd models list    # what each knows, and which are installed"),
    "models get": _examples("clibd models get clibd-bioscan1m",
                            "clibd models get clibd-bioscan5m-image-dna --int8 --sample-images photos/"),
    "report": _examples("clibd report calls.csv --hits hits.tsv -o calls.html",
                        "clibd report photos.csv --photos photos/ -o photos.html"),
}
