"""`clibd embed`: embeddings with their ids, for analyses outside clibd.

Two formats: Parquet (one row per input: ``id`` and ``embedding`` as a fixed-size list of float32,
the model's name and fingerprint in the file's metadata; read by pandas, polars, DuckDB, R arrow) when
pyarrow is installed, or ``.npy`` (float32 [n, dim]) with an ``.ids.tsv`` of the same row order, which
needs nothing but numpy.  Inputs that cannot be read are not dropped silently: they go to an
``.errors.tsv`` beside the output with the reason.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clibd_cli.bundle import ModelBundle
from clibd_cli.errors import InputError, OutputExistsError
from clibd_cli.photos import collect_photos, iter_preprocessed
from clibd_cli.sequences import taxonomy_text

FORMATS = (".parquet", ".npy")


def embed_inputs(bundle: ModelBundle, modality: str, inputs: Sequence[str], *, manifest: Path | None = None,
                 workers: int | None = None, batch_size: int = 32, read: Callable | None = None,
                 id_column: str | None = None, image_column: str | None = None,
                 ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(ids, embeddings [n, dim], errors as (id, reason)) for photos, barcodes or taxonomy strings.

    ``read`` reads barcode/taxonomy tables into records; ``id_column``/``image_column`` name the photo
    manifest's columns (default: the column map of :mod:`clibd_cli.schema`)."""
    if modality == "image":
        photos, problems = collect_photos(inputs, manifest=manifest, id_column=id_column, image_column=image_column)
        ids, chunks = [], []
        errors = [(p.id, p.reason) for p in problems]
        for batch in iter_preprocessed(photos, bundle.preprocessing, batch_size=batch_size, workers=workers):
            ids.extend(p.id for p in batch.photos)
            chunks.append(bundle.embed_pixels(batch.pixels))
            errors.extend((p.id, reason) for p, reason in batch.errors)
        vectors = np.concatenate(chunks) if chunks else np.empty((0, bundle.dim), np.float32)
        return ids, vectors, errors
    result = read([Path(p) for p in inputs])
    records = result.records
    if modality == "dna":
        kept = [r for r in records if r.sequence]
        errors = [(r.id, "no sequence") for r in records if not r.sequence]
        return [r.id for r in kept], bundle.embed_dna([r.sequence for r in kept]), errors
    kept = [r for r in records if r.has_taxonomy]
    errors = [(r.id, "no taxonomy") for r in records if not r.has_taxonomy]
    return [r.id for r in kept], bundle.embed_text([taxonomy_text(r.taxonomy) for r in kept]), errors


def _outputs(path: Path) -> list[Path]:
    if path.suffix == ".npy":
        return [path, path.with_suffix(".ids.tsv")]
    return [path]


def write_embeddings(path: Path, ids: Sequence[str], vectors: np.ndarray, errors: Sequence[tuple[str, str]], *,
                     modality: str, model: ModelBundle, force: bool = False) -> list[Path]:
    """Write the embeddings (format from the extension) and, if any input failed, OUT.errors.tsv."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise InputError(f"{path}: use a .parquet or .npy file name for embeddings.")
    errors_path = path.with_suffix(".errors.tsv")
    targets = _outputs(path) + ([errors_path] if errors else [])
    for target in targets:
        if target.exists() and not force:
            raise OutputExistsError(f"{target}: already exists. Use --force to overwrite it.")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: folder does not exist; create it or choose another -o path.")
    meta = {"model": model.name, "fingerprint": model.fingerprint, "modality": modality, "dim": model.dim}
    if path.suffix == ".parquet":
        _write_parquet(path, ids, vectors, meta)
    else:
        np.save(path, vectors.astype(np.float32))
        _write_tsv(path.with_suffix(".ids.tsv"), ["row", "id"], enumerate(ids))
    if errors:
        _write_tsv(errors_path, ["id", "reason"], errors)
    return targets


def _write_parquet(path: Path, ids: Sequence[str], vectors: np.ndarray, meta: dict) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("writing Parquet needs pyarrow (pip install pyarrow), or use an .npy output.") from None
    dim = vectors.shape[1]
    flat = pa.array(vectors.astype(np.float32).ravel(), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table({"id": pa.array(list(ids), type=pa.string()), "embedding": column})
    table = table.replace_schema_metadata({"clibd": json.dumps(meta)})
    pq.write_table(table, path)


def _write_tsv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
