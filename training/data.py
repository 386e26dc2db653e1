"""Training data: read specimens from every format CLIBD data comes in, and serve them to the model.

Readers (all return ``list[Specimen]``, the one specimen record of :mod:`clibd_cli.schema`; tables are read
with :class:`clibd_cli.sequences.SpecimenTable` and its column map, like every table clibd reads):

* :func:`read_clibd_hdf5` – the HDF5 files the official CLIBD trainer reads (one group per split).
* :func:`read_bioscan1m` – BIOSCAN-1M metadata TSV (+ its image folder).
* :func:`read_bioscan5m` – BIOSCAN-5M metadata CSV (+ its image folder), keeping its split names.
* :func:`read_manifest` – any CSV/TSV with an id column and optional image/DNA/taxonomy/split columns
  (the synthetic generator's ``specimens.tsv`` is one).
* :func:`load_specimens` – picks one of the above from the file's extension and columns.

Records may lack an image or a barcode: contrastive training uses whatever pairs exist and the
dataset flags what is missing (``has_image``/``has_dna``) instead of dropping the record.

Pixels are made by :mod:`clibd_cli.preprocess` – the same code the field runtime uses – and DNA is
tokenised by :class:`clibd_cli.tokenizer.KmerTokenizer`, so a model never meets inputs in the field
that were prepared differently from its training inputs.  Labels are cleaned with
:func:`clibd_cli.schema.complete_taxonomy` (``not_classified``, ``NA``… → ``''``; a missing genus taken from
a binomial species name) and barcodes with :func:`clibd_cli.sequences.normalise_sequence`, as everywhere
else in clibd.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from clibd_cli.errors import InputError
from clibd_cli.preprocess import (
    DRAFT_MARGIN,
    ImageError,
    ImagePreprocessing,
    ImageSource,
    image_to_array,
    load_image,
    preprocess_image,
    resize_short_side,
    to_rgb,
)
from clibd_cli.schema import (
    BIN_COLUMNS,
    RANKS,
    SEEN_SPLITS,
    UNSEEN_SPLITS,
    Specimen,
    clean_label,
    complete_taxonomy,
    find_column,
)
from clibd_cli.sequences import SpecimenTable, iter_table, normalise_sequence
from clibd_cli.tokenizer import KmerTokenizer

KINDS: tuple[str, ...] = ("auto", "hdf5", "bioscan1m", "bioscan5m", "manifest")
# Disjoint CLIBD HDF5 groups: together they hold every record once.  `all_keys` and
# `no_split_and_seen_train` are unions of these and would duplicate records if read as well.
HDF5_DISJOINT_GROUPS: tuple[str, ...] = ("no_split", *SEEN_SPLITS, *UNSEEN_SPLITS)
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".hdf", ".he5")
LABEL_KEYS: tuple[str, ...] = (*RANKS, "bin")
SIMULATION_FILES: tuple[str, ...] = ("specimens.tsv", "clibd.hdf5")  # what `clibd simulate` writes
_HDF5_BLOCK = 512  # rows of the padded image matrix read at once: bounded memory, few HDF5 calls


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class HDF5Image:
    """A lazy reference to one JPEG inside a CLIBD HDF5 file (``read_clibd_hdf5(lazy_images=True)``).

    The BIOSCAN-1M HDF5 holds tens of GB of JPEG bytes; keeping references instead of bytes lets a
    million records fit in memory, and each DataLoader worker reads only the rows it serves.
    """

    path: str
    group: str
    row: int
    length: int

    def read(self) -> bytes:
        """The JPEG bytes (opens the file once per process and keeps it open)."""
        dataset = _hdf5_handle(self.path)[self.group]["image"]
        return dataset[self.row, : self.length].tobytes()


_HDF5_HANDLES: dict[tuple[int, str], Any] = {}


def _hdf5_handle(path: str) -> Any:
    """An open read-only h5py file per (process, path): handles must not cross a fork."""
    import h5py

    key = (os.getpid(), path)
    handle = _HDF5_HANDLES.get(key)
    if handle is None:
        handle = _HDF5_HANDLES[key] = h5py.File(path, "r")
    return handle


def _sequence(raw: str | None) -> str | None:
    sequence = normalise_sequence(raw or "")
    return sequence or None


# ---------------------------------------------------------------------------------------------
# Tables


def _read_header(path: Path) -> list[str]:
    """The lower-cased column names (a UTF-8 byte-order mark is dropped)."""
    rows = iter_table(path)
    try:
        return [h.strip().lstrip("\ufeff").lower() for h in next(rows)[1]]
    finally:
        rows.close()


def _require(table: SpecimenTable, column: str, what: str) -> None:
    if find_column(table.header, (column,), None, column, table.path) is None:
        header = table.header
        raise InputError(f"{table.path}: no {column!r} column, so it is not a {what} file; columns are: "
                         f"{', '.join(header[:25])}{' …' if len(header) > 25 else ''}.")


def _chunk(value: str) -> str:
    """Chunk numbers as written by pandas may be floats ('3.0'); folders are 'part3', '3'."""
    value = value.strip()
    return value.split(".")[0] if re.fullmatch(r"\d+\.0*", value) else value


def _check_unique(specimens: Sequence[Specimen], lines: Sequence[int], path: Path) -> None:
    seen: dict[str, int] = {}
    for specimen, line in zip(specimens, lines, strict=True):
        if not specimen.id:
            raise InputError(f"{path}: line {line}: the record has no id. Give every record an id.")
        if specimen.id in seen:
            raise InputError(f"{path}: line {line}: duplicate id {specimen.id!r} (first at line "
                             f"{seen[specimen.id]}). Ids must be unique.")
        seen[specimen.id] = line


def _read_rows(table: SpecimenTable, image: Callable[[list[str]], str | None] | None = None) -> list[Specimen]:
    """Every row of `table` as a specimen (the photo from ``image(cells)`` when given), ids checked unique."""
    specimens, lines = [], []
    for line, cells in table:
        specimens.append(table.specimen(cells, image=image(cells)) if image else table.specimen(cells))
        lines.append(line)
    _check_unique(specimens, lines, table.path)
    return specimens


def read_bioscan1m(tsv: Path | str, image_root: Path | str | None = None) -> list[Specimen]:
    """Read BIOSCAN-1M metadata (TSV).

    Uses ``processid``, ``sampleid``, ``uri`` (BIN), the four ranks, ``nucraw`` (absent in some
    releases: sequences are then ``None``), ``image_file`` and ``chunk_number``.  With ``image_root``
    the image is ``image_root/part<chunk_number>/<image_file>``, or ``image_root/<image_file>`` where the
    file has no chunk numbers (the small-dataset metadata lists tar names in ``image_tar`` instead);
    without ``image_root`` records carry no image, since the metadata alone does not say where the
    photos were unpacked.  ``split`` is taken from a ``split`` column if there is one, else ``''``.
    Columns are found with the column map of :mod:`clibd_cli.schema`, like every other table.
    """
    table = SpecimenTable(tsv)
    _require(table, "processid", "BIOSCAN-1M metadata")
    root = Path(image_root) if image_root is not None else None
    image_i, chunk_i = table.columns.index("image"), table.columns.index("chunk")

    def image(cells: list[str]) -> str | None:
        image_file = cells[image_i].strip() if image_i is not None else ""
        if root is None or not image_file:
            return None
        chunk = _chunk(cells[chunk_i]) if chunk_i is not None else ""
        return str(root / f"part{chunk}" / image_file) if chunk else str(root / image_file)

    return _read_rows(table, image)


def read_bioscan5m(csv_path: Path | str, image_root: Path | str | None = None) -> list[Specimen]:
    """Read BIOSCAN-5M metadata (CSV), keeping its own split names (pretrain, train, val, test, …).

    Uses ``processid``, ``sampleid``, the four ranks, ``dna_bin``, ``dna_barcode``, ``split`` and
    ``chunk``.  With ``image_root`` (the dataset root) the image is
    ``image_root/images/cropped_256/<split>/<chunk>/<processid>.jpg`` (no chunk folder when ``chunk``
    is empty); without it records carry no image.
    """
    table = SpecimenTable(csv_path)
    _require(table, "processid", "BIOSCAN-5M metadata")
    root = Path(image_root) if image_root is not None else None
    chunk_column = find_column(table.header, ("chunk",), None, "chunk", table.path)
    chunk_i = table.header.index(chunk_column) if chunk_column else None

    def image(cells: list[str]) -> str | None:
        if root is None:
            return None
        folder = root / "images" / "cropped_256" / table.cell(cells, "split")
        chunk = _chunk(cells[chunk_i]) if chunk_i is not None else ""
        return str((folder / chunk if chunk else folder) / f"{table.cell(cells, 'id')}.jpg")

    return _read_rows(table, image)


def read_manifest(path: Path | str, *, id_column: str | None = None, sequence_column: str | None = None,
                  image_column: str | None = None) -> list[Specimen]:
    """Read a generic CSV/TSV manifest (e.g. the synthetic generator's ``specimens.tsv``).

    Columns are found with the column map of :mod:`clibd_cli.schema` (case-insensitive; the ``*_column``
    arguments name them explicitly): an id (``processid``, ``id``, …), optionally a photo
    (``image_file``/``image``/``image_path``/…, relative paths resolved against the manifest's folder), a
    barcode (``nucleotides``/``dna_barcode``/``sequence``/…), the ranks, ``split``, a BIN
    (``bin_uri``/``dna_bin``/``uri``/``bin``) and ``sampleid``.  Empty cells mean "missing".
    """
    table = SpecimenTable(path, id_column=id_column, sequence_column=sequence_column, image_column=image_column)
    table.columns.require("id", hint="Add one (e.g. processid) or name it with id_column.")
    specimens = _read_rows(table)
    if not specimens:
        raise InputError(f"{path}: the manifest has a header but no records.")
    return specimens


# ---------------------------------------------------------------------------------------------
# CLIBD HDF5


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _group_strings(group: Any, dataset: str, n: int, where: str) -> list[str]:
    """A string dataset of a group as ``str``s (``''`` × n when absent), checked to have n rows."""
    if dataset not in group:
        return [""] * n
    values = _strings(group[dataset][()])
    if len(values) != n:
        raise InputError(f"{where}: `{dataset}` has {len(values)} rows but `processid` has {n}.")
    return values


def _image_lengths(group: Any, n: int, where: str) -> np.ndarray:
    width = group["image"].shape[1]
    if "image_mask" not in group:  # JPEG/PNG data never ends in a zero byte, so padding can be stripped
        lengths = np.empty(n, dtype=np.int64)
        for start in range(0, n, _HDF5_BLOCK):
            block = group["image"][start : start + _HDF5_BLOCK]
            nonzero = block[:, ::-1] != 0
            lengths[start : start + len(block)] = np.where(nonzero.any(axis=1), width - nonzero.argmax(axis=1), 0)
        return lengths
    mask = np.asarray(group["image_mask"][()])
    lengths = mask.reshape(n, -1).sum(axis=1) if mask.ndim == 2 else mask.astype(np.int64)
    if lengths.shape != (n,) or (lengths < 0).any() or (lengths > width).any():
        raise InputError(f"{where}: `image_mask` does not match `image` ({n} rows of {width} bytes); "
                         "is the file corrupt?")
    return lengths.astype(np.int64)


def read_clibd_hdf5(path: Path | str, groups: str | Sequence[str], *, lazy_images: bool = False,
                    ) -> list[Specimen]:
    """Read groups of a CLIBD HDF5 file; each record's split is its group's name.

    Per group: ``processid`` (required), ``image`` (uint8 [N, L], zero-padded JPEG bytes) with
    ``image_mask`` (true lengths), ``barcode``, the ranks, ``sampleid`` and, if present, a BIN dataset.
    Images become bytes, or :class:`HDF5Image` references with ``lazy_images=True`` (for the full
    BIOSCAN files, whose JPEGs do not fit in memory).  A record listed in two groups (e.g. a key in
    ``seen_keys`` and ``all_keys``) appears once per group read.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such HDF5 file. Check the path.")
    names = [groups] if isinstance(groups, str) else list(groups)
    specimens: list[Specimen] = []
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot be opened as HDF5 ({exc}).") from exc
    with h5:
        for name in names:
            where = f"{path}[{name}]"
            if name not in h5 or not isinstance(h5[name], h5py.Group):
                available = ", ".join(k for k in h5 if isinstance(h5[k], h5py.Group))
                raise InputError(f"{path}: no group {name!r}; groups are: {available}.")
            group = h5[name]
            if "processid" not in group:
                raise InputError(f"{where}: no `processid` dataset; not a CLIBD HDF5 group.")
            ids = _strings(group["processid"][()])
            n = len(ids)
            barcodes = _group_strings(group, "barcode", n, where) if "barcode" in group else None
            ranks = {rank: _group_strings(group, rank, n, where) for rank in RANKS}
            sampleids = _group_strings(group, "sampleid", n, where)
            bin_name = next((name for name in BIN_COLUMNS if name in group), None)
            bins = _group_strings(group, bin_name, n, where) if bin_name else [""] * n
            images: list[str | bytes | HDF5Image | None] = [None] * n
            if "image" in group and n:
                lengths = _image_lengths(group, n, where)
                if lazy_images:
                    images = [HDF5Image(str(path.resolve()), name, i, int(length)) if length else None
                              for i, length in enumerate(lengths)]
                else:
                    for start in range(0, n, _HDF5_BLOCK):
                        block = group["image"][start : start + _HDF5_BLOCK]
                        for offset, row in enumerate(block):
                            length = int(lengths[start + offset])
                            images[start + offset] = row[:length].tobytes() if length else None
            for i in range(n):
                specimens.append(Specimen(
                    ids[i].strip(), **complete_taxonomy({rank: ranks[rank][i] for rank in RANKS}),
                    bin=clean_label(bins[i]), sequence=_sequence(barcodes[i]) if barcodes is not None else None,
                    image=images[i], split=name, sampleid=sampleids[i].strip()))
    return specimens


def hdf5_groups(path: Path | str) -> list[str]:
    """Names of the groups in an HDF5 file (to list the splits it offers)."""
    import h5py

    with h5py.File(path, "r") as h5:
        return [k for k in h5 if isinstance(h5[k], h5py.Group)]


# ---------------------------------------------------------------------------------------------
# Dispatch


def detect_kind(path: Path | str) -> str:
    """``hdf5``, ``bioscan1m``, ``bioscan5m`` or ``manifest`` from the extension, magic bytes and columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file. Check the path.")
    with path.open("rb") as fh:
        magic = fh.read(8)
    if path.suffix.lower() in HDF5_SUFFIXES or magic == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    columns = set(_read_header(path))
    if "dna_bin" in columns or ({"dna_barcode", "chunk"} <= columns):
        return "bioscan5m"
    if "uri" in columns or "nucraw" in columns or "chunk_number" in columns:
        return "bioscan1m"
    return "manifest"


def load_specimens(path: Path | str, kind: str = "auto", *, groups: str | Sequence[str] | None = None,
                   image_root: Path | str | None = None, lazy_images: bool = False) -> list[Specimen]:
    """Read specimens from any supported file; ``kind`` is one of :data:`KINDS`.

    ``path`` may also be a folder written by ``clibd simulate`` (its ``specimens.tsv``, else its
    ``clibd.hdf5``, is read).  For HDF5 without ``groups`` the disjoint split groups present
    (:data:`HDF5_DISJOINT_GROUPS`) are read, so every record comes once.  ``image_root`` is where BIOSCAN
    images were unpacked.
    """
    if kind not in KINDS:
        raise InputError(f"unknown data kind {kind!r}; use one of {', '.join(KINDS)}.")
    path = Path(path)
    if path.is_dir():
        names = {"auto": SIMULATION_FILES, "manifest": SIMULATION_FILES[:1], "hdf5": SIMULATION_FILES[1:]}
        found = next((path / n for n in names.get(kind, ()) if (path / n).is_file()), None)
        if found is None:
            raise InputError(f"{path}: is a folder without {' or '.join(SIMULATION_FILES)}; give the data file "
                             "itself (CLIBD HDF5, BIOSCAN-1M TSV, BIOSCAN-5M CSV or a manifest).")
        path = found
    if kind == "auto":
        kind = detect_kind(path)
    if kind == "hdf5":
        if groups is None:
            present = hdf5_groups(path)
            groups = [g for g in HDF5_DISJOINT_GROUPS if g in present]
            if not groups:
                raise InputError(f"{path}: none of the CLIBD split groups found (groups: {', '.join(present)}); "
                                 "name the groups to read.")
        return read_clibd_hdf5(path, groups, lazy_images=lazy_images)
    if kind == "bioscan1m":
        return read_bioscan1m(path, image_root)
    if kind == "bioscan5m":
        return read_bioscan5m(path, image_root)
    return read_manifest(path)


def split_specimens(specimens: Sequence[Specimen], groups: str | Sequence[str], *,
                    allow_missing: bool = False) -> list[Specimen]:
    """The specimens whose split is one of ``groups``, in their original order.

    A requested split that no specimen has is usually a typo (``val_seen`` vs ``seen_val``), so it is
    an error unless ``allow_missing``.
    """
    wanted = {groups} if isinstance(groups, str) else set(groups)
    present = {s.split for s in specimens}
    missing = sorted(wanted - present)
    if missing and not allow_missing:
        raise InputError(f"no records in split(s) {', '.join(missing)}; the data has: "
                         f"{', '.join(sorted(present)) or '(no split names)'}.")
    return [s for s in specimens if s.split in wanted]


# ---------------------------------------------------------------------------------------------
# Images


class ImageTransform:
    """One image transform (training or evaluation) for one :class:`ImagePreprocessing` spec.

    Training: resize short side to ``spec.resize``, RandomResizedCrop to ``spec.size`` (torchvision's
    default scale 0.08-1 and ratio 3/4-4/3, as in the official code), horizontal and vertical flips,
    rotation by up to ±``degrees`` (corners filled black, as the official code does).  Evaluation:
    exactly :func:`clibd_cli.preprocess.preprocess_image`.  Both end in
    :func:`clibd_cli.preprocess.image_to_array`, the runtime's own pixel scaling and normalisation, so
    training and inference cannot drift apart.  Randomness comes from torch's RNG, which DataLoader
    seeds per worker.
    """

    def __init__(self, spec: ImagePreprocessing = ImagePreprocessing(), training: bool = False, *,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 degrees: float = 45.0, flip_p: float = 0.5) -> None:
        self.spec = spec
        self.training = training
        interpolation = T.InterpolationMode(spec.interpolation)
        augment: list[Callable[[Image.Image], Image.Image]] = [
            T.RandomResizedCrop(spec.size, scale=scale, ratio=ratio, interpolation=interpolation)]
        if flip_p > 0:
            augment += [T.RandomHorizontalFlip(flip_p), T.RandomVerticalFlip(flip_p)]
        if degrees:
            augment.append(T.RandomRotation(degrees, interpolation=T.InterpolationMode.BILINEAR, fill=0))
        self._augment = T.Compose(augment)

    @property
    def draft_min_side(self) -> int:
        """Smallest short side a JPEG may be draft-decoded to before this transform (see preprocess)."""
        return round(DRAFT_MARGIN * self.spec.resize)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (3, self.spec.size, self.spec.size)

    def __call__(self, image: Image.Image | ImageSource) -> torch.Tensor:
        """PIL image (or a path/bytes, decoded with :func:`load_image`) → float32 tensor [3, S, S]."""
        if not isinstance(image, Image.Image):
            image = load_image(image, draft_min_side=self.draft_min_side)
        if not self.training:
            return torch.from_numpy(preprocess_image(image, self.spec))
        image = resize_short_side(to_rgb(image), self.spec.resize, self.spec.interpolation)
        return torch.from_numpy(image_to_array(self._augment(image), self.spec))

    def __repr__(self) -> str:
        return f"ImageTransform({self.spec!r}, training={self.training})"


class ImageTransforms:
    """The paper's pair of image transforms for one spec: ``.train`` (random) and ``.eval`` (deterministic).

    Keyword arguments tune the training augmentation (see :class:`ImageTransform`); ``.eval`` is always
    the runtime's :func:`clibd_cli.preprocess.preprocess_image`.
    """

    def __init__(self, spec: ImagePreprocessing = ImagePreprocessing(), **augmentation: Any) -> None:
        self.spec = spec
        self.train = ImageTransform(spec, training=True, **augmentation)
        self.eval = ImageTransform(spec, training=False)

    def __repr__(self) -> str:
        return f"ImageTransforms({self.spec!r})"


# ---------------------------------------------------------------------------------------------
# Dataset


def build_label_maps(specimens: Iterable[Specimen]) -> dict[str, dict[str, int]]:
    """Label → index per rank and for the BIN (keys :data:`LABEL_KEYS`); sorted, so reproducible.

    Build them on the training set and pass them to the validation/test datasets, so an index means
    the same class everywhere; labels absent from the map get -1.
    """
    labels: dict[str, set[str]] = {key: set() for key in LABEL_KEYS}
    for specimen in specimens:
        for key in LABEL_KEYS:
            value = specimen.label(key)
            if value:
                labels[key].add(value)
    return {key: {label: i for i, label in enumerate(sorted(values))} for key, values in labels.items()}


def collate(items: Sequence[Mapping[str, Any]], text_tokenizer: Callable[..., Any] | None = None,
            text_max_len: int = 20) -> dict[str, Any]:
    """Batch dataset items: tensors stacked, ints/bools as tensors, strings as lists.

    Items from a :class:`SpecimenDataset` with a text tokenizer already carry ``text_input_ids`` and
    ``text_attention_mask``, so plain ``collate`` works as a DataLoader ``collate_fn``.  Given a
    (transformers) ``text_tokenizer`` the texts are (re)tokenised here, once per batch, padded and
    truncated to ``text_max_len`` → ``text_input_ids``/``text_attention_mask`` (LongTensor [B, L]).
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, bool):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    if text_tokenizer is not None:
        encoded = text_tokenizer(list(batch["text"]), padding="max_length", truncation=True,
                                 max_length=text_max_len, return_tensors="pt")
        batch["text_input_ids"] = encoded["input_ids"].long()
        batch["text_attention_mask"] = encoded["attention_mask"].long()
    return batch


class SpecimenDataset(Dataset):
    """Specimens as model inputs: pixels, k-mer tokens, taxonomy text and class indices.

    Each item is a dict:

    * ``pixel_values`` float32 [3, S, S] (zeros when the record has no image) and ``has_image`` –
      only ``has_image=False`` and no ``pixel_values`` when ``image_transform`` is ``None``;
    * ``dna_input_ids``/``dna_attention_mask`` LongTensor [T] from ``dna_tokenizer`` (zeros when the
      record has no barcode) and ``has_dna``;
    * ``text`` (``"{order} {family} {genus} {species}"``, empty ranks skipped) and, with a
      ``text_tokenizer``, ``text_input_ids``/``text_attention_mask`` LongTensor [``text_max_len``];
    * ``order_index``, ``family_index``, ``genus_index``, ``species_index``, ``bin_index`` (-1 unknown);
    * ``index`` (position in the dataset) and ``processid``.

    Images are decoded with :func:`clibd_cli.preprocess.load_image`; an undecodable image raises its
    :class:`ImageError`, or with ``skip_bad_images`` is served as a missing image (one bad file must not
    end a multi-day run once the data has been checked).
    """

    def __init__(self, specimens: Sequence[Specimen], dna_tokenizer: KmerTokenizer,
                 text_tokenizer: Callable[..., Any] | None = None,
                 image_transform: Callable[[Image.Image], torch.Tensor] | None = None, text_max_len: int = 20,
                 label_maps: Mapping[str, Mapping[str, int]] | None = None, *, image_size: int | None = None,
                 skip_bad_images: bool = False) -> None:
        self.specimens = list(specimens)
        self.dna_tokenizer = dna_tokenizer
        self.text_tokenizer = text_tokenizer
        self.image_transform = image_transform
        self.text_max_len = text_max_len
        self.label_maps = {k: dict(v) for k, v in (label_maps or build_label_maps(self.specimens)).items()}
        self.skip_bad_images = skip_bad_images
        if isinstance(image_transform, ImageTransforms):
            raise TypeError("pass ImageTransforms(...).train or .eval as image_transform, not the pair")
        size = getattr(getattr(image_transform, "spec", None), "size", None) or image_size
        if image_transform is not None and size is None:
            raise ValueError("give image_size (the transform's output side) for a transform other than "
                             "ImageTransform, so records without an image get a zero image of that size")
        self.image_shape = (3, int(size), int(size)) if size else None
        self._draft_min_side = getattr(image_transform, "draft_min_side", None)
        self._no_dna = torch.zeros(dna_tokenizer.seq_len, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.specimens)

    def _pixels(self, specimen: Specimen) -> tuple[torch.Tensor, bool]:
        assert self.image_transform is not None and self.image_shape is not None
        source = specimen.image
        if source is None:
            return torch.zeros(self.image_shape), False
        try:
            if isinstance(source, HDF5Image):
                name = f"record {specimen.id} ({source.path}[{source.group}] row {source.row})"
                image = load_image(source.read(), name=name, draft_min_side=self._draft_min_side)
            elif isinstance(source, bytes):
                image = load_image(source, name=f"record {specimen.id}", draft_min_side=self._draft_min_side)
            else:
                image = load_image(source, draft_min_side=self._draft_min_side)
        except ImageError:
            if self.skip_bad_images:
                return torch.zeros(self.image_shape), False
            raise
        return self.image_transform(image), True

    def _dna(self, specimen: Specimen) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if not specimen.sequence:
            return self._no_dna.clone(), self._no_dna.clone(), False
        ids, mask = self.dna_tokenizer([specimen.sequence])
        return torch.from_numpy(ids[0]), torch.from_numpy(mask[0]), True

    def __getitem__(self, index: int) -> dict[str, Any]:
        specimen = self.specimens[index]
        item: dict[str, Any] = {"index": int(index), "processid": specimen.id}
        if self.image_transform is not None:
            item["pixel_values"], item["has_image"] = self._pixels(specimen)
        else:
            item["has_image"] = False
        item["dna_input_ids"], item["dna_attention_mask"], item["has_dna"] = self._dna(specimen)
        item["text"] = specimen.text
        if self.text_tokenizer is not None:
            encoded = self.text_tokenizer([item["text"]], padding="max_length", truncation=True,
                                          max_length=self.text_max_len, return_tensors="pt")
            item["text_input_ids"] = encoded["input_ids"][0].long()
            item["text_attention_mask"] = encoded["attention_mask"][0].long()
        for key in LABEL_KEYS:
            value = specimen.label(key)
            item[f"{key}_index"] = self.label_maps.get(key, {}).get(value, -1) if value else -1
        return item

    def collate(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """:func:`collate` for this dataset's items (they already carry their text tokens)."""
        return collate(items)
