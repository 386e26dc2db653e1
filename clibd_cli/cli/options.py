"""Options several commands share, declared once (same flag, same help everywhere), and their parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clibd_cli import schema
from clibd_cli.errors import ClibdError
from clibd_cli.schema import RANKS

# Table columns, declared once for every command that reads a table; by default each is found with the column map
# of clibd_cli.schema, the same for barcodes, photos and splits.
IdColumn = Annotated[str | None, typer.Option(help="Column holding specimen/record ids in tables (default: the first "
                                              f"present of {', '.join(schema.ID_COLUMNS)}).")]
SeqColumn = Annotated[str | None, typer.Option(help="Column holding the barcodes in tables (default: the first "
                                               f"present of {', '.join(schema.SEQUENCE_COLUMNS)}).")]
ImageColumn = Annotated[str | None, typer.Option(help="Column holding the photo files in tables (default: the first "
                                                 f"present of {', '.join(schema.IMAGE_COLUMNS)}).")]
MinLength = Annotated[int, typer.Option(min=0, help="Flag sequences shorter than this (bp) as 'short'.")]
Marker = Annotated[str, typer.Option(help="Which marker to keep from BOLD packages that mix markers "
                                     "(e.g. COI-5P, ITS, rbcLa); 'all' keeps every row.")]
Kmer = Annotated[int | None, typer.Option("--kmer", min=2, max=8, help="k of the weight-free k-mer profile "
                                                         "encoder, 2-8 (default 5; must match the index).")]


def _dash_is_stdout(value: Path | None) -> Path | None:
    """``-o -`` is standard output, as ``-`` is standard input for queries (it wrote a file named ``-``)."""
    return None if value is not None and str(value) == "-" else value


# Outputs of the commands that write result rows (match, classify, check).
Output = Annotated[Path | None, typer.Option("--output", "-o", callback=_dash_is_stdout,
                                             help="Write results here (format from the extension; - for "
                                             "standard output).")]
Format = Annotated[str | None, typer.Option("--format", "-f", help="table, csv, tsv, json, jsonl or dwc (Darwin "
                                            "Core, match/classify; -o x.dwc.csv) (default: table on a terminal, "
                                            "CSV when piped).")]
ForceOutput = Annotated[bool, typer.Option(help="Overwrite an existing output file.")]
Wide = Annotated[bool, typer.Option("--wide", help="On a terminal, show every column instead of the compact "
                                   "table (id, status, call, identity or score, flags).")]
Hits = Annotated[Path | None, typer.Option(help="Write the long top-hits table here (CSV/TSV).")]
Exact = Annotated[bool, typer.Option(help="Exact search even on a large index.")]
Neighbours = Annotated[int, typer.Option(min=1, max=1000, help="References consulted per query.")]

# Models and where they run.
ModelOption = Annotated[Path | None, typer.Option("--model", "-m", help="Model bundle from 'clibd export', or the "
                                                  "name of one 'clibd models get' installed (default for barcodes: "
                                                  "the weight-free k-mer profile).")]
BundleOption = Annotated[Path, typer.Option("--model", "-m", help="Model bundle from 'clibd export', or the name "
                                            "of one 'clibd models get' installed.")]
Device = Annotated[str, typer.Option(help="auto (CUDA if it really works, else CPU), cpu or cuda.")]
Int8 = Annotated[bool, typer.Option("--int8", help="Use the bundle's int8 encoders (faster on CPU; agreement "
                                    "with fp32 is in the bundle's manifest).")]
Workers = Annotated[int | None, typer.Option(min=1, help="Threads decoding photos (default: up to 8).")]
TrustCheckpoint = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Open a checkpoint that holds more than tensors and plain data (one written by an "
    "older clibd or other code) with the full unpickler, which can run code hidden in the file: only for files "
    "whose origin you trust.")]


def parse_thresholds(values: list[str] | None) -> dict[str, float]:
    """``--threshold RANK=VALUE`` (repeatable) as {rank: value}: a fraction (``species=0.98``) or, as identities
    are printed, a percentage (``species=98`` or ``species=98%``)."""
    out: dict[str, float] = {}
    for item in values or []:
        rank, sep, value = item.partition("=")
        rank, value = rank.strip().lower(), value.strip()
        percent = value.endswith("%")
        try:
            number = float(value.removesuffix("%"))
        except ValueError:
            number = float("nan")
        if percent or 1.01 < number <= 100.0:
            number /= 100.0
        if not sep or rank not in RANKS or not 0.0 <= number <= 1.01:
            raise ClibdError(f"--threshold {item!r}: use RANK=VALUE with RANK one of "
                             f"{', '.join(RANKS)} and VALUE a fraction or a percentage, e.g. species=0.98 or "
                             "species=98%.")
        out[rank] = number
    return out
