"""`clibd report`: one self-contained HTML page of a match or classify run (:mod:`clibd_cli.html_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clibd_cli.cli.console import stderr, wrote
from clibd_cli.cli.errors import user_errors
from clibd_cli.cli.options import ForceOutput, IdColumn, ImageColumn
from clibd_cli.errors import InputError


@user_errors
def report_command(
    results: Annotated[Path, typer.Argument(help="Output (-o) of 'clibd match' or 'clibd classify': CSV, TSV, JSON "
                                            "or JSONL.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The HTML file to write (default: RESULTS "
                                                "with the extension .html).")] = None,
    hits: Annotated[Path | None, typer.Option(help="The run's --hits table: each row then lists its top hits.",
                                              rich_help_panel="The run's other files")] = None,
    photos: Annotated[list[str] | None, typer.Option(
        "--photos", help="The photos given to 'clibd classify' (files, folders or patterns, as given then; "
        "repeatable), to show thumbnails.", rich_help_panel="The run's other files")] = None,
    manifest: Annotated[Path | None, typer.Option(help="The --manifest given to 'clibd classify', to show "
                                                  "thumbnails.", rich_help_panel="The run's other files")] = None,
    id_column: IdColumn = None,
    image_column: ImageColumn = None,
    force: ForceOutput = False,
) -> None:
    """Write a self-contained HTML report of a run: counts, run info, a filterable, sortable table with score
    bars, top hits and photo thumbnails."""
    from rich.markup import escape

    from clibd_cli.html_report import render_report, write_page
    from clibd_cli.report import check_output
    from clibd_cli.result_files import read_hits, read_results
    from clibd_cli.thumbnails import photo_paths, thumbnails

    output = output if output is not None else results.with_suffix(".html")
    inputs = [p for p in (results, hits, manifest) if p is not None]
    check_output(output, resume=None, force=force, inputs=inputs)
    run = read_results(results)
    ids = [str(row.get("query_id", "")) for row in run.rows]
    top_hits = read_hits(hits, set(ids)) if hits is not None else None
    pictures: dict[str, str] = {}
    if run.kind == "classify":
        paths = photo_paths(ids, photos or [], manifest=manifest, id_column=id_column, image_column=image_column)
        pictures = thumbnails(paths)
        if not paths:
            stderr().print("[yellow]note:[/yellow] no photo found for these ids, so the report has no thumbnails; "
                           "give the photos as they were given to classify with --photos (or --manifest).")
        elif len(pictures) < len(paths):
            stderr().print(f"[yellow]note:[/yellow] {len(paths) - len(pictures):,} photo(s) could not be read and "
                           "have no thumbnail.")
    elif photos or manifest is not None:
        raise InputError(f"{results}: is a barcode run (clibd match); --photos and --manifest are for classify "
                         "outputs.")
    write_page(render_report(run, top_hits, pictures), output)
    thumbs = f", {len(pictures):,} thumbnails" if run.kind == "classify" else ""
    wrote(f"{escape(str(output))} ({len(run.rows):,} rows{thumbs})")
