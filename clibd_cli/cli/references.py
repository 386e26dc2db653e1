"""`clibd build-index`, `clibd calibrate` and `clibd embed`: reference libraries and embeddings.

The commands parse options and print; building (:func:`clibd_cli.build.build_index`), calibrating
(:func:`clibd_cli.calibrate.calibrate_index`) and embedding (:mod:`clibd_cli.embeddings`) are the library's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clibd_cli.cli.console import counted, say, stderr, stdout, step_progress, wrote
from clibd_cli.cli.errors import user_errors
from clibd_cli.cli.options import (
    BundleOption,
    Device,
    IdColumn,
    ImageColumn,
    Int8,
    Kmer,
    Marker,
    MinLength,
    ModelOption,
    Neighbours,
    SeqColumn,
    Workers,
)
from clibd_cli.errors import ClibdError
from clibd_cli.schema import RANKS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from clibd_cli.assign import LeadRule
    from clibd_cli.calibrate import Calibration
    from clibd_cli.index import ReferenceIndex
    from clibd_cli.match import ShortReads


@user_errors
def build_index(
    output: Annotated[Path, typer.Option("--output", "-o", help="Index directory to write.")],
    barcodes: Annotated[list[Path] | None, typer.Option("--barcodes", "-b", help="Reference barcodes with "
                        "taxonomy: FASTA, BOLD TSV, BIOSCAN TSV/CSV (repeatable).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Reference photos: a manifest CSV/TSV with an "
                      "image_file column and taxonomy (needs --model).")] = None,
    text_keys: Annotated[bool, typer.Option("--text-keys", help="Also index each distinct taxonomy string "
                         "as a text reference (image→text; needs --model).")] = False,
    model: ModelOption = None,
    append: Annotated[bool, typer.Option(help="Add the records to an existing index.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing index.")] = False,
    kmer: Kmer = None,
    calibrate: Annotated[bool, typer.Option(help="Fit thresholds by leave-species-out on the reference.")] = True,
    precision: Annotated[float, typer.Option(min=0.5, max=1.0,
                                             help="Target precision for calibrated thresholds.")] = 0.95,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
    min_length: MinLength = 200,
    marker: Marker = "COI-5P",
    device: Device = "auto",
    workers: Workers = None,
    threads: Annotated[int | None, typer.Option(help="Cores for the HNSW build and the calibration's alignments "
                                                     "(default: all).")] = None,
) -> None:
    """Build (or extend) a reference index from barcodes, photos and taxonomy strings with taxonomy."""
    from clibd_cli.build import BuildOptions
    from clibd_cli.build import build_index as build
    from clibd_cli.workflow import ReadOptions

    reading = ReadOptions(id_column=id_column, sequence_column=sequence_column, image_column=image_column,
                          min_length=min_length, marker=marker)
    options = BuildOptions(append=append, force=force, kmer=kmer, calibrate=calibrate, precision=precision,
                           reading=reading, device=device, workers=workers, threads=threads)
    report = build(output, barcodes=barcodes or [], images=images, text_keys=text_keys, model=model, options=options,
                   progress=step_progress, notify=say)
    for modality, part in report.parts.items():
        _print_part(output, modality, part)
    stderr().print(f"done in {report.seconds:.1f} s")


def _print_part(output: Path, modality: str, part: ReferenceIndex) -> None:
    """What one part of a built index holds, and its thresholds per query modality."""
    from rich.markup import escape

    console = stderr()
    counts = part.manifest["counts"]
    what = part.encoder_description.get("name")
    if what == "kmer-profile":
        what += f" k={part.encoder_description.get('k')}"
    console.print(f"[green]wrote[/green] {output} \\[{modality}]: {counted(counts['records'], 'record')}, "
                  f"{counts['species']:,} species, {counted(counts['genus'], 'genus', 'genera')} ({what}; "
                  f"search: {escape(part.search_description())})")
    if modality != "text":  # taxonomy strings are references, never queries
        console.print(f"  {modality} queries: " + _thresholds_text(part.thresholds, part.leads)
                      + f" ({part.manifest['calibration'].get('method')})")
    for line in _short_reads_lines(part.short_read_thresholds()):
        console.print("  " + line)
    for query, entry in part.manifest.get("cross_thresholds", {}).items():
        console.print(f"  {query} queries: " + ", ".join(f"{r} {entry['thresholds'][r]:.3f}" for r in RANKS)
                      + " (leave-species-out)")


@user_errors
def calibrate(
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index directory to calibrate.")],
    queries: Annotated[Path | None, typer.Option(help="Labelled queries, ideally including species absent "
                                                 "from the reference (default: the reference itself, "
                                                 "leaving out records, species, genera, families, orders).")] = None,
    precision: Annotated[float, typer.Option(min=0.5, max=1.0, help="Target precision per rank (barcodes: at "
                                             "most 1 - precision wrong calls where the taxon is present and "
                                             "where it is missing).")] = 0.95,
    sample: Annotated[int | None, typer.Option(min=20, help="Barcodes: taxa drawn per leave-out level (default "
                                               "1000); photos: labelled records used (default 1000).")] = None,
    novel_share: Annotated[float, typer.Option(min=0.0, max=0.9, help="Photos only: assumed share of field "
                                               "specimens whose species is absent from the reference.")] = 0.25,
    neighbours: Neighbours = 10,
    seed: Annotated[int, typer.Option(help="Seed of the leave-species-out sample.")] = 0,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
    images: Annotated[Path | None, typer.Option(help="Labelled photos (manifest with taxonomy): calibrate photo "
                                                "queries against --against references (needs --model).")] = None,
    against: Annotated[str, typer.Option(help="With --images: the reference modality to calibrate.")] = "dna",
    model: ModelOption = None,
    device: Device = "auto",
) -> None:
    """Fit per-rank thresholds for a target precision and store them in the index."""
    from clibd_cli.calibrate import CalibrateOptions, calibrate_index
    from clibd_cli.workflow import ReadOptions

    reading = ReadOptions(id_column=id_column, sequence_column=sequence_column, image_column=image_column,
                          min_length=0)
    options = CalibrateOptions(precision=precision, sample=sample, novel_share=novel_share, neighbours=neighbours,
                               seed=seed, reading=reading)
    calibration = calibrate_index(index_path, queries=queries, images=images, against=against, model=model,
                                  device=device, options=options, notify=say, progress=step_progress)
    stdout().print(_thresholds_table(calibration, precision))
    for line in _short_reads_lines(calibration.short_reads):
        stdout().print(line)


def _thresholds_text(thresholds: dict[str, float], leads: Mapping[str, LeadRule] | None) -> str:
    """Per rank its threshold, and its lead rule where it has one."""
    leads = leads or {}
    return ", ".join(f"{r} {thresholds[r]:.3f}" + (f" (or {_lead_text(leads[r])})" if r in leads else "")
                     for r in RANKS if r in thresholds)


def _lead_text(rule: LeadRule) -> str:
    """A lead rule in a few words: its threshold, the lead in identity points, and whether the call must also
    reach its taxon's spread."""
    points = f"{100 * rule.lead:.2g}"
    within = ", within spread" if rule.within_spread else ""
    return f"{rule.threshold:.3f}, {points} {'pt' if points == '1' else 'pts'} ahead{within}"


