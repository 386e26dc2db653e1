"""Find the photos a command was given, and decode them fast: behind ``clibd classify`` and ``build-index --images``.

Finding (:func:`collect_photos`).  Users name photos the way they store them: single files, folders of
folders, shell patterns, or a table (BIOSCAN-1M/5M metadata, a spreadsheet export) listing image files
with specimen ids and taxonomy.  A folder is walked recursively and keeps only :data:`IMAGE_EXTENSIONS`
(the formats cameras, phones, microscopes and scanners write, HEIC and RAW included), skipping hidden files and
folders (``.DS_Store``, ``.thumbnails``) and sorting so that two runs list the same photos in the same
order.  A symbolic link whose target is missing is reported, not skipped: a link into an unmounted
card or a moved folder is how photos go missing unnoticed.  A file named directly is kept whatever its
extension: the user asked for it, so if it is no image the report says so in an error row instead of
it silently vanishing.  Nothing is decoded here; a missing file listed in a table is reported later,
per photo, like any other undecodable one.

Ids are what report rows are keyed by, so they are short and stable: the path relative to the folder
given (``sp1/IMG_0001.jpg``), the path as given for files and pattern matches, and the id column of a
table (found as every clibd reader finds it, :data:`clibd_cli.schema.ID_COLUMNS`, so a photo and the
barcode in the same row get the same id).  The same file reached twice (``photos/ photos/a.jpg``) is
listed once; two different files that would get the same id (``IMG_0001.jpg`` in two camera folders)
keep both, the later one with a longer id (the path as given, or ``#2``).

Decoding (:func:`iter_preprocessed`).  Decoding and resizing a full-resolution photo costs tens of
milliseconds, as much as running the image encoder on it, so photos are decoded by a thread pool
(pillow releases the GIL while it decodes and resizes) and up to ``prefetch`` batches are decoded
ahead while the caller runs inference on the current one.  Batches come back in input order, each with
the photos it could not decode and why (the :class:`~clibd_cli.preprocess.ImageError` message, which
names the file); any other exception is a bug and propagates.
"""

from __future__ import annotations

import glob
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from clibd_cli.errors import InputError
from clibd_cli.image_formats import HEIF_EXTENSIONS, PILLOW_EXTENSIONS, RAW_EXTENSIONS
from clibd_cli.preprocess import DEFAULT_MAX_PIXELS, ImageError, ImagePreprocessing, preprocess_image
from clibd_cli.schema import RANKS, complete_taxonomy
from clibd_cli.sequences import SpecimenTable, check_id

# Every extension a camera, phone, microscope or scanner writes photos with: pillow's own formats, HEIC/HEIF
# and camera RAW.  A file with one of them is always a row: decoded, or an error row saying why not
# (a RAW file without rawpy names what to install), so no photo in a folder goes unnoticed.
IMAGE_EXTENSIONS: frozenset[str] = PILLOW_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS

GROUP_BY_FOLDER = "folder"

_GLOB_MAGIC = re.compile(r"[*?[]")


def _empty_taxonomy() -> dict[str, str]:
    return dict.fromkeys(RANKS, "")


@dataclass(frozen=True)
class Photo:
    """One photo to identify: its report id, where it is, the group it is identified with, its taxonomy.

    ``group`` (photos of one specimen, pooled into one call) defaults to the id; ``taxonomy`` has the
    four :data:`~clibd_cli.schema.RANKS`, empty strings where unknown.
    """

    id: str
    path: Path
    group: str = ""
    taxonomy: dict[str, str] = field(default_factory=_empty_taxonomy, hash=False)

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.id)


@dataclass
class PhotoProblem:
    """Something found while collecting that cannot be used (an unreadable folder, a row without a file)."""

    id: str
    path: str
    reason: str


