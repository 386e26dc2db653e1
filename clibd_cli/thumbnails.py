"""Small inline thumbnails of a classify run's photos, for `clibd report`.

Why inline: the report is one file a biologist mails or opens offline, so each photo travels inside it as
a ``data:`` URI (a ~96 px JPEG of a few kB), never as a link to a file the reader does not have.  Photos
are decoded by :func:`clibd_cli.preprocess.load_image`, the decoder classify itself uses: upright from
EXIF, any mode to RGB, decompression and aspect-ratio bombs refused.  A photo that cannot be read gets no
thumbnail (its row still shows), never a failed report.

Classify names a photo by its path as given, or relative to the folder given, so the ids alone do not
locate the files: :func:`photo_paths` collects the same inputs again (:func:`clibd_cli.photos.collect_photos`)
and so gets the same ids, duplicates numbered the same way.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from clibd_cli.photos import collect_photos, has_image_extension
from clibd_cli.preprocess import ImageError, load_image

THUMBNAIL_SIZE = 96


def thumbnail(path: Path, size: int = THUMBNAIL_SIZE) -> str | None:
    """A ``data:image/jpeg;base64,…`` URI of the photo fitted in ``size``×``size``, or None when it cannot be read."""
    try:
        image = load_image(path, draft_min_side=size)
    except ImageError:
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def photo_paths(query_ids: Iterable[str], photos: Sequence[str | Path] = (), *, manifest: Path | None = None,
                id_column: str | None = None, image_column: str | None = None) -> dict[str, Path]:
    """Each query id's photo file: from the inputs given to classify (``photos``, ``manifest``), else the id
    itself when it is the path of an existing photo (classify given files, report run from the same folder).

    A group's id (classify ``--group-by``) gets its first photo.  Ids found nowhere are left out.
    """
    found: dict[str, Path] = {}
    if photos or manifest is not None:
        listed, _problems = collect_photos(list(photos), manifest=manifest, id_column=id_column,
                                           image_column=image_column)
        for photo in listed:
            found.setdefault(photo.id, photo.path)
            found.setdefault(photo.group, photo.path)
    out = {}
    for query_id in query_ids:
        if query_id in found:
            out[query_id] = found[query_id]
        elif has_image_extension(query_id) and Path(query_id).is_file():
            out[query_id] = Path(query_id)
    return out


def thumbnails(paths: Mapping[str, Path], size: int = THUMBNAIL_SIZE, workers: int | None = None) -> dict[str, str]:
    """Thumbnails of ``paths`` ({query id: photo}) decoded in threads; unreadable photos are left out."""
    if not paths:
        return {}
    workers = workers or min(8, os.cpu_count() or 1)
    ids = list(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        uris = list(pool.map(lambda query_id: thumbnail(paths[query_id], size), ids))
    return {query_id: uri for query_id, uri in zip(ids, uris, strict=True) if uri is not None}
