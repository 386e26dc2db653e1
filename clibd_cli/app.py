"""The `clibd` command line: parses options, calls the library, prints.

Heavy modules (numpy, hnswlib, Bio, torch for training) are imported inside the commands, so
`clibd --help` starts fast and the inference commands never load torch.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from clibd_cli import __version__
from clibd_cli.errors import ClibdError

app = typer.Typer(
    name="clibd",
    help="Identify insects from DNA barcodes (and, with a model, photos) against a reference library, "
         "offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

RANK_NAMES = ("order", "family", "genus", "species")


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def user_errors(func):
    """Turn :class:`ClibdError` into one red line on stderr and exit code 2 (tracebacks are for bugs)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ClibdError as exc:
            from rich.markup import escape

            _stderr().print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _stderr().print("[yellow]interrupted[/yellow]: finished rows were kept; rerun with --resume.")
            raise typer.Exit(130) from None

    return wrapper


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


def _progress(total: int, description: str):
    """A rich progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=_stderr(), transient=True,
                        disable=not sys.stderr.isatty())
    task = progress.add_task(description, total=total)
    return progress, lambda n: progress.advance(task, n)


def _parse_thresholds(values: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values or []:
        rank, sep, value = item.partition("=")
        rank = rank.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or rank not in RANK_NAMES or not 0.0 <= number <= 1.01:
            raise ClibdError(f"--threshold {item!r}: use RANK=VALUE with RANK one of "
                             f"{', '.join(RANK_NAMES)} and VALUE between 0 and 1, e.g. species=0.95.")
        out[rank] = number
    return out


def _read(paths: list[Path], id_column: str | None, sequence_column: str | None, min_length: int):
    from clibd_cli.sequences import QCConfig, read_sequences

    return read_sequences(paths, id_column=id_column, sequence_column=sequence_column,
                          qc=QCConfig(min_length=min_length))


def _reference_records(paths, id_column, sequence_column, min_length, console):
    from clibd_cli.sequences import require_taxonomy

    result = _read(paths, id_column, sequence_column, min_length)
    what = ", ".join(str(p) for p in paths)
    require_taxonomy(result.records, what)
    records = [r for r in result.records if r.has_taxonomy]
    dropped = len(result.records) - len(records)
    if dropped:
        console.print(f"[yellow]warning:[/yellow] {dropped} reference records have no taxonomy and were left out.")
    if result.skipped_empty:
        console.print(f"[yellow]warning:[/yellow] {result.skipped_empty} records have no sequence and were "
                      "left out.")
    return records


def _calibrate_index(index, precision: float, console, seed: int = 0) -> None:
    from clibd_cli.calibrate import calibrate_leave_species_out

    try:
        calibration = calibrate_leave_species_out(index, target=precision, seed=seed)
    except ValueError:
        console.print("[yellow]note:[/yellow] too few labelled references to calibrate; using the "
                      "encoder's default thresholds.")
        return
    index.set_thresholds(calibration.thresholds, calibration.report)


IdColumn = Annotated[str | None, typer.Option(help="Column holding record ids (tables only).")]
SeqColumn = Annotated[str | None, typer.Option(help="Column holding the sequences (tables only).")]
MinLength = Annotated[int, typer.Option(help="Flag sequences shorter than this (bp) as 'short'.")]
Kmer = Annotated[int | None, typer.Option("--kmer", help="k of the weight-free k-mer profile encoder "
                                                         "(default 5; must match the index).")]


@app.command("build-index")
@user_errors
def build_index(
    barcodes: Annotated[list[Path], typer.Option("--barcodes", "-b", help="Reference barcodes with taxonomy: "
                                                 "FASTA, BOLD TSV, BIOSCAN TSV/CSV (repeatable).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index directory to write.")],
    append: Annotated[bool, typer.Option(help="Add the records to an existing index.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing index.")] = False,
    kmer: Kmer = None,
    calibrate: Annotated[bool, typer.Option(help="Fit thresholds by leave-species-out on the reference.")] = True,
    precision: Annotated[float, typer.Option(help="Target precision for calibrated thresholds.")] = 0.95,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    min_length: MinLength = 200,
    threads: Annotated[int | None, typer.Option(help="Threads for the HNSW build (default: all cores).")] = None,
) -> None:
    """Build (or extend) a reference index from barcodes with taxonomy."""
    import time

    from clibd_cli.encoders import KmerProfileEncoder
    from clibd_cli.index import MANIFEST, ReferenceIndex

    console = _stderr()
    if append and force:
        raise ClibdError("--append and --force contradict each other; choose one.")
    if append and not (output / MANIFEST).exists():
        raise ClibdError(f"{output}: no index to append to. Build it first without --append.")
    if not append and not force and output.exists() and any(output.iterdir()):
        raise ClibdError(f"{output}: already exists. Use --force to replace it or --append to add to it.")
    started = time.perf_counter()
    existing = ReferenceIndex.load(output) if append else None
    encoder = KmerProfileEncoder(k=kmer) if kmer else (existing.encoder() if existing else KmerProfileEncoder())
    records = _reference_records(barcodes, id_column, sequence_column, min_length, console)
    progress, advance = _progress(len(records), "embedding")
    with progress:
        if existing is not None:
            index = existing.appended(records, encoder, progress=advance)
        else:
            index = ReferenceIndex.from_records(records, encoder, progress=advance,
                                                what=", ".join(map(str, barcodes)))
    if calibrate:
        _calibrate_index(index, precision, console)
    index.save(output, force=force or append, threads=threads)
    counts = index.manifest["counts"]
    console.print(f"[green]wrote[/green] {output}: {counts['records']:,} records, {counts['species']:,} species, "
                  f"{counts['genus']:,} genera ({encoder.name} k={encoder.describe().get('k')}, "
                  f"{time.perf_counter() - started:.1f} s)")
    thresholds = index.thresholds
    console.print("thresholds: " + ", ".join(f"{r} {thresholds[r]:.3f}" for r in RANK_NAMES if r in thresholds)
                  + f" ({index.manifest['calibration'].get('method')})")


def _open_index(path: Path, kmer: int | None, id_column, sequence_column, min_length, console):
    """An index directory, or a reference file embedded into a temporary in-memory index."""
    from clibd_cli.encoders import KmerProfileEncoder
    from clibd_cli.index import ReferenceIndex

    if path.is_dir():
        index = ReferenceIndex.load(path)
        encoder = KmerProfileEncoder(k=kmer) if kmer else index.encoder()
        index.check_encoder(encoder)
        return index, encoder
    encoder = KmerProfileEncoder(k=kmer) if kmer else KmerProfileEncoder()
    records = _reference_records([path], id_column, sequence_column, min_length, console)
    index = ReferenceIndex.from_records(records, encoder, what=str(path))
    _calibrate_index(index, 0.95, console)
    return index, encoder


@app.command()
@user_errors
def match(
    queries: Annotated[list[Path], typer.Argument(help="Query barcodes: FASTA, BOLD/BIOSCAN TSV or CSV.")],
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index directory, or a reference file "
                                             "(then an exact index is built in memory).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write results here "
                                                "(format from the extension).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="table, csv, tsv, json or jsonl "
                                            "(default: table on a terminal, CSV when piped).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    resume: Annotated[bool, typer.Option(help="Skip queries already in the output file.")] = False,
    neighbours: Annotated[int, typer.Option(min=1, max=1000, help="References consulted per query.")] = 10,
    top_k: Annotated[int, typer.Option(min=0, max=1000, help="Hits per query written to --hits.")] = 5,
    hits: Annotated[Path | None, typer.Option(help="Write the long top-hits table here (CSV/TSV).")] = None,
    exact: Annotated[bool, typer.Option(help="Exact search even on a large index.")] = False,
    threshold: Annotated[list[str] | None, typer.Option(help="Override a rank's threshold, e.g. "
                                                        "species=0.97 (repeatable).")] = None,
    kmer: Kmer = None,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    min_length: MinLength = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="Queries per batch.")] = 1024,
    threads: Annotated[int | None, typer.Option(help="Search threads (default: all cores).")] = None,
) -> None:
    """Identify query barcodes: one row per query with per-rank calls and scores."""
    from rich.console import Console

    from clibd_cli import report
    from clibd_cli.match import MatchOptions, identify

    console = _stderr()
    overrides = _parse_thresholds(threshold)
    fmt = report.choose_format(fmt, output, sys.stdout.isatty())
    report.check_output(output, resume=resume, force=force)
    hits_fmt = report.choose_format(None, hits, False) if hits else None
    if hits is not None:
        report.check_output(hits, resume=resume, force=force)
    query_result = _read(queries, id_column, sequence_column, min_length)
    index, encoder = _open_index(index_path, kmer, id_column, sequence_column, min_length, console)
    thresholds = {**index.thresholds, **overrides}

    previous = report.completed_ids(output, fmt) if (output and resume) else []
    done = {row["query_id"] for row in previous}
    todo = [q for q in query_result.records if q.id not in done]
    info = {"clibd_version": __version__, "encoder": index.encoder_description,
            "encoder_fingerprint": encoder.fingerprint, "index_fingerprint": index.fingerprint,
            "index": str(index_path), "thresholds": thresholds, "neighbours": neighbours}
    writer = report.RowWriter(output, fmt, report.COLUMNS, info, previous=previous)
    hit_writer = report.RowWriter(hits, hits_fmt, report.HIT_COLUMNS, append=resume) if hits else None
    options = MatchOptions(neighbours=neighbours, top_k=top_k if hits else 0, exact=exact or None,
                           batch_size=batch_size, threads=threads)
    counts: dict[str, int] = {}
    progress, advance = _progress(len(todo), "matching")
    try:
        with progress:
            for result in identify(todo, index, encoder, thresholds, options, progress=advance):
                writer.write(result.row)
                if hit_writer is not None:
                    for hit in result.hits:
                        hit_writer.write(hit, flush=False)
                counts[result.row["status"]] = counts.get(result.row["status"], 0) + 1
    finally:
        writer.close(Console(highlight=False))
        if hit_writer is not None:
            hit_writer.close()
    summary = ", ".join(f"{counts.get(s, 0):,} {s}" for s in ("assigned", "novel_candidate", "rolled_up",
                                                              "no_match"))
    skipped = f" ({len(done):,} already done)" if done else ""
    console.print(f"{len(todo):,} queries{skipped}: {summary}")


@app.command()
@user_errors
def calibrate(
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index directory to calibrate.")],
    queries: Annotated[Path | None, typer.Option(help="Labelled queries, ideally including species absent "
                                                 "from the reference (default: leave-species-out).")] = None,
    precision: Annotated[float, typer.Option(min=0.5, max=1.0, help="Target precision per rank.")] = 0.95,
    sample: Annotated[int, typer.Option(min=50, help="Reference records used by leave-species-out.")] = 1000,
    novel_share: Annotated[float, typer.Option(min=0.0, max=0.9, help="Assumed share of field specimens "
                                               "whose species is absent from the reference "
                                               "(leave-species-out).")] = 0.25,
    neighbours: Annotated[int, typer.Option(min=1, max=1000, help="References consulted per query.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the leave-species-out sample.")] = 0,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
) -> None:
    """Fit per-rank thresholds for a target precision and store them in the index."""
    from rich.console import Console
    from rich.table import Table

    from clibd_cli.calibrate import calibrate_leave_species_out, calibrate_with_queries
    from clibd_cli.index import ReferenceIndex

    index = ReferenceIndex.load(index_path)
    if queries is not None:
        records = _reference_records([queries], id_column, sequence_column, 0, _stderr())
        encoder = index.encoder()
        truth = {rank: [r.label(rank) for r in records] for rank in RANK_NAMES}
        calibration = calibrate_with_queries(index, encoder.encode([r.sequence for r in records]), truth,
                                             target=precision, k=neighbours)
    else:
        try:
            calibration = calibrate_leave_species_out(index, target=precision, k=neighbours, sample=sample,
                                                      seed=seed, novel_share=novel_share)
        except ValueError as exc:
            raise ClibdError(f"{index_path}: {exc}; give labelled --queries instead.") from exc
    index.set_thresholds(calibration.thresholds, calibration.report)
    index.save_manifest()
    table = Table(title=f"thresholds for precision {precision:.2f} ({calibration.report['method']}, "
                        f"{calibration.report['queries']} queries)")
    for column in ("rank", "threshold", "precision", "coverage"):
        table.add_column(column)
    for rank in RANK_NAMES:
        info = calibration.report["ranks"][rank]
        table.add_row(rank, f"{calibration.thresholds[rank]:.3f}", f"{info['precision']:.3f}",
                      f"{info['coverage']:.3f}")
    Console().print(table)


@app.command()
@user_errors
def simulate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the synthetic specimens to.")],
    species: Annotated[int, typer.Option(min=4, help="Number of species.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    image_size: Annotated[int, typer.Option(min=32, help="Photo size in pixels.")] = 224,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering photos.")] = 1,
    force: Annotated[bool, typer.Option(help="Write into a folder that is not empty.")] = False,
) -> None:
    """Write honest synthetic specimens (taxonomy, COI-like barcodes, photos, CLIBD HDF5) for tests and demos."""
    from training.synthetic import write_simulation

    if output.exists() and any(output.iterdir()) and not force:
        raise ClibdError(f"{output}: is not empty. Use --force or another folder.")
    summary = write_simulation(output, n_species=species, seed=seed, image_size=image_size, workers=workers)
    _stderr().print(f"[green]wrote[/green] {output}: {summary['records']:,} synthetic specimens of "
                    f"{summary['species']:,} species (specimens.tsv, images/, clibd.hdf5)")


@app.command()
@user_errors
def train(
    config: Annotated[str, typer.Option(help="Preset (tiny-cpu, bioscan1m-idt, bioscan5m-idt) or YAML file.")
                      ] = "tiny-cpu",
    data: Annotated[str | None, typer.Option(help="simulate folder, CLIBD HDF5, BIOSCAN TSV/CSV or manifest.")
                    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (checkpoints, metrics).")
                      ] = Path("runs/clibd"),
    stage: Annotated[str | None, typer.Option(help="contrastive, or dna-pretrain (BarcodeBERT-style masked "
                                              "k-mer pretraining of the DNA encoder).")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", min=1, help="Processes per machine "
                                                "(one per GPU; on CPU, gloo processes).")] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="Machines taking part.")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="This machine's rank (multi-node).")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of the rendezvous (multi-node).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output from checkpoints/last.pt.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value, e.g. "
                                                   "optim.lr=1e-4 (repeatable).")] = None,
) -> None:
    """Train CLIBD (image, DNA, text encoders) with torchrun/DDP; NCCL on GPUs, gloo on CPU."""
    from training.train import launch

    run = launch(config, output=output, data=data, nproc_per_node=nproc_per_node, nnodes=nnodes,
                 node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, resume=resume, overrides=set_, stage=stage)
    _stderr().print(f"[green]done[/green]: {run}/checkpoints/best.pt, metrics in {run}/metrics.jsonl")


@app.command("split")
@user_errors
def split_command(
    metadata: Annotated[Path, typer.Argument(help="BIOSCAN metadata TSV/CSV (gzip ok) with a species column.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Table to write: every input column plus "
                                         "`split`.")],
    seed: Annotated[int, typer.Option(help="Seed of the seen/unseen draw and record shuffles.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    species_column: Annotated[str | None, typer.Option(help="Column holding species names "
                                                       "(default: species or species_name).")] = None,
) -> None:
    """Assign the CLIBD splits (seen/unseen train, queries, keys); a BIOSCAN-5M `split` column is kept."""
    from rich.console import Console
    from rich.table import Table

    from clibd_cli.split import split_table

    summary = split_table(metadata, output, seed=seed, species_column=species_column, force=force)
    if summary["source"] == "existing":
        title = f"{output}: kept the table's own '{summary['split_column']}' column"
    else:
        title = (f"{output}: CLIBD split, seed {seed} ({summary['seen_species']:,} seen / "
                 f"{summary['unseen_species']:,} unseen species)")
    table = Table(title=title)
    for column in ("split", "records", "species"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, info in summary["splits"].items():
        table.add_row(name, f"{info['records']:,}", f"{info['species']:,}")
    table.add_row("total", f"{summary['records']:,}", f"{summary['species']:,}", style="bold")
    Console().print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