@dataclass
class DecodedBatch:
    """One batch of consecutive input photos: the decoded ones with their pixels, and the failures."""

    photos: list[Photo]  # the decoded ones, in input order
    pixels: np.ndarray  # float32 [len(photos), 3, S, S]
    errors: list[tuple[Photo, str]]  # undecodable ones, in input order, with the one-line reason
    inputs: list[Photo] = field(default_factory=list)  # every photo of the batch, in input order

    def in_order(self) -> Iterator[tuple[Photo, str | None]]:
        """Each input photo with its error reason (None when decoded), so callers keep input order."""
        failed = {id(photo): reason for photo, reason in self.errors}
        for photo in self.inputs:
            yield photo, failed.get(id(photo))


# ---------------------------------------------------------------------------------------------
# Collecting


def has_image_extension(path: str | PurePath) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class _Collector:
    """Photos in order, deduplicated by file, with unique ids."""

    def __init__(self) -> None:
        self.photos: list[Photo] = []
        self.problems: list[PhotoProblem] = []
        self._files: set[str] = set()
        self._ids: set[str] = set()

    def add(self, photo_id: str, path: Path, group: str = "", taxonomy: dict[str, str] | None = None,
            alternative_id: str = "") -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key in self._files:
            return  # the same file reached twice: keep the first
        self._files.add(key)
        unique = photo_id
        if unique in self._ids:
            unique = alternative_id if alternative_id and alternative_id not in self._ids else ""
            number = 2
            while not unique or unique in self._ids:
                unique = f"{photo_id}#{number}"
                number += 1
        self._ids.add(unique)
        self.photos.append(Photo(unique, path, group or unique, taxonomy or _empty_taxonomy()))


def _walk(folder: Path, problems: list[PhotoProblem], label: str) -> list[PurePath]:
    """Image files under ``folder`` (relative paths, sorted), skipping hidden entries and folder loops.

    A folder that cannot be listed becomes a :class:`PhotoProblem` (``label`` names the top folder) and
    the walk goes on.
    """
    found: list[PurePath] = []
    visited: set[tuple[int, int]] = set()

    def visit(directory: Path, relative: PurePath) -> None:
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in visited:
                return  # a symlink back up the tree
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            problem_id = relative.as_posix() if relative.parts else label
            problems.append(PhotoProblem(problem_id, str(directory), f"cannot read folder: {exc}"))
            return
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
                broken = not is_dir and not is_file and entry.is_symlink()
            except OSError as exc:
                problems.append(PhotoProblem((relative / entry.name).as_posix(), entry.path,
                                             f"cannot read folder: {exc}"))
                continue
            if broken:
                _broken_link(entry, (relative / entry.name).as_posix(), problems)
            elif is_dir:
                visit(Path(entry.path), relative / entry.name)
            elif is_file and has_image_extension(entry.name):
                found.append(relative / entry.name)

    visit(folder, PurePath())
    return found  # entries are sorted per folder, so this is sorted tree order


def _broken_link(entry: os.DirEntry, problem_id: str, problems: list[PhotoProblem]) -> None:
    """Report a symbolic link whose target is missing, unless it visibly named a file that is no photo.

    Skipping such a link silently would drop photos without a trace: a link into an unmounted card or a
    moved folder is exactly how photos go missing.  The target's name decides what it was: an image file
    or a name without an extension (possibly a folder of photos) becomes a problem, hence an error row;
    ``notes.txt`` is skipped like the real ``notes.txt`` would be.
    """
    try:
        target = os.readlink(entry.path)
    except OSError:
        target = ""
    if not (has_image_extension(entry.name) or has_image_extension(target) or not os.path.splitext(target)[1]):
        return
    problems.append(PhotoProblem(problem_id, entry.path, f"{entry.path}: broken symbolic link: its target "
                                 f"{target or '(unreadable)'} does not exist. Fix or remove the link."))


def _folder_group(relative: PurePath, top: str) -> str:
    parent = relative.parent.as_posix()
    return top if parent in ("", ".") else parent


def _add_folder(collector: _Collector, folder: Path, label: str, by_folder: bool) -> None:
    for relative in _walk(folder, collector.problems, label):
        photo_id = relative.as_posix()
        group = _folder_group(relative, label) if by_folder else ""
        collector.add(photo_id, folder / relative, group, alternative_id=(PurePath(label) / relative).as_posix())


