"""The `clibd` command line: parses options, calls the library, prints.

Heavy modules (numpy, hnswlib, Bio, torch for training) are imported inside the commands, so
`clibd --help` starts fast and the inference commands never load torch.
"""

from __future__ import annotations

import functools
import itertools
import sys
from pathlib import Path
from typing import Annotated

import typer

from clibd_cli import __version__, schema
from clibd_cli.errors import ClibdError
from clibd_cli.schema import RANKS

app = typer.Typer(
    name="clibd",
    help="Identify insects from DNA barcodes (and, with a model, photos) against a reference library, "
         "offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)



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
        except BrokenPipeError:
            # `clibd match q.fasta | head`: the reader has all it wants.  Stop like a Unix tool killed by
            # SIGPIPE (status 141, no message); the writers were closed on the way out, so files are complete.
            _silence_stdout()
            raise typer.Exit(141) from None
        except ModuleNotFoundError as exc:
            message = _missing_extra(exc, func.__name__)
            if message is None:
                raise  # a module clibd itself should have: a bug or a broken install, keep the traceback
            _error_line(message)
            raise typer.Exit(2) from None
        except OSError as exc:
            message = _environment_error(exc)
            if message is None:
                raise
            _error_line(message)
            raise typer.Exit(2) from None

    return wrapper


def _error_line(message: str) -> None:
    from rich.markup import escape

    _stderr().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, markup=True)


# Optional dependencies by the top-level module that needs them, and the pyproject extra installing them.
_EXTRA_OF_MODULE = {"torch": "train", "torchvision": "train", "timm": "train", "transformers": "train",
                    "h5py": "train", "yaml": "train", "tensorboard": "train", "onnx": "export",
                    "onnxscript": "export", "matplotlib": "plots", "pyarrow": "parquet"}
# Commands needing several extras: a checkpoint is read with PyTorch and written as ONNX.
_COMMAND_EXTRAS = {"export": ("train", "export"), "evaluate": ("train", "export")}


def _missing_extra(exc: ModuleNotFoundError, function: str) -> str | None:
    """The line saying which extra to install, when ``exc`` is an optional dependency; None otherwise.

    `pip install clibd` leaves out torch and the rest on purpose (identification needs none of it), so a
    40-line traceback ending in "No module named 'torch'" is what every new user of `train` would see.
    """
    module = (exc.name or "").partition(".")[0]
    extra = _EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    command = function.removesuffix("_command").replace("_", "-")
    wanted = _COMMAND_EXTRAS.get(command, ())
    names = wanted if extra in wanted else (extra,)
    what = " and ".join(f"'{name}'" for name in names) + (" extras" if len(names) > 1 else " extra")
    extras = ",".join(names)
    return (f"'clibd {command}' needs {module}, which is not installed ({exc}). Install the {what}: "
            f"pip install 'clibd[{extras}]' (in a clone: pip install -e '.[{extras}]').")


def _environment_error(exc: OSError) -> str | None:
    """One line for a file-system refusal (no permission, read-only, disk full); None for other OSErrors.

    These are the machine's state, not bugs.  Rows already written were flushed and the writers closed on
    the way out, so the line says so and how to continue.
    """
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}{reason}. Check the permissions of the file and its folder, or choose another path "
                "(-o for outputs).")
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        return (f"{where}{reason} while writing. What was written before is kept: free some space or choose "
                "another -o, then rerun (match and classify continue with --resume).")
    return None


