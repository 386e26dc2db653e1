"""`clibd export`: a training or published checkpoint becomes a model bundle (:mod:`clibd_cli.models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from clibd_cli.cli.console import stderr, stdout
from clibd_cli.cli.errors import user_errors
from clibd_cli.cli.options import TrustCheckpoint


@user_errors
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: RUN/checkpoints/best.pt from 'clibd train', or "
                                               "an official CLIBD best.pth with --from-official.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model bundle folder to write.")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write int8 (dynamically quantised) encoders, kept "
                                       "only if they agree with fp32.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write fp16 encoders, kept only if they agree with fp32; "
                                       "used automatically on CUDA.")] = False,
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
    from clibd_cli.models import export_model

    console = stderr()
    manifest = export_model(checkpoint, output, int8=int8, from_official=from_official, text_tokenizer=text_tokenizer,
                            sample_images=sample_images, sample_barcodes=sample_barcodes, name=name, force=force,
                            trust_checkpoint=trust_checkpoint, progress=lambda message: console.print(f"{message}…"),
                            fp16=fp16)
    stdout().print(_parity_table(output, manifest))
    for variant in ("int8", "fp16"):
        for modality, rejected in manifest.get(f"{variant}_rejected", {}).items():
            console.print(f"[yellow]{variant} {modality} encoder not kept:[/yellow] {rejected['reason']}")
    console.print(f"[green]wrote[/green] {output} ({', '.join(manifest['modalities'])}; "
                  f"fingerprint {manifest['fingerprint']})")


def _parity_table(output: Path, manifest: dict[str, Any]):
    """Per modality and kind of input: ONNX vs PyTorch cosine, and the int8 (and fp16) encoders' agreement
    with fp32."""
    from rich.table import Table

    fp16 = any("fp16" in spec for spec in manifest["modalities"].values()) or bool(manifest.get("fp16_rejected"))
    table = Table(title=f"{output}: ONNX vs PyTorch (cosine), int8{' and fp16' if fp16 else ''} vs fp32")
    columns = ["modality", "inputs", "n", "fp32 min cosine", "int8 mean cosine", "int8 top-1 agreement"]
    for column in columns + (["fp16 min cosine"] if fp16 else []):
        table.add_column(column)
    for modality, parity in manifest["parity"].items():
        agreement = {variant: _agreement(manifest, modality, variant) for variant in ("int8", "fp16")}
        for kind, numbers in parity.items():
            int8_part, fp16_part = agreement["int8"].get(kind, {}), agreement["fp16"].get(kind, {})
            top1 = int8_part.get("top1_neighbour_agreement")
            cells = [modality, kind, str(numbers["n"]), f"{numbers['cosine_min']:.6f}",
                     f"{int8_part['cosine_mean']:.4f}" if int8_part else "–",
                     f"{top1:.3f}" if top1 is not None else "–"]
            if fp16:
                cells.append(f"{fp16_part['cosine_min']:.6f}" if fp16_part else "–")
            table.add_row(*cells)
    return table


def _agreement(manifest: dict[str, Any], modality: str, variant: str) -> dict[str, Any]:
    """A variant's measured agreement with fp32, kept or rejected ({} when there is none)."""
    spec = manifest["modalities"][modality]
    found = spec.get(variant) or manifest.get(f"{variant}_rejected", {}).get(modality) or {}
    return found.get("agreement", {})