def _short_reads_lines(sets: Sequence[ShortReads]) -> list[str]:
    """The thresholds for short reads, a line per set, shortest overlap first (`build-index`, `calibrate`)."""
    lines, start = [], 0
    for short in sets:
        span = f"{start}-{short.below_overlap - 1} bp" if start else f"< {short.below_overlap} bp"
        lines.append(f"short reads (overlap {span}): " + _thresholds_text(short.thresholds, short.leads)
                     + (f" (fitted on {short.window} bp stretches)" if short.window else ""))
        start = short.below_overlap
    return lines


def _thresholds_table(calibration: Calibration, precision: float):
    """Per rank: the threshold, and how its calls fared (open set: right and wrong where the taxon is
    present, wrong where it was left out; otherwise precision and coverage).  A rank no threshold can
    call at the target precision reads "never" rather than a number above 1, a figure that could not be
    measured reads "–" rather than nan, and the caption says in words what calls will do."""
    import math

    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from clibd_cli.calibrate import NEVER, describe_threshold

    def cell(value) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    captions = []
    for rank in RANKS:
        info = calibration.report["ranks"][rank]
        if calibration.thresholds[rank] >= NEVER:
            captions.append(f"{rank}: no threshold reaches precision {precision:.2f} here, so {rank} is never "
                            "called; calls stop at the rank above.")
        elif info.get("note"):
            captions.append(f"{rank}: {info['note']} ({calibration.thresholds[rank]:.3f}).")
    table = Table(title=f"thresholds for precision {precision:.2f} ({calibration.report['method']}, "
                        f"{calibration.report['queries']} queries)")
    open_set = "right_present" in calibration.report["ranks"]["species"]
    columns = (("rank", "threshold", "or, if ahead", "right (taxon present)", "wrong (taxon present)",
                "wrong (taxon left out)") if open_set else ("rank", "threshold", "precision", "coverage"))
    for column in columns:
        table.add_column(column)
    for rank in RANKS:
        info = calibration.report["ranks"][rank]
        keys = ("right_present", "false_calls_present", "false_calls_absent") if open_set else ("precision", "coverage")
        threshold = calibration.thresholds[rank]
        lead = ([_lead_text(calibration.leads[rank]) if rank in calibration.leads else "–"] if open_set else [])
        table.add_row(rank, describe_threshold(threshold, short=True), *lead, *(cell(info.get(key)) for key in keys))
    if calibration.leads:
        captions.append("or, if ahead: a call is also made from this lower identity when its taxon's best hit is "
                        "that many identity points above the best hit of any other taxon at that rank (within "
                        "spread: and no farther from the taxon than its own species, or genera, are from each "
                        "other in the reference).")
    return Group(table, *(Text(line) for line in captions))