def _silence_stdout() -> None:
    """Point standard output at the null device, as Python's documentation advises after EPIPE, so the
    interpreter's last flush of buffered rows does not fail again and print "Exception ignored"."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (tests capture stdout in memory)
        pass


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


def _progress(total: int | None, description: str):
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
        if not sep or rank not in RANKS or not 0.0 <= number <= 1.01:
            raise ClibdError(f"--threshold {item!r}: use RANK=VALUE with RANK one of "
                             f"{', '.join(RANKS)} and VALUE between 0 and 1, e.g. species=0.95.")
        out[rank] = number
    return out


def _read(paths: list[Path], id_column: str | None, sequence_column: str | None, min_length: int,
          marker: str | None = "COI-5P"):
    from clibd_cli.sequences import QCConfig, read_sequences

    return read_sequences(paths, id_column=id_column, sequence_column=sequence_column,
                          qc=QCConfig(min_length=min_length), marker=marker)


def _reference_records(paths, id_column, sequence_column, min_length, console, marker: str | None = "COI-5P"):
    from clibd_cli.sequences import require_taxonomy

    result = _read(paths, id_column, sequence_column, min_length, marker)
    what = ", ".join(str(p) for p in paths)
    require_taxonomy(result.records, what)
    records = [r for r in result.records if r.has_taxonomy]
    dropped = len(result.records) - len(records)
    if dropped:
        console.print(f"[yellow]warning:[/yellow] {dropped} reference records have no taxonomy and were left out.")
    if result.skipped_empty:
        console.print(f"[yellow]warning:[/yellow] {result.skipped_empty} records have no sequence and were "
                      "left out.")
    if result.skipped_marker:
        others = ", ".join(f"{name} {count:,}" for name, count in result.other_markers.items())
        console.print(f"[yellow]note:[/yellow] {result.skipped_marker:,} rows of other markers ({others}) were "
                      f"left out; kept {marker}. Choose with --marker.")
    return records


def _calibrate_index(index, precision: float, console, seed: int = 0) -> None:
    from clibd_cli.calibrate import calibrate_leave_species_out, calibrate_open_set

    try:
        if index.modality == "dna":  # barcodes are called on alignment identity
            calibration = calibrate_open_set(index, target=precision, seed=seed)
        else:
            calibration = calibrate_leave_species_out(index, target=precision, seed=seed)
    except ValueError:
        console.print("[yellow]note:[/yellow] too few labelled references to calibrate; using the "
                      "encoder's default thresholds.")
        return
    index.set_thresholds(calibration.thresholds, calibration.report)


# Table columns, declared once for every command that reads a table; by default each is found with the column map
# of clibd_cli.schema, the same for barcodes, photos and splits.
IdColumn = Annotated[str | None, typer.Option(help="Column holding specimen/record ids in tables (default: the first "
                                              f"present of {', '.join(schema.ID_COLUMNS)}).")]
SeqColumn = Annotated[str | None, typer.Option(help="Column holding the barcodes in tables (default: the first "
                                               f"present of {', '.join(schema.SEQUENCE_COLUMNS)}).")]
ImageColumn = Annotated[str | None, typer.Option(help="Column holding the photo files in tables (default: the first "
                                                 f"present of {', '.join(schema.IMAGE_COLUMNS)}).")]
MinLength = Annotated[int, typer.Option(help="Flag sequences shorter than this (bp) as 'short'.")]
Marker = Annotated[str, typer.Option(help="Which marker to keep from BOLD packages that mix markers "
                                     "(e.g. COI-5P, ITS, rbcLa); 'all' keeps every row.")]
Kmer = Annotated[int | None, typer.Option("--kmer", min=2, max=8, help="k of the weight-free k-mer profile "
                                                         "encoder, 2-8 (default 5; must match the index).")]


Output = Annotated[Path | None, typer.Option("--output", "-o", help="Write results here (format from the "
                                             "extension).")]
Format = Annotated[str | None, typer.Option("--format", "-f", help="table, csv, tsv, json or jsonl "
                                            "(default: table on a terminal, CSV when piped).")]

ModelOption = Annotated[Path | None, typer.Option("--model", "-m", help="Model bundle from 'clibd export' "
                                                  "(default for barcodes: the weight-free k-mer profile).")]
Device = Annotated[str, typer.Option(help="auto (CUDA if it really works, else CPU), cpu or cuda.")]
Int8 = Annotated[bool, typer.Option("--int8", help="Use the bundle's int8 encoders (faster on CPU; agreement "
                                    "with fp32 is in the bundle's manifest).")]
Workers = Annotated[int | None, typer.Option(min=1, help="Threads decoding photos (default: up to 8).")]
TrustCheckpoint = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Open a checkpoint that holds more than tensors and plain data (one written by an "
    "older clibd or other code) with the full unpickler, which can run code hidden in the file: only for files "
    "whose origin you trust.")]


def _bundle(model: Path | None, device: str = "auto", int8: bool = False, threads: int | None = None):
    if model is None:
        return None
    from clibd_cli.bundle import ModelBundle

    return ModelBundle.load(model, device=device, int8=int8, threads=threads)


@app.command("build-index")
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
    precision: Annotated[float, typer.Option(help="Target precision for calibrated thresholds.")] = 0.95,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
    min_length: MinLength = 200,
    marker: Marker = "COI-5P",
    device: Device = "auto",
    workers: Workers = None,
    threads: Annotated[int | None, typer.Option(help="Threads for the HNSW build (default: all cores).")] = None,
) -> None:
    """Build (or extend) a reference index from barcodes, photos and taxonomy strings with taxonomy."""
    import time

    from clibd_cli.index import MANIFEST
    from clibd_cli.indexdir import ignorable, writing

    console = _stderr()
    if append and force:
        raise ClibdError("--append and --force contradict each other; choose one.")
    if not barcodes and images is None:
        raise ClibdError("nothing to index: give --barcodes and/or --images.")
    if (images is not None or text_keys) and model is None:
        raise ClibdError("--images and --text-keys need a model bundle: add --model BUNDLE (from 'clibd export').")
    if model is not None and kmer:
        raise ClibdError("--kmer chooses the weight-free encoder; it cannot be combined with --model.")
    if append and not (output / MANIFEST).exists():
        raise ClibdError(f"{output}: no index to append to. Build it first without --append.")
    if not append and not force and output.exists() and any(not ignorable(p.name) for p in output.iterdir()):
        raise ClibdError(f"{output}: already exists. Use --force to replace it or --append to add to it.")
    started = time.perf_counter()
    bundle = _bundle(model, device)
    with writing(output, notify=console.print):
        _build_index_locked(output, barcodes, images, text_keys, bundle, append, force, kmer, calibrate, precision,
                            id_column, sequence_column, min_length, marker, workers, threads, console, image_column)
    console.print(f"done in {time.perf_counter() - started:.1f} s")


def _build_index_locked(output, barcodes, images, text_keys, bundle, append, force, kmer, calibrate, precision,
                        id_column, sequence_column, min_length, marker, workers, threads, console,
                        image_column=None) -> None:
    """build-index's read-modify-write, run while holding the index's write lock."""
    from clibd_cli.encoders import KmerProfileEncoder
    from clibd_cli.index import ReferenceIndex, index_modalities, save_parts

    existing = {m: ReferenceIndex.load(output, m) for m in index_modalities(output)} if append else {}
    inputs = _reference_inputs(barcodes, images, text_keys, id_column, sequence_column, min_length, console,
                               marker, image_column)
    parts = dict(existing)
    for modality, records in inputs.items():
        if bundle is not None:
            encoder = bundle.encoder(modality)
        elif kmer:
            encoder = KmerProfileEncoder(k=kmer)
        else:
            encoder = existing["dna"].encoder() if "dna" in existing else KmerProfileEncoder()
        if modality == "image" and workers:
            encoder.workers = workers
        progress, advance = _progress(len(records), f"embedding {modality}")
        with progress:
            if modality in existing:
                parts[modality] = existing[modality].appended(records, encoder, progress=advance)
            else:
                parts[modality] = ReferenceIndex.from_records(records, encoder, progress=advance,
                                                              what=f"the {modality} references")
    if calibrate:
        for modality in inputs:
            if modality != "text":
                _calibrate_index(parts[modality], precision, console)
        if len(parts) > 1:
            from clibd_cli.references import calibrate_across

            calibrate_across(parts, precision)
    save_parts(list(parts.values()), output, force=force or append, threads=threads)
    for modality, part in parts.items():
        counts = part.manifest["counts"]
        what = part.encoder_description.get("name")
        if what == "kmer-profile":
            what += f" k={part.encoder_description.get('k')}"
        console.print(f"[green]wrote[/green] {output} \\[{modality}]: {counts['records']:,} records, "
                      f"{counts['species']:,} species, {counts['genus']:,} genera ({what}; search: "
                      f"{part.manifest.get('search', 'exact')})")
        thresholds = part.thresholds
        if modality != "text":  # taxonomy strings are references, never queries
            console.print(f"  {modality} queries: " + ", ".join(f"{r} {thresholds[r]:.3f}" for r in RANKS
                                                                 if r in thresholds)
                          + f" ({part.manifest['calibration'].get('method')})")
        for query, entry in part.manifest.get("cross_thresholds", {}).items():
            console.print(f"  {query} queries: " + ", ".join(f"{r} {entry['thresholds'][r]:.3f}" for r in RANKS)
                          + " (leave-species-out)")


def _reference_inputs(barcodes, images, text_keys, id_column, sequence_column, min_length, console,
                      marker="COI-5P", image_column=None) -> dict:
    """Reference records per modality, read and checked before anything is embedded."""
    from clibd_cli.photos import collect_photos
    from clibd_cli.references import photo_records, text_records

    inputs: dict[str, list] = {}
    if barcodes:
        inputs["dna"] = _reference_records(barcodes, id_column, sequence_column, min_length, console, marker)
    if images is not None:
        photos, problems = collect_photos([], manifest=images, id_column=id_column, image_column=image_column)
        if problems:
            raise ClibdError(f"{images}: {problems[0].reason}. Fix the manifest.")
        inputs["image"] = photo_records(photos, str(images))
    if text_keys:
        inputs["text"] = text_records([r for records in inputs.values() for r in records])
    return inputs


def _search_note(index, console) -> None:
    """Say once when a large index is searched exactly for want of hnswlib (results are the same)."""
    from clibd_cli.index import EXACT_MAX

    if index.search_engine != "hnswlib" and index.size > EXACT_MAX:
        console.print(f"[yellow]note:[/yellow] search: {index.search_description()}.")


def _open_index(path: Path, kmer: int | None, id_column, sequence_column, min_length, console, bundle=None,
                marker="COI-5P"):
    """An index directory, or a reference file embedded into a temporary in-memory index."""
    from clibd_cli.encoders import KmerProfileEncoder
    from clibd_cli.index import ReferenceIndex

    if path.is_dir():
        index = ReferenceIndex.load(path, "dna")
        _search_note(index, console)
        if bundle is not None:
            encoder = bundle.encoder("dna")
        else:
            encoder = KmerProfileEncoder(k=kmer) if kmer else index.encoder()
        index.check_encoder(encoder)
        return index, encoder
    encoder = bundle.encoder("dna") if bundle is not None else KmerProfileEncoder(k=kmer or 5)
    records = _reference_records([path], id_column, sequence_column, min_length, console, marker)
    index = ReferenceIndex.from_records(records, encoder, what=str(path))
    _calibrate_index(index, 0.95, console)
    return index, encoder


@app.command()
@user_errors
def match(
    queries: Annotated[list[Path], typer.Argument(help="Query barcodes: FASTA, BOLD/BIOSCAN TSV or CSV.")],
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index directory, or a reference file "
                                             "(then an exact index is built in memory).")],
    output: Output = None,
    fmt: Format = None,
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
    marker: Marker = "COI-5P",
    thresholds_from: Annotated[str, typer.Option("--thresholds", help="calibrated (the index's, fitted for the "
                               "target precision) or conventional (identity 97/95/90/85 % for species/genus/"
                               "family/order).")] = "calibrated",
    candidates: Annotated[int, typer.Option(min=1, max=1000, help="Distinct references proposed per query by the "
                          "k-mer search and verified by alignment.")] = 32,
    batch_size: Annotated[int, typer.Option(min=1, help="Queries per batch.")] = 1024,
    threads: Annotated[int | None, typer.Option(help="Search threads (default: all cores).")] = None,
    model: ModelOption = None,
    device: Device = "auto",
    int8: Int8 = False,
) -> None:
    """Identify query barcodes: one row per query, calls per rank made on alignment identity."""

    from clibd_cli import report
    from clibd_cli.align import CONVENTIONAL
    from clibd_cli.match import MatchOptions, identify

    console = _stderr()
    if thresholds_from not in ("calibrated", "conventional"):
        raise ClibdError(f"--thresholds {thresholds_from!r}: use calibrated or conventional.")
    overrides = _parse_thresholds(threshold)
    fmt = report.choose_format(fmt, output, sys.stdout.isatty())
    report.check_output(output, resume=resume, force=force, inputs=[*queries, index_path], others=[hits],
                        folders=[index_path])
    hits_fmt = report.choose_format(None, hits, False) if hits else None
    if hits is not None:
        report.check_output(hits, resume=resume, force=force, inputs=[*queries, index_path], folders=[index_path])
    from clibd_cli.sequences import QCConfig, SequenceStream

    stream = SequenceStream(queries, id_column=id_column, sequence_column=sequence_column,
                            qc=QCConfig(min_length=min_length), skip_empty=False, marker=marker)
    records = iter(stream)
    first = list(itertools.islice(records, 1))  # an unreadable query file fails here, before any output exists
    bundle = _bundle(model, device, int8)
    index, encoder = _open_index(index_path, kmer, id_column, sequence_column, min_length, console, bundle,
                                 marker)
    base = dict(CONVENTIONAL) if thresholds_from == "conventional" else index.thresholds
    thresholds = {**base, **overrides}
    provenance = "conventional identity cut-offs" if thresholds_from == "conventional" else \
        index.manifest.get("calibration", {}).get("method", "")

    previous = report.completed_ids(output, fmt) if (output and resume) else []
    done = {row["query_id"] for row in previous}
    # Streamed: memory stays one batch, whatever the size of the query files.
    todo = (q for q in itertools.chain(first, records) if q.id not in done)
    info = {"clibd_version": __version__, "encoder": index.encoder_description,
            "encoder_fingerprint": encoder.fingerprint, "index_fingerprint": index.fingerprint,
            "index": str(index_path), "thresholds": thresholds, "thresholds_from": provenance,
            "overrides": overrides, "score": "alignment identity over the overlap (fraction)",
            "neighbours": neighbours, "candidates": candidates, "search": index.search_description()}
    identity = {k: info[k] for k in ("encoder_fingerprint", "index_fingerprint", "thresholds", "neighbours",
                                     "candidates")}
    if resume:
        report.check_same_run(output, identity)
        if hits is not None:
            report.prune_hits(hits, hits_fmt, done)
    writer = report.RowWriter(output, fmt, report.MATCH_COLUMNS, info, previous=previous, identity=identity)
    hit_writer = report.RowWriter(hits, hits_fmt, report.MATCH_HIT_COLUMNS, append=resume) if hits else None
    options = MatchOptions(neighbours=neighbours, top_k=top_k if hits else 0, exact=exact or None,
                           batch_size=batch_size, threads=threads, candidates=candidates)
    progress, advance = _progress(None, "matching")
    with progress:
        counts = _write_results(identify(todo, index, encoder, thresholds, options, progress=advance), writer,
                                hit_writer)
    if stream.skipped_marker:
        others = ", ".join(f"{name} {count:,}" for name, count in stream.other_markers.items())
        console.print(f"[yellow]note:[/yellow] {stream.skipped_marker:,} query rows of other markers ({others}) "
                      f"were left out; kept {marker}. Choose with --marker.")
    summary = ", ".join(f"{counts.get(s, 0):,} {s}" for s in ("assigned", "novel_candidate", "rolled_up",
                                                              "no_match", "error") if s != "error" or counts.get(s))
    skipped = f" ({len(done):,} already done)" if done else ""
    console.print(f"{sum(counts.values()):,} queries{skipped}: {summary}")


def _write_results(results, writer, hit_writer) -> dict[str, int]:
    """Stream result rows (and their hits) to the writers; counts per status.  Writers are closed even on
    an interruption, so every finished row stays on disk for --resume.  A query's hits are flushed before
    its row: a row on disk means its hits are too (--resume drops hits of queries without a row)."""
    from rich.console import Console

    counts: dict[str, int] = {}
    failed = True
    try:
        for result in results:
            if hit_writer is not None:
                for hit in result.hits:
                    hit_writer.write(hit, flush=False)
                hit_writer.flush()
            writer.write(result.row)
            counts[result.row["status"]] = counts.get(result.row["status"], 0) + 1
        failed = False
    finally:  # failed (an error or an interruption): rows written stay; no file is created for none
        try:
            writer.close(Console(highlight=False), failed=failed)
        finally:
            if hit_writer is not None:
                hit_writer.close(failed=failed)
    return counts



@app.command()
@user_errors
def classify(
    photos: Annotated[list[str] | None, typer.Argument(help="Photos: files, folders (recursive) or glob "
                                                       "patterns.")] = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle from 'clibd export'.")] = ...,
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
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    resume: Annotated[bool, typer.Option(help="Skip photos already in the output file.")] = False,
    neighbours: Annotated[int, typer.Option(min=1, max=1000, help="References consulted per photo.")] = 10,
    top_k: Annotated[int, typer.Option(min=0, max=1000, help="Hits per photo written to --hits.")] = 5,
    hits: Annotated[Path | None, typer.Option(help="Write the long top-hits table here (CSV/TSV).")] = None,
    exact: Annotated[bool, typer.Option(help="Exact search even on a large index.")] = False,
    threshold: Annotated[list[str] | None, typer.Option(help="Override a rank's threshold, e.g. "
                                                        "species=0.5 (repeatable).")] = None,
    device: Device = "auto",
    int8: Int8 = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per model call.")] = 32,
    workers: Workers = None,
    threads: Annotated[int | None, typer.Option(help="Model/search threads (default: all cores).")] = None,
) -> None:
    """Identify insects from photos against barcodes, photos or taxonomy strings; one row per photo/specimen."""

    from clibd_cli import report
    from clibd_cli.classify import AGAINST, CLASSIFY_COLUMNS, ClassifyOptions, classify_photos, references
    from clibd_cli.index import ReferenceIndex, index_modalities
    from clibd_cli.photos import collect_photos

    console = _stderr()
    if against not in AGAINST:
        raise ClibdError(f"--against {against!r}: use one of {', '.join(AGAINST)}.")
    if not photos and manifest is None:
        raise ClibdError("no photos given: pass files, folders or patterns, or --manifest.")
    overrides = _parse_thresholds(threshold)
    fmt = report.choose_format(fmt, output, sys.stdout.isatty())
    inputs = [*(Path(p) for p in photos or []), *([manifest] if manifest else [])]
    report.check_output(output, resume=resume, force=force, inputs=inputs, others=[hits], folders=[index_path])
    if hits is not None:
        report.check_output(hits, resume=resume, force=force, inputs=inputs, folders=[index_path])
    found, problems = collect_photos(photos or [], manifest=manifest, group_by=group_by, id_column=id_column,
                                     image_column=image_column)
    bundle = _bundle(model, device, int8, threads)
    bundle.check("image")
    modalities = index_modalities(index_path)
    if against != "all" and against not in modalities:
        raise ClibdError(f"{index_path}: has no {against} references (it has: {', '.join(modalities)}). "
                         "Choose --against accordingly or add them with 'clibd build-index --append'.")
    parts = {m: ReferenceIndex.load(index_path, m) for m in modalities}
    _search_note(max(parts.values(), key=lambda part: part.size), console)
    refs = references(parts, bundle, against, overrides)
    for modality, ref in refs.items():
        if not ref.calibrated:
            console.print(f"[yellow]warning:[/yellow] photo→{modality} thresholds are not calibrated for this index; "
                          "every photo gets its nearest references' lineage (flag 'uncalibrated'). Calibrate with "
                          "'clibd calibrate --index … --model … --images LABELLED.csv'.")
    previous = report.completed_ids(output, fmt) if (output and resume) else []
    done = {row["query_id"] for row in previous}
    found = [p for p in found if (p.group or p.id) not in done]
    problems = [p for p in problems if p.id not in done]
    info = {"clibd_version": __version__, "model": bundle.name, "model_fingerprint": bundle.fingerprint,
            "index": str(index_path), "against": against, "neighbours": neighbours,
            "thresholds": {m: ref.thresholds for m, ref in refs.items()},
            "calibrated": {m: ref.calibrated for m, ref in refs.items()},
            "search": {m: parts[m].search_description() for m in refs}}
    identity = {"model_fingerprint": bundle.fingerprint, "against": against, "neighbours": neighbours,
                "thresholds": info["thresholds"], "index_fingerprints": {m: p.fingerprint for m, p in parts.items()}}
    hits_fmt = report.choose_format(None, hits, False) if hits else None
    if resume:
        report.check_same_run(output, identity)
        if hits is not None:
            report.prune_hits(hits, hits_fmt, done)
    writer = report.RowWriter(output, fmt, CLASSIFY_COLUMNS, info, previous=previous, identity=identity)
    hit_writer = report.RowWriter(hits, hits_fmt, [*report.HIT_COLUMNS, "against"], append=resume) if hits else None
    options = ClassifyOptions(neighbours=neighbours, top_k=top_k if hits else 0, exact=exact or None,
                              batch_size=batch_size, threads=threads, against=against, workers=workers,
                              group=group_by is not None)
    progress, advance = _progress(len(found) + len(problems), "classifying")
    with progress:
        counts = _write_results(classify_photos(found, problems, bundle, refs, options, progress=advance), writer,
                                hit_writer)
    summary = ", ".join(f"{counts.get(s, 0):,} {s}" for s in ("assigned", "novel_candidate", "rolled_up",
                                                              "no_match", "error"))
    skipped = f" ({len(done):,} already done)" if done else ""
    unit = "specimens" if group_by else "photos"
    console.print(f"{sum(counts.values()):,} {unit}{skipped} on {bundle.used_device or 'cpu'}: {summary}")


@app.command()
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
    neighbours: Annotated[int, typer.Option(min=1, max=1000, help="References consulted per query.")] = 10,
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
    from rich.console import Console
    from rich.table import Table

    from clibd_cli.index import MANIFEST
    from clibd_cli.indexdir import writing

    if not (index_path / MANIFEST).exists():
        raise ClibdError(f"{index_path}: not a clibd index (no {MANIFEST}). Build one with 'clibd build-index'.")
    with writing(index_path, notify=_stderr().print):  # one writer at a time: an --append now would be lost
        if images is not None:
            calibration = _calibrate_photos(index_path, images, against, model, device, precision, seed,
                                            novel_share, id_column, image_column)
        else:
            calibration = _calibrate_barcodes(index_path, queries, precision, sample, novel_share, neighbours,
                                              seed, id_column, sequence_column, _bundle(model, device))
    table = Table(title=f"thresholds for precision {precision:.2f} ({calibration.report['method']}, "
                        f"{calibration.report['queries']} queries)")
    open_set = "right_present" in calibration.report["ranks"]["species"]
    columns = (("rank", "threshold", "right (taxon present)", "wrong (taxon present)", "wrong (taxon left out)")
               if open_set else ("rank", "threshold", "precision", "coverage"))
    for column in columns:
        table.add_column(column)
    for rank in RANKS:
        info = calibration.report["ranks"][rank]
        keys = ("right_present", "false_calls_present", "false_calls_absent") if open_set else ("precision", "coverage")
        table.add_row(rank, f"{calibration.thresholds[rank]:.3f}",
                      *(f"{info.get(key, float('nan')):.3f}" for key in keys))
    Console().print(table)


def _calibrate_photos(index_path: Path, images: Path, against: str, model: Path | None, device: str,
                      precision: float, seed: int, novel_share: float, id_column: str | None = None,
                      image_column: str | None = None):
    """Photo → `against` thresholds from labelled photos, held out by specimen and species."""
    from clibd_cli.calibrate import calibrate_held_out
    from clibd_cli.index import ReferenceIndex
    from clibd_cli.photos import collect_photos
    from clibd_cli.references import photo_records

    if model is None:
        raise ClibdError("--images needs the model bundle the index was built with: add --model BUNDLE.")
    bundle = _bundle(model, device)
    part = ReferenceIndex.load(index_path, against)
    encoder = bundle.encoder("image")
    part.check_encoder(encoder)
    photos, _ = collect_photos([], manifest=images, id_column=id_column, image_column=image_column)
    records = photo_records(photos, str(images))
    vectors = encoder.encode_photos([Path(r.sequence) for r in records])
    truth = {rank: [r.label(rank) for r in records] for rank in RANKS}
    try:
        calibration = calibrate_held_out(part, vectors, [r.id for r in records], truth, target=precision,
                                         seed=seed, novel_share=novel_share)
    except ValueError as exc:
        raise ClibdError(f"{images}: {exc}; give at least 40 labelled photos.") from exc
    calibration.report["method"] = "leave-species-out (labelled photos)"
    part.set_cross_thresholds("image", calibration.thresholds, calibration.report)
    part.save_manifest()
    return calibration


def _calibrate_barcodes(index_path, queries, precision, sample, novel_share, neighbours, seed, id_column,
                        sequence_column, bundle=None):
    from clibd_cli.calibrate import (
        OPEN_SET_SAMPLE,
        calibrate_dna_with_queries,
        calibrate_leave_species_out,
        calibrate_open_set,
    )
    from clibd_cli.index import ReferenceIndex

    index = ReferenceIndex.load(index_path)
    if queries is not None:
        records = _reference_records([queries], id_column, sequence_column, 0, _stderr())
        encoder = bundle.encoder("dna") if bundle is not None else index.encoder()
        index.check_encoder(encoder)
        calibration = calibrate_dna_with_queries(index, records, encoder, target=precision, k=neighbours)
    else:
        try:
            if index.modality == "dna":
                calibration = calibrate_open_set(index, target=precision, k=neighbours,
                                                 sample=sample or OPEN_SET_SAMPLE, seed=seed)
            else:
                calibration = calibrate_leave_species_out(index, target=precision, k=neighbours,
                                                          sample=sample or 1000, seed=seed, novel_share=novel_share)
        except ValueError as exc:
            raise ClibdError(f"{index_path}: {exc}; give labelled --queries instead.") from exc
    index.set_thresholds(calibration.thresholds, calibration.report)
    index.save_manifest()
    return calibration


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
    from clibd_training.synthetic import write_simulation

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
    trust_checkpoint: TrustCheckpoint = False,
) -> None:
    """Train CLIBD (image, DNA, text encoders) with torchrun/DDP; NCCL on GPUs, gloo on CPU."""
    from clibd_training.train import launch

    run = launch(config, output=output, data=data, nproc_per_node=nproc_per_node, nnodes=nnodes,
                 node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, resume=resume, overrides=set_, stage=stage,
                 trust_checkpoint=trust_checkpoint)
    _stderr().print(f"[green]done[/green]: {run}/checkpoints/best.pt, metrics in {run}/metrics.jsonl")


@app.command()
@user_errors
def check(
    manifest: Annotated[Path, typer.Option(help="Specimen table with a photo column (image_file) and a barcode "
                                           "column, one row per specimen.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle from 'clibd export'.")],
    index_path: Annotated[Path, typer.Option("--index", "-i", help="Index with dna references built with the "
                                             "same model.")],
    against: Annotated[str, typer.Option(help="What photos are identified against: dna, image, text, all.")
                       ] = "dna",
    output: Output = None,
    fmt: Format = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    neighbours: Annotated[int, typer.Option(min=1, max=1000, help="References consulted per query.")] = 10,
    id_column: IdColumn = None,
    sequence_column: SeqColumn = None,
    image_column: ImageColumn = None,
    device: Device = "auto",
    int8: Int8 = False,
    workers: Workers = None,
) -> None:
    """Quality control: per rank, does each specimen's photo agree with its own barcode?"""
    from rich.console import Console

    from clibd_cli import report
    from clibd_cli.check import CHECK_COLUMNS, check_specimens
    from clibd_cli.classify import ClassifyOptions, references
    from clibd_cli.index import ReferenceIndex, index_modalities
    from clibd_cli.photos import collect_photos

    console = _stderr()
    fmt = report.choose_format(fmt, output, sys.stdout.isatty())
    report.check_output(output, resume=False, force=force)
    photos, problems = collect_photos([], manifest=manifest, id_column=id_column, image_column=image_column)
    barcodes = {r.id: r for r in _read([manifest], id_column, sequence_column, 0).records}
    bundle = _bundle(model, device, int8)
    bundle.check("image", "dna")
    parts = {m: ReferenceIndex.load(index_path, m) for m in index_modalities(index_path)}
    if "dna" not in parts:
        raise ClibdError(f"{index_path}: has no barcodes; 'clibd check' identifies each barcode against them.")
    refs = references(parts, bundle, against)
    dna = parts["dna"]
    dna.check_encoder(bundle.encoder("dna"))
    options = ClassifyOptions(neighbours=neighbours, workers=workers, against=against)
    writer = report.RowWriter(output, fmt, CHECK_COLUMNS, {"clibd_version": __version__, "model": bundle.name,
                                                          "index": str(index_path), "against": against})
    counts: dict[str, int] = {}
    progress, advance = _progress(len(photos), "checking")
    try:
        with progress:
            for problem in problems:
                writer.write({"specimen_id": problem.id, "verdict": "error", "error": problem.reason})
                counts["error"] = counts.get("error", 0) + 1
            for row in check_specimens(photos, barcodes, bundle, refs, dna, dna.thresholds, options, advance):
                writer.write(row)
                counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    finally:
        writer.close(Console(highlight=False))
    console.print(f"{sum(counts.values()):,} specimens: " + ", ".join(
        f"{counts.get(v, 0):,} {v}" for v in ("consistent", "conflict", "inconclusive", "no_barcode", "error")))


