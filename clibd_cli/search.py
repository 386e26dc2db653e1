"""Nearest-neighbour search engines: an hnswlib graph where hnswlib is installed, exact NumPy otherwise.

hnswlib publishes no binary wheels, so installing it needs a C++ compiler, which most field laptops
(Windows above all) lack.  It is therefore an extra (``pip install 'clibd[hnsw]'``), and without it
every search is exact: a matrix product over the reference vectors, which is what the graph
approximates.  Both engines read one index format, so an index built on either machine opens on the
other:

* built with hnswlib, a part stores its vectors inside the graph file (``dna.hnsw``); without
  hnswlib they are read straight out of that file with NumPy (:func:`read_hnsw_vectors`) — the
  level-0 block of hnswlib's format holds every vector and its label at fixed offsets;
* built without hnswlib, a part stores its vectors as ``dna.npy`` (float32, no pickle); with hnswlib
  it is searched exactly too (correct, and the note says how to get the graph: rebuild with --force).

``CLIBD_SEARCH=exact`` forces exact search where hnswlib is installed (for comparisons); the
default, ``auto``, uses hnswlib when it imports.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clibd_cli.errors import ClibdError, InputError

HNSWLIB = "hnswlib"
EXACT = "exact"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256  # measured: benchmarks/search_engines.py (calls agree with exact search)
GRAPH_SUFFIX = ".hnsw"
VECTORS_SUFFIX = ".npy"
GRAPH_CHUNK = 16_384  # rows added to a graph at a time (64 MB of 1,024-dim vectors)
INSTALL_HINT = "pip install 'clibd[hnsw]' (needs a C++ compiler) for the faster graph search"

# hnswlib's saveIndex header (hnswalg.h): offsetLevel0_, max_elements_, cur_element_count,
# size_data_per_element_, label_offset_, offsetData_ (size_t), maxlevel_ (int), enterpoint_node_
# (unsigned int), maxM_, maxM0_, M_ (size_t), mult_ (double), ef_construction_ (size_t).
_HNSW_HEADER = np.dtype([("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"),
                         ("size_per_element", "<u8"), ("label_offset", "<u8"), ("offset_data", "<u8"),
                         ("max_level", "<i4"), ("entry_point", "<u4"), ("max_m", "<u8"), ("max_m0", "<u8"),
                         ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8")])


def _requested() -> str:
    """CLIBD_SEARCH, checked: ``auto`` (the default), ``exact`` or ``hnswlib``."""
    choice = os.environ.get("CLIBD_SEARCH", "auto").strip().lower()
    if choice not in ("auto", EXACT, HNSWLIB):
        raise ClibdError(f"CLIBD_SEARCH={choice!r}: use auto, exact or hnswlib.")
    return choice


def hnswlib_module():
    """The hnswlib module, or None where it is not installed (or CLIBD_SEARCH=exact)."""
    choice = _requested()
    if choice == EXACT:
        return None
    try:
        import hnswlib
    except ImportError:
        if choice == HNSWLIB:
            raise ClibdError(f"CLIBD_SEARCH=hnswlib but hnswlib is not installed: {INSTALL_HINT}.") from None
        return None
    return hnswlib


def exact_reason() -> str:
    """Why this machine searches exactly: for notes and output info."""
    if _requested() == EXACT:
        return "CLIBD_SEARCH=exact"
    return f"hnswlib is not installed; {INSTALL_HINT}"


def engine() -> str:
    """The engine new graphs are built with here: ``hnswlib`` or ``exact``."""
    return HNSWLIB if hnswlib_module() is not None else EXACT


def build_graph(vectors, threads: int | None, chunk: int = GRAPH_CHUNK):
    """An hnswlib inner-product graph over `vectors` (labels = row numbers).

    Vectors go in in a seeded random order: inserted sorted by taxonomy, as reference files usually
    are, the graph misses the true nearest neighbour of ~1 % of queries on clustered data.  They go
    in ``chunk`` rows at a time (the same order, so the same graph), so that no permuted copy of them
    all is made: `vectors` may be a :class:`SpilledVectors`, which reads only the rows asked for.
    """
    hnswlib = hnswlib_module()
    graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
    graph.init_index(max_elements=len(vectors), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=100)
    order = np.random.default_rng(0).permutation(len(vectors))
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        graph.add_items(vectors[rows], rows, num_threads=threads or -1)
    return graph


def _read_rows(path: Path, offsets: np.ndarray, dim: int) -> np.ndarray:
    """float32 rows of `dim` values read from `path` at byte `offsets`, one read each.

    Not through a memory map: faulting rows in maps the pages around each one too (read-around), so
    a few thousand scattered rows put most of the file in the resident set until it is unmapped
    (measured: +380 MB for 4,096 rows of a 430 MB graph).
    """
    out = np.empty((len(offsets), dim), dtype=np.float32)
    view, width = out.reshape(-1).view(np.uint8), 4 * dim
    with Path(path).open("rb", buffering=0) as fh:
        for i, offset in enumerate(offsets.tolist()):
            fh.seek(offset)
            if fh.readinto(view[i * width : (i + 1) * width]) != width:
                raise InputError(f"{path}: ends early (damaged). Rebuild the index.")
    return out


class SpilledVectors:
    """Vectors written to a raw float32 file and read back by row.

    While a graph is built its hnswlib copy grows to the size of the vectors; holding them in memory
    too would double the peak (4 kB per 1,024-dim k-mer profile).
    """

    def __init__(self, vectors: np.ndarray, path: Path) -> None:
        self.path = Path(path)
        self.shape = (len(vectors), vectors.shape[1])
        np.ascontiguousarray(vectors, dtype="<f4").tofile(self.path)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return _read_rows(self.path, np.asarray(rows, dtype=np.int64) * (4 * self.shape[1]), self.shape[1])


def load_graph(path: Path, dim: int):
    """An hnswlib graph from its file (the caller has checked the file's sha256: hnswlib crashes on damage)."""
    graph = hnswlib_module().Index(space="ip", dim=dim)
    try:
        graph.load_index(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be loaded ({exc}). Rebuild the index.") from exc
    return graph


def _hnsw_layout(path: Path, dim: int) -> tuple[int, int, int, int]:
    """(count, bytes per element, offset of the vector in an element, offset of its label) of an hnswlib
    graph file, checked against the file's size and `dim`; only the header is read."""
    path = Path(path)
    with path.open("rb") as fh:
        raw = np.frombuffer(fh.read(_HNSW_HEADER.itemsize), dtype=np.uint8)
    if len(raw) < _HNSW_HEADER.itemsize:
        raise InputError(f"{path}: is too short for an hnswlib graph. Rebuild the index.")
    head = raw.view(_HNSW_HEADER)[0]
    count, size = int(head["count"]), int(head["size_per_element"])
    offset_data, label_offset = int(head["offset_data"]), int(head["label_offset"])
    if label_offset - offset_data != 4 * dim or label_offset + 8 > size or \
            path.stat().st_size < _HNSW_HEADER.itemsize + count * size:
        raise InputError(f"{path}: is not an hnswlib graph of {dim}-dimensional vectors. Rebuild the index.")
    return count, size, offset_data, label_offset


def _hnsw_elements(path: Path, count: int, size: int, chunk: int):
    """The level-0 block of a graph file, ``chunk`` elements at a time (uint8 [n, size] each), each chunk mapped and
    unmapped once the caller has copied out what it needs: the whole file is never held, and a caller that needs
    only each element's 8 label bytes reads little more (2 s of `clibd match`'s start-up at a million references
    when chunks were read whole, 0.3 s mapped)."""
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        block = np.memmap(path, dtype=np.uint8, mode="r", offset=_HNSW_HEADER.itemsize + start * size, shape=(n, size))
        yield start, block
        del block


def _hnsw_slots(path: Path, dim: int, chunk: int = 8192) -> np.ndarray:
    """Where each label's element lies in a graph file's level-0 block (label j → slot), checked."""
    count, size, _, label_offset = _hnsw_layout(path, dim)
    labels = np.empty(count, dtype=np.int64)
    for start, block in _hnsw_elements(path, count, size, chunk):
        labels[start : start + len(block)] = block[:, label_offset : label_offset + 8].copy().view("<u8").ravel()
    if count and (labels.min() < 0 or labels.max() >= count or len(np.unique(labels)) != count):
        raise InputError(f"{path}: its labels are not 0..{count - 1}. Rebuild the index.")
    slots = np.empty(count, dtype=np.int64)
    slots[labels] = np.arange(count)
    return slots


def read_hnsw_vectors(path: Path, dim: int, chunk: int = 8192) -> np.ndarray:
    """The vectors an hnswlib graph file holds, by label, read with NumPy alone (no hnswlib needed).

    Each element of the level-0 block is [links | dim float32 | label (size_t)]; rows are returned in
    label order, so row j is what ``graph.get_items([j])`` gives.  Read a chunk at a time, so the
    peak is the vectors plus one chunk, not plus the whole file.
    """
    count, size, offset_data, label_offset = _hnsw_layout(path, dim)
    slots = _hnsw_slots(path, dim, chunk)
    labels = np.empty(count, dtype=np.int64)
    labels[slots] = np.arange(count)
    vectors = np.empty((count, dim), dtype=np.float32)
    for start, block in _hnsw_elements(path, count, size, chunk):
        vectors[labels[start : start + len(block)]] = block[:, offset_data:label_offset].copy().view("<f4")
    return vectors


class GraphRows:
    """Rows of the vectors an hnswlib graph file holds, read by label when asked for.

    Rescoring needs the ~32 candidate vectors of each query, not all of them: loading them all next
    to the graph, which holds them too, would double a large index's memory (4 kB per k-mer profile).
    hnswlib's ``get_items`` copies ~7k rows/s; these are read from the file by offset instead.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = Path(path), dim
        self.count, self.size, self.offset_data, self.label_offset = _hnsw_layout(path, dim)
        self.slots = _hnsw_slots(path, dim)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of labels `rows` (float32 [len(rows), dim])."""
        slots = self.slots[np.asarray(rows, dtype=np.int64)]
        return _read_rows(self.path, _HNSW_HEADER.itemsize + slots * self.size + self.offset_data, self.dim)


def save_vectors(vectors: np.ndarray, path: Path) -> None:
    """The exact engine's part file: the vectors as a float32 .npy (plain data, no pickle)."""
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)


def load_vectors(path: Path, dim: int) -> np.ndarray:
    """Vectors saved by :func:`save_vectors`, refusing anything that is not a float32 [n, dim] array."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as vectors ({exc}). Rebuild the index.") from exc
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"{path}: holds {vectors.dtype} {vectors.shape}, not float32 [n, {dim}]. "
                         "Rebuild the index.")
    return vectors


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 512,
              exclude: np.ndarray | None = None, columns: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine on normalised vectors); returns 0-based indices.

    `columns`, if given, maps each candidate to its row of `vectors` (records sharing a vector);
    `exclude` is then a boolean matrix [n_queries, n_candidates] of candidates to skip (used by
    leave-species-out calibration).  Ties are broken by the lower row, so results do not depend
    on how a partial sort happened to order equal values.
    """
    n = len(queries)
    labels = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk):
        block = queries[start : start + chunk] @ vectors.T
        if columns is not None:
            block = block[:, columns]
        if exclude is not None:
            block[exclude[start : start + chunk]] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < block.shape[1] else \
            np.tile(np.arange(block.shape[1]), (len(block), 1))
        top.sort(axis=1)
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        labels[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        sims[start : start + chunk] = np.take_along_axis(top_sims, order, axis=1)
    return labels, sims


def rescore(queries: np.ndarray, vectors: np.ndarray, labels: np.ndarray, chunk: int = 128,
            ) -> tuple[np.ndarray, np.ndarray]:
    """The cosines of found neighbours recomputed in float64, then ordered by (similarity, row).

    hnswlib's SIMD kernels and BLAS sum in different orders, so the same neighbour scored 0.49585 by
    one and 0.49586 by the other (a different printed score, perhaps a different call at a threshold).
    Recomputed here, a neighbour gets one score whichever engine — or processor — found it.
    """
    sims = np.empty(labels.shape, dtype=np.float32)
    for start in range(0, len(labels), chunk):
        rows = labels[start : start + chunk]
        # einsum casts to float64 as it goes (the same sums as over float64 copies, bit for bit, without the
        # copies: 64 MB per chunk of 128 queries × 64 neighbours; 1.6× faster)
        sims[start : start + chunk] = np.einsum("qd,qkd->qk", queries[start : start + chunk], vectors[rows],
                                                dtype=np.float64)
    order = np.lexsort((labels, -sims), axis=-1)
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(sims, order, axis=1)
