"""`clibd match`, `clibd classify` and `clibd check`: identify barcodes and photos against an index.

Each command parses its options, prepares the run in the library (:class:`clibd_cli.match.MatchRun`,
:class:`clibd_cli.classify.PhotoRun`, :class:`clibd_cli.classify.SpecimenCheck`), streams the results to
a resumable output (:class:`clibd_cli.runs.RunOutput`) and prints a one-line summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clibd_cli.cli.console import counted, progress_bar, say, stderr, stdout
from clibd_cli.cli.errors import user_errors
from clibd_cli.cli.options import (
    BundleOption,
    Device,
    Exact,
    ForceOutput,
    Format,
    Hits,
    IdColumn,
    ImageColumn,
    Int8,
    Kmer,
    Marker,
    MinLength,
    ModelOption,
    Neighbours,
    Output,
    SeqColumn,
    Wide,
    Workers,
    parse_thresholds,
)
from clibd_cli.errors import ClibdError

STATUSES = ("assigned", "novel_candidate", "rolled_up", "no_match", "error")
VERDICTS = ("consistent", "conflict", "inconclusive", "no_barcode", "error")


def _counted(counts: dict[str, int], names: tuple[str, ...], *, errors_if_none: bool = True) -> str:
    """"12 assigned, 3 no_match, …" in the given order (``error`` left out when none and not ``errors_if_none``)."""
    return ", ".join(f"{counts.get(s, 0):,} {s}" for s in names if s != "error" or errors_if_none or counts.get(s))


@user_errors
def match(
    queries: Annotated[list[Path], typer.Argument(help="Query barcodes: FASTA, BOLD/BIOSCAN TSV or CSV.")],
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index directory, or a reference file "
                                             "(then an exact index is built in memory).")],
    output: Output = None,
    fmt: Format = None,
    force: ForceOutput = False,
    wide: Wide = False,
    resume: Annotated[bool, typer.Option(help="Skip queries already in the output file.")] = False,
    neighbours: Neighbours = 10,
    top_k: Annotated[int, typer.Option(min=0, max=1000, help="Hits per query written to --hits.")] = 5,
    hits: Hits = None,
    exact: Exact = False,
    threshold: Annotated[list[str] | None, typer.Option(help="Override a rank's threshold, e.g. "
                                                        "species=0.97 (repeatable).")] = None,
    kmer: Kmer = None,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    min_length: MinLength = 200,
    marker: Marker = "COI-5P",
    thresholds_from: Annotated[str, typer.Option("--thresholds", help="calibrated (the index's, fitted for the "
                               "target precision) or conventional (identity 97/95/90/85 % for species/genus/"
                               "family/order).")] = "calibrated",
    candidates: Annotated[int, typer.Option(min=1, max=1000, help="Distinct references proposed per query by the "
                          "k-mer search and verified by alignment.")] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="Queries per batch.")] = 1024,
    threads: Annotated[int | None, typer.Option(help="Search threads and alignment processes (default: all "
                                                     "cores).")] = None,
    model: ModelOption = None,
    device: Device = "auto",
    int8: Int8 = False,
) -> None:
    """Identify query barcodes: one row per query, calls per rank made on alignment identity."""
    from clibd_cli.match import THRESHOLD_SOURCES, MatchOptions, MatchRun
    from clibd_cli.report import MATCH_COLUMNS, MATCH_HIT_COLUMNS
    from clibd_cli.runs import RunOutput
    from clibd_cli.workflow import ReadOptions

    if thresholds_from not in THRESHOLD_SOURCES:
        raise ClibdError(f"--thresholds {thresholds_from!r}: use calibrated or conventional.")
    overrides = parse_thresholds(threshold)
    out = RunOutput(output, fmt, columns=MATCH_COLUMNS, hits=hits, hit_columns=MATCH_HIT_COLUMNS, resume=resume,
                    force=force, stdout_is_tty=sys.stdout.isatty(), subject="barcode", wide=wide)
    out.check(inputs=[*queries, index_path], folders=[index_path])
    options = MatchOptions(neighbours=neighbours, top_k=top_k if hits else 0, exact=exact or None,
                           batch_size=batch_size, threads=threads, candidates=candidates)
    reading = ReadOptions(id_column=id_column, sequence_column=sequence_column, min_length=min_length, marker=marker)
    run = MatchRun.open(queries, index_path, options=options, thresholds=thresholds_from, overrides=overrides,
                        kmer=kmer, model=model, device=device, int8=int8, reading=reading, notify=say)
    done = out.done()
    out.start(run.info, run.identity)
    with progress_bar("matching") as advance:
        counts = out.write(run.results(done, advance), stdout(highlight=False))
    run.finish()
    skipped = f" ({len(done):,} already done)" if done else ""
    stderr().print(f"{counted(sum(counts.values()), 'query', 'queries')}{skipped}: "
                   f"{_counted(counts, STATUSES, errors_if_none=False)}")


@user_errors
def classify(
    photos: Annotated[list[str] | None, typer.Argument(help="Photos: files, folders (recursive) or glob "
                                                       "patterns.")] = None,
    model: BundleOption = ...,
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index directory built with the same "
                                             "model.")] = ...,
    against: Annotated[str, typer.Option(help="Reference modality: dna (barcodes), image, text, or all "
                                         "(the most specific confident call wins).")] = "dna",
    manifest: Annotated[Path | None, typer.Option(help="CSV/TSV listing photos (image_file column; "
                                                  "optional id and grouping columns).")] = None,
    group_by: Annotated[str | None, typer.Option(help="Fuse photos of one specimen into one call: a manifest "
                                                 "column, or 'folder'.")] = None,
    id_column: IdColumn = None,
    image_column: ImageColumn = None,
    output: Output = None,
    fmt: Format = None,
    force: ForceOutput = False,
    wide: Wide = False,
    resume: Annotated[bool, typer.Option(help="Skip photos already in the output file.")] = False,
    neighbours: Annotated[int, typer.Option(min=1, max=1000, help="References consulted per photo.")] = 10,
    top_k: Annotated[int, typer.Option(min=0, max=1000, help="Hits per photo written to --hits.")] = 5,
    hits: Hits = None,
    exact: Exact = False,
    threshold: Annotated[list[str] | None, typer.Option(help="Override a rank's threshold, e.g. "
                                                        "species=0.5 (repeatable).")] = None,
    device: Device = "auto",
    int8: Int8 = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per model call.")] = 32,
    workers: Workers = None,
    threads: Annotated[int | None, typer.Option(help="Model/search threads (default: all cores).")] = None,
) -> None:
    """Identify insects from photos against barcodes, photos or taxonomy strings; one row per photo/specimen."""
    from clibd_cli.classify import AGAINST, CLASSIFY_COLUMNS, ClassifyOptions, PhotoRun
    from clibd_cli.report import HIT_COLUMNS
    from clibd_cli.runs import RunOutput
    from clibd_cli.workflow import ReadOptions

    if against not in AGAINST:
        raise ClibdError(f"--against {against!r}: use one of {', '.join(AGAINST)}.")
    if not photos and manifest is None:
        raise ClibdError("no photos given: pass files, folders or patterns, or --manifest.")
    overrides = parse_thresholds(threshold)
    out = RunOutput(output, fmt, columns=CLASSIFY_COLUMNS, hits=hits, hit_columns=[*HIT_COLUMNS, "against"],
                    resume=resume, force=force, stdout_is_tty=sys.stdout.isatty(), subject="photo", wide=wide)
    out.check(inputs=[*(Path(p) for p in photos or []), *([manifest] if manifest else [])], folders=[index_path])
    options = ClassifyOptions(neighbours=neighbours, top_k=top_k if hits else 0, exact=exact or None,
                              batch_size=batch_size, threads=threads, against=against, workers=workers)
    run = PhotoRun.open(photos, model=model, index=index_path, manifest=manifest, group_by=group_by, options=options,
                        overrides=overrides, reading=ReadOptions(id_column=id_column, image_column=image_column),
                        device=device, int8=int8, notify=say)
    done = out.done()
    run.skip(done)
    out.start(run.info, run.identity)
    with progress_bar("classifying", len(run)) as advance:
        counts = out.write(run.results(advance), stdout(highlight=False))
    skipped = f" ({len(done):,} already done)" if done else ""
    unit = "specimens" if group_by else "photos"
    stderr().print(f"{sum(counts.values()):,} {unit}{skipped} on {_device(run.bundle)}: {_counted(counts, STATUSES)}")


def _device(bundle) -> str:
    """Where the image encoder ran: ``cpu``, ``cuda``, and the precision when not fp32 (``cuda (fp16)``)."""
    device = bundle.used_device or "cpu"
    precision = bundle.precision("image") if bundle.used_device else "fp32"
    return device if precision == "fp32" else f"{device} ({precision})"


@user_errors
def check(
    manifest: Annotated[Path, typer.Option(help="Specimen table with a photo column (image_file) and a barcode "
                                           "column, one row per specimen.")],
    model: BundleOption,
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index with dna references built with the "
                                             "same model.")],
    against: Annotated[str, typer.Option(help="What photos are identified against: dna, image, text, all.")
                       ] = "dna",
    output: Output = None,
    fmt: Format = None,
    force: ForceOutput = False,
    wide: Wide = False,
    neighbours: Neighbours = 10,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
    device: Device = "auto",
    int8: Int8 = False,
    workers: Workers = None,
) -> None:
    """Quality control: per rank, does each specimen's photo agree with its own barcode?"""
    from clibd_cli.check import CHECK_COLUMNS
    from clibd_cli.classify import ClassifyOptions, SpecimenCheck
    from clibd_cli.runs import RunOutput
    from clibd_cli.workflow import ReadOptions

    out = RunOutput(output, fmt, columns=CHECK_COLUMNS, force=force, stdout_is_tty=sys.stdout.isatty(), wide=wide)
    out.check()
    reading = ReadOptions(id_column=id_column, sequence_column=sequence_column, image_column=image_column,
                          min_length=0)
    run = SpecimenCheck.open(manifest, model=model, index=index_path, reading=reading, device=device, int8=int8,
                             options=ClassifyOptions(neighbours=neighbours, workers=workers, against=against))
    out.start(run.info)
    with progress_bar("checking", len(run.photos)) as advance:
        counts = out.write(run.rows(advance), stdout(highlight=False), count="verdict")
    stderr().print(f"{sum(counts.values()):,} specimens: {_counted(counts, VERDICTS)}")