@app.command()
@user_errors
def embed(
    inputs: Annotated[list[str] | None, typer.Argument(help="Photos (files, folders, patterns) for image; barcode "
                                                       "files for dna; tables with taxonomy for text.")] = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle from 'clibd export'.")] = ...,
    modality: Annotated[str, typer.Option(help="image, dna or text.")] = "image",
    output: Annotated[Path, typer.Option("--output", "-o", help="OUT.parquet (id + embedding columns, needs "
                                         "pyarrow) or OUT.npy (+ OUT.ids.tsv).")] = ...,
    manifest: Annotated[Path | None, typer.Option(help="CSV/TSV listing photos (image modality).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    device: Device = "auto",
    int8: Int8 = False,
    workers: Workers = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per model call.")] = 32,
) -> None:
    """Write embeddings with their ids (for your own analyses, plots or indexes)."""
    from clibd_cli.embeddings import embed_inputs, write_embeddings

    console = _stderr()
    if modality not in ("image", "dna", "text"):
        raise ClibdError(f"--modality {modality!r}: use image, dna or text.")
    if not inputs and manifest is None:
        raise ClibdError("nothing to embed: give inputs (or --manifest for photos).")
    bundle = _bundle(model, device, int8)
    ids, vectors, errors = embed_inputs(bundle, modality, inputs or [], manifest=manifest, workers=workers,
                                        batch_size=batch_size, read=lambda paths: _read(paths, None, None, 0))
    written = write_embeddings(output, ids, vectors, errors, modality=modality, model=bundle, force=force)
    console.print(f"[green]wrote[/green] {', '.join(map(str, written))}: {len(ids):,} {modality} embeddings "
                  f"of dimension {bundle.dim}" + (f", {len(errors):,} inputs failed (listed)" if errors else ""))


@app.command("export")
@user_errors
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: RUN/checkpoints/best.pt from 'clibd train', or "
                                               "an official CLIBD best.pth with --from-official.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model bundle folder to write.")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write int8 (dynamically quantised) encoders, kept "
                                       "only if they agree with fp32.")] = False,
    from_official: Annotated[bool, typer.Option("--from-official", help="Import a published CLIBD checkpoint "
                                                "(LoRA merged, legacy 5-mer tokenizer, no image normalisation).")
                             ] = False,
    text_tokenizer: Annotated[str | None, typer.Option(help="With --from-official: BERT-small tokenizer folder "
                                                       "or hub id (default prajjwal1/bert-small).")] = None,
    sample_images: Annotated[list[str] | None, typer.Option(help="Real photos (files, folders, patterns) for the "
                                                            "parity and int8 checks.")] = None,
    sample_barcodes: Annotated[Path | None, typer.Option(help="Real barcodes (with taxonomy, for text too) for the "
                                                         "parity and int8 checks.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the manifest (default: folder name).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    trust_checkpoint: TrustCheckpoint = False,
) -> None:
    """Turn a checkpoint into a model bundle: ONNX per modality, manifest with checksums, parity report."""
    from rich.console import Console
    from rich.table import Table

    from clibd_export.onnx import ExportSource, export_bundle, load_checkpoint

    console = _stderr()
    samples = _export_samples(sample_images, sample_barcodes)
    if from_official:
        from clibd_export.official import load_official

        if trust_checkpoint:  # official checkpoints are plain state dicts, always read as tensors only
            raise ClibdError("--trust-checkpoint applies to 'clibd train' checkpoints; --from-official reads "
                             "published checkpoints as tensors only and needs no trust. Drop one of the two.")

        imported = load_official(checkpoint, text_tokenizer)
        source = ExportSource(imported.model, imported.preprocessing, imported.text_tokenizer, checkpoint,
                              imported.source_sha256, "official")
    else:
        source = load_checkpoint(checkpoint, trust=trust_checkpoint)
    manifest = export_bundle(source, output, int8=int8, samples=samples, force=force, name=name,
                             progress=lambda message: console.print(f"{message}…"))
    table = Table(title=f"{output}: ONNX vs PyTorch (cosine), int8 vs fp32")
    for column in ("modality", "inputs", "n", "fp32 min cosine", "int8 mean cosine", "int8 top-1 agreement"):
        table.add_column(column)
    for modality, parity in manifest["parity"].items():
        spec = manifest["modalities"][modality]
        agreement = (spec.get("int8") or manifest.get("int8_rejected", {}).get(modality) or {}).get("agreement", {})
        for kind, numbers in parity.items():
            int8_part = agreement.get(kind, {})
            top1 = int8_part.get("top1_neighbour_agreement")
            table.add_row(modality, kind, str(numbers["n"]), f"{numbers['cosine_min']:.6f}",
                          f"{int8_part['cosine_mean']:.4f}" if int8_part else "–",
                          f"{top1:.3f}" if top1 is not None else "–")
    Console().print(table)
    for modality, rejected in manifest.get("int8_rejected", {}).items():
        console.print(f"[yellow]int8 {modality} encoder not kept:[/yellow] {rejected['reason']}")
    console.print(f"[green]wrote[/green] {output} ({', '.join(manifest['modalities'])}; "
                  f"fingerprint {manifest['fingerprint']})")


def _export_samples(images: list[str] | None, barcodes: Path | None):
    from clibd_export.onnx import Samples

    samples = Samples()
    if images:
        from clibd_cli.photos import collect_photos

        found, _ = collect_photos(images)
        samples.images = [photo.path for photo in found[:64]]
    if barcodes is not None:
        from clibd_cli.sequences import taxonomy_text

        records = _read([barcodes], None, None, 0).records[:64]
        samples.barcodes = [r.sequence for r in records if r.sequence]
        samples.texts = [taxonomy_text(r.taxonomy) for r in records if r.has_taxonomy]
    return samples


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="Model bundle folder, a 'clibd train' checkpoint "
                                       "(.pt), or kmer / kmer:K for the weight-free DNA profile.")],
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
    import json

    from rich.console import Console

    from clibd_cli.evaluate import evaluate as run_evaluation
    from clibd_cli.evaluate import read_split_table

    if output is not None and output.exists() and not force:
        raise ClibdError(f"{output}: already exists. Use --force to overwrite it.")
    specimens = read_split_table(data, id_column=id_column, sequence_column=sequence_column,
                                 image_column=image_column)
    embedder = _embedder(model, device, workers, trust_checkpoint)
    report = run_evaluation(specimens, embedder, split=split, precision=precision)
    report["model"] = embedder.name
    report["data"] = str(data)
    console = Console(width=None if sys.stdout.isatty() else 160)  # a file or pipe gets unwrapped tables
    console.print(_paper_table(report))
    console.print(_open_set_table(report))
    if output is not None:
        output.write_text(json.dumps(report, indent=2, default=float) + "\n")
        _stderr().print(f"[green]wrote[/green] {output}")
    if plots is not None:
        from clibd_cli.plots import plot_report

        written = plot_report(report, plots)
        _stderr().print(f"[green]wrote[/green] {', '.join(map(str, written))}")


