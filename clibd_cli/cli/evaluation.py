"""`clibd evaluate`: the paper's protocol plus open-set numbers (:func:`clibd_cli.evaluate.evaluate_model`),
printed as two tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clibd_cli.cli.console import step_progress, wrote
from clibd_cli.cli.errors import user_errors
from clibd_cli.cli.options import Device, IdColumn, ImageColumn, SeqColumn, TrustCheckpoint, Workers
from clibd_cli.errors import ClibdError
from clibd_cli.schema import RANKS


@user_errors
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="Model bundle folder, an installed model's name "
                                       "('clibd models get'), a 'clibd train' checkpoint (.pt), or kmer / kmer:K for "
                                       "the weight-free DNA profile.")],
    data: Annotated[Path, typer.Option(help="Table with a split column ('clibd split' or 'clibd simulate' output): "
                                       "taxonomy plus barcodes and/or image files.")],
    split: Annotated[str, typer.Option(help="Queries to evaluate: test or val (the other calibrates the "
                                       "open-set thresholds).")] = "test",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the full report as JSON.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for accuracy.png and reliability.png.")] = None,
    precision: Annotated[float, typer.Option(min=0.5, max=1.0, help="Target precision of the open-set "
                                             "thresholds.")] = 0.95,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
    device: Device = "auto",
    workers: Workers = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --output.")] = False,
    trust_checkpoint: TrustCheckpoint = False,
) -> None:
    """The paper's evaluation (micro/macro top-1/3/5 per rank, seen/unseen/harmonic) plus open-set metrics."""
    from rich.console import Console

    from clibd_cli.evaluate import evaluate_model, write_report
    from clibd_cli.workflow import ReadOptions

    if output is not None and output.exists() and not force:
        raise ClibdError(f"{output}: already exists. Use --force to overwrite it.")
    if plots is not None:  # before minutes of embedding, not after
        from clibd_cli.plots import require_matplotlib

        require_matplotlib()
    reading = ReadOptions(id_column=id_column, sequence_column=sequence_column, image_column=image_column)
    report = evaluate_model(model, data, split=split, precision=precision, reading=reading, device=device,
                            workers=workers, trust_checkpoint=trust_checkpoint, progress=step_progress)
    console = Console(width=None if sys.stdout.isatty() else 160)  # a file or pipe gets unwrapped tables
    console.print(_paper_table(report))
    console.print(_open_set_table(report))
    if output is not None:
        wrote(str(write_report(report, output)))
    if plots is not None:
        from clibd_cli.plots import plot_report

        wrote(", ".join(map(str, plot_report(report, plots))))


def _percent(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def _paper_table(report: dict):
    from rich.table import Table

    table = Table(title=f"{report['model']}: {report['split']} split, micro top-1 % (seen / unseen / harmonic); "
                        f"{report['counts']['queries_seen']} + {report['counts']['queries_unseen']} queries, "
                        f"{report['counts']['keys']} keys")
    table.add_column("rank")
    pairs = [p for p in report["pairs"] if report["closed_set"].get(p)]
    for pair in pairs:
        table.add_column(pair.replace("_to_", "→"), justify="right")
    for rank in RANKS:
        cells = []
        for pair in pairs:
            entry = report["closed_set"][pair]
            cells.append(" / ".join(_percent(entry.get(g, {}).get(rank, {}).get("micro_top1"))
                                    for g in ("seen", "unseen", "harmonic")))
        table.add_row(rank, *cells)
    return table


def _open_set_table(report: dict):
    from rich.table import Table

    calibrated_on = report["open_set_calibrated_on"]
    table = Table(title=f"open set: unseen species' keys removed; thresholds for precision "
                        f"{report.get('open_set_precision', 0.95):g} calibrated on the {calibrated_on} split")
    for column in ("pair", "absent: named (wrong)", "absent: rolled up right", "present: named",
                   "present: named right", "AUROC absent"):
        table.add_column(column, justify="right")
    for pair, entry in report["open_set"].items():
        table.add_row(pair.replace("_to_", "→"), _percent(entry["absent"]["named_species_share"]),
                      _percent(entry["absent"]["rolled_up_correct_share"]), _percent(entry["present"]["named_share"]),
                      _percent(entry["present"]["named_correct_share"]), f"{entry['auroc_species_absent']:.3f}")
    if not report["open_set"]:
        table.caption = (f"No open-set figures: they need seen_keys and at least 10 queries in the {calibrated_on} "
                         "split to calibrate thresholds on; 'clibd split' on a larger table gives both.")
    return table