def _add_file(collector: _Collector, path: Path, by_folder: bool) -> None:
    collector.add(path.as_posix(), path, path.parent.as_posix() if by_folder else "")


def _chunk(value: str) -> str:
    """Chunk numbers written by pandas may be floats ('3.0')."""
    value = value.strip()
    return value.split(".")[0] if re.fullmatch(r"\d+\.0*", value) else value


def _add_manifest(collector: _Collector, manifest: Path, group_by: str | None, id_column: str | None = None,
                  image_column: str | None = None) -> None:
    table = SpecimenTable(manifest, id_column=id_column, image_column=image_column)
    header = table.header
    columns = ", ".join(header[:30]) + (" …" if len(header) > 30 else "")
    table.columns.require("image", "image file", "Rename the column that lists the photos, or name it with "
                          "--image-column.")
    group_col = None
    if group_by:
        lowered = {name.strip().lower(): name for name in header}
        group_col = group_by if group_by in header else lowered.get(group_by.strip().lower())
        if group_col is None and group_by != GROUP_BY_FOLDER:
            raise InputError(f"{manifest}: no column {group_by!r} to group photos by; columns are: {columns}.")
    at = table.columns.index
    rank_i = {rank: i for rank in RANKS if (i := at(rank)) is not None}
    path_i, id_i, chunk_i = at("image"), at("id"), at("chunk")
    group_i = header.index(group_col) if group_col else None
    folder = manifest.parent
    has_ranks = bool(rank_i)
    for line, row in table:
        written = row[path_i].strip()
        photo_id = row[id_i].strip() if id_i is not None else ""
        check_id(photo_id, f"{manifest}: line {line}")
        if not written:
            problem_id = photo_id or f"{manifest.name}:{line}"
            collector.problems.append(PhotoProblem(problem_id, "", f"{manifest}: line {line} names no image file"))
            continue
        written_posix = PurePath(written).as_posix()
        photo_id = photo_id or written_posix
        path = folder / written
        if chunk_i is not None and (chunk := _chunk(row[chunk_i])) and not path.exists():
            path = folder / f"part{chunk}" / written  # BIOSCAN-1M layout; reported at decode time if absent
        if group_i is not None:
            group = row[group_i].strip()
        elif group_by == GROUP_BY_FOLDER:
            group = PurePath(written).parent.as_posix()
            group = "" if group == "." else group
        else:
            group = ""
        taxonomy = complete_taxonomy({rank: row[i] for rank, i in rank_i.items()}) if has_ranks else None
        collector.add(photo_id, path, group, taxonomy)