@user_errors
def embed(
    inputs: Annotated[list[str] | None, typer.Argument(help="Photos (files, folders, patterns) for image; barcode "
                                                       "files for dna; tables with taxonomy for text.")] = None,
    model: BundleOption = ...,
    modality: Annotated[str, typer.Option(help="image, dna or text.")] = "image",
    output: Annotated[Path, typer.Option("--output", "-o", help="OUT.parquet (id + embedding columns, needs "
                                         "pyarrow) or OUT.npy (+ OUT.ids.tsv).")] = ...,
    manifest: Annotated[Path | None, typer.Option(help="CSV/TSV listing photos (image modality).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    device: Device = "auto",
    int8: Int8 = False,
    workers: Workers = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per model call.")] = 32,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
) -> None:
    """Write embeddings with their ids (for your own analyses, plots or indexes)."""
    from clibd_cli.embeddings import embed_inputs, write_embeddings
    from clibd_cli.models import load_model
    from clibd_cli.workflow import ReadOptions, read_records

    if modality not in ("image", "dna", "text"):
        raise ClibdError(f"--modality {modality!r}: use image, dna or text.")
    if not inputs and manifest is None:
        raise ClibdError("nothing to embed: give inputs (or --manifest for photos).")
    bundle = load_model(model, device, int8)
    reading = ReadOptions(min_length=0, id_column=id_column, sequence_column=sequence_column)
    ids, vectors, errors = embed_inputs(bundle, modality, inputs or [], manifest=manifest, workers=workers,
                                        batch_size=batch_size, read=lambda paths: read_records(paths, reading),
                                        id_column=id_column, image_column=image_column)
    written = write_embeddings(output, ids, vectors, errors, modality=modality, model=bundle, force=force)
    wrote(f"{', '.join(map(str, written))}: {len(ids):,} {modality} embeddings of dimension {bundle.dim}"
          + (f", {len(errors):,} inputs failed (listed)" if errors else ""))
