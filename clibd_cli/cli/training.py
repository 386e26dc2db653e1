"""`clibd simulate`, `clibd train` and `clibd split`: data and training (torch, through clibd_training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clibd_cli.cli.console import stderr, stdout, step_progress, wrote
from clibd_cli.cli.errors import user_errors
from clibd_cli.cli.options import TrustCheckpoint
from clibd_cli.errors import ClibdError
from clibd_training.config import presets


@user_errors
def simulate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the synthetic specimens to.")],
    species: Annotated[int, typer.Option(min=5, help="Number of species (at least 5: seen and unseen splits).")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    image_size: Annotated[int, typer.Option(min=32, help="Photo size in pixels.")] = 224,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering photos.")] = 1,
    force: Annotated[bool, typer.Option(help="Write into a folder that is not empty.")] = False,
) -> None:
    """Write honest synthetic specimens (taxonomy, COI-like barcodes, photos, CLIBD HDF5) for tests and demos."""
    from clibd_training.synthetic import write_simulation

    if output.exists() and any(output.iterdir()) and not force:
        raise ClibdError(f"{output}: is not empty. Use --force or another folder.")
    summary = write_simulation(output, n_species=species, seed=seed, image_size=image_size, workers=workers,
                               progress=step_progress)
    wrote(f"{output}: {summary['records']:,} synthetic specimens of {summary['species']:,} species "
          "(specimens.tsv, images/, clibd.hdf5)")


@user_errors
def train(
    config: Annotated[str, typer.Option(help=f"Preset ({', '.join(presets())}) or YAML file.")] = "tiny-cpu",
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
    stderr().print(f"[green]done[/green]: {run}/checkpoints/best.pt, metrics in {run}/metrics.jsonl")


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
    stdout().print(table)