def collect_photos(inputs: Sequence[str | Path], *, manifest: Path | None = None, group_by: str | None = None,
                   id_column: str | None = None, image_column: str | None = None,
                   ) -> tuple[list[Photo], list[PhotoProblem]]:
    """The photos named by ``inputs`` (files, folders, glob patterns) and ``manifest``, and what was unusable.

    Manifest photos come first, in table order, then each input in the order given.  A folder is walked
    recursively for :data:`IMAGE_EXTENSIONS` (hidden entries skipped, sorted); a file is kept whatever
    its extension; a pattern (``*``, ``?``, ``[``) is expanded with :func:`glob.glob` (``**`` recursive),
    keeping matched files with an image extension and walking matched folders.  ``group_by`` is
    ``"folder"`` (the photo's folder relative to the folder given, or the folder given for photos at its
    top) or, with a manifest, one of its columns.  ``id_column`` and ``image_column`` name the manifest's id
    and photo columns (default: the column map of :mod:`clibd_cli.schema`).  Unreadable folders, broken
    symbolic links met in a folder (see :func:`_broken_link`) and manifest rows naming no file come back as
    :class:`PhotoProblem`; a path that does not exist, a pattern matching nothing, a manifest without an
    image column and an unknown ``group_by`` raise :class:`InputError`.
    """
    if group_by is not None and manifest is None and group_by != GROUP_BY_FOLDER:
        raise InputError(f"--group-by {group_by!r}: without a manifest photos can only be grouped by "
                         f"{GROUP_BY_FOLDER!r}; give a manifest (CSV/TSV) with a {group_by!r} column.")
    by_folder = group_by == GROUP_BY_FOLDER
    collector = _Collector()
    if manifest is not None:
        _add_manifest(collector, Path(manifest), group_by, id_column, image_column)
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            _add_folder(collector, path, path.as_posix(), by_folder)
        elif path.exists():
            _add_file(collector, path, by_folder)
        elif _GLOB_MAGIC.search(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: the pattern matches no files. Check the folder and the pattern.")
            kept = 0
            for match in matches:
                match_path = Path(match)
                if match_path.is_dir():
                    before = len(collector.photos)
                    _add_folder(collector, match_path, match_path.as_posix(), by_folder)
                    kept += len(collector.photos) - before
                elif has_image_extension(match):
                    _add_file(collector, match_path, by_folder)
                    kept += 1
            if not kept and not any(Path(match).is_dir() for match in matches):
                raise InputError(f"{text}: the pattern matches {len(matches)} file(s) but none is a photo "
                                 f"({', '.join(sorted(IMAGE_EXTENSIONS))}). Check the pattern.")
        else:
            raise InputError(f"{text}: no such file or folder. Check the path (photos are given as files, "
                             "folders or quoted patterns such as 'photos/**/*.jpg').")
    return collector.photos, collector.problems


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode(photo: Photo, spec: ImagePreprocessing, max_pixels: int) -> np.ndarray | str:
    """Pixels, or the one-line reason the photo cannot be decoded (only :class:`ImageError` is expected)."""
    try:
        return preprocess_image(photo.path, spec, max_pixels=max_pixels)
    except ImageError as exc:
        return " ".join(str(exc).split()) or f"{photo.path}: cannot decode the image."


def iter_preprocessed(photos: Sequence[Photo], spec: ImagePreprocessing, *, batch_size: int = 32,
                      workers: int | None = None, prefetch: int = 2,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[DecodedBatch]:
    """Decode and preprocess ``photos`` in a thread pool, yielding one :class:`DecodedBatch` per ``batch_size``
    consecutive photos, in input order.

    While the caller works on one batch, up to ``prefetch`` more are being decoded.  ``workers``
    defaults to ``min(8, os.cpu_count())``.  Undecodable photos (missing, not an image, truncated, over
    ``max_pixels``) are listed in the batch's ``errors``; any other exception propagates.  Closing the
    generator early cancels the queued work and joins the pool (at most ``workers`` photos finish).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be ≥ 0, got {prefetch}")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    return _iter_batches(list(photos), spec, batch_size, workers, prefetch, max_pixels)


def _iter_batches(photos: list[Photo], spec: ImagePreprocessing, batch_size: int, workers: int, prefetch: int,
                  max_pixels: int) -> Iterator[DecodedBatch]:
    if not photos:
        return
    starts = iter(range(0, len(photos), batch_size))
    pending: deque[tuple[list[Photo], list[Future[np.ndarray | str]]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clibd-decode")
    try:
        while True:
            # The batch waited on next plus `prefetch` more are queued; the pool works through them in order.
            while len(pending) < prefetch + 1 and (start := next(starts, None)) is not None:
                batch = photos[start : start + batch_size]
                pending.append((batch, [pool.submit(_decode, photo, spec, max_pixels) for photo in batch]))
            if not pending:
                return
            batch, futures = pending.popleft()
            decoded: list[Photo] = []
            arrays: list[np.ndarray] = []
            errors: list[tuple[Photo, str]] = []
            for photo, future in zip(batch, futures, strict=True):
                result = future.result()
                if isinstance(result, str):
                    errors.append((photo, result))
                else:
                    decoded.append(photo)
                    arrays.append(result)
            pixels = (np.stack(arrays) if arrays
                      else np.empty((0, 3, spec.size, spec.size), dtype=np.float32))
            yield DecodedBatch(decoded, pixels, errors, batch)
    finally:
        # Early close or an exception: queued decodes are cancelled, running ones (≤ workers) finish.
        pool.shutdown(wait=True, cancel_futures=True)