def _embedder(model: str, device: str, workers: int | None, trust_checkpoint: bool = False):
    """kmer[:K], a model bundle folder, or a training checkpoint (exported to a temporary bundle first)."""
    from clibd_cli.evaluate import BundleEmbedder, KmerEmbedder

    if model == "kmer" or model.startswith("kmer:"):
        k = model.partition(":")[2]
        if k and not k.isdigit():
            raise ClibdError(f"--model {model!r}: write kmer or kmer:K with an integer K, e.g. kmer:5.")
        return KmerEmbedder(int(k) if k else 5)
    path = Path(model)
    if path.is_file():
        import tempfile

        from clibd_cli.bundle import ModelBundle
        from clibd_export.onnx import export_bundle, load_checkpoint

        source = load_checkpoint(path, trust=trust_checkpoint)
        scratch = tempfile.TemporaryDirectory(prefix="clibd-eval-")
        folder = Path(scratch.name) / "bundle"
        export_bundle(source, folder)
        return BundleEmbedder(ModelBundle.load(folder, device=device), workers, scratch)
    return BundleEmbedder(_bundle(path, device), workers)


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

    table = Table(title=f"open set: unseen species' keys removed; thresholds for precision calibrated on "
                        f"{report['open_set_calibrated_on']}")
    for column in ("pair", "absent: named (wrong)", "absent: rolled up right", "present: named",
                   "present: named right", "AUROC absent"):
        table.add_column(column, justify="right")
    for pair, entry in report["open_set"].items():
        table.add_row(pair.replace("_to_", "→"), _percent(entry["absent"]["named_species_share"]),
                      _percent(entry["absent"]["rolled_up_correct_share"]), _percent(entry["present"]["named_share"]),
                      _percent(entry["present"]["named_correct_share"]), f"{entry['auroc_species_absent']:.3f}")
    return table


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


if __name__ == "__main__":
    main()
