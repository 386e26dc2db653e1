"""The reference index: a directory a lab builds once and queries offline.

Layout (format version 4; format 3, one flat folder, is still read; 2 stored k-mer-cosine thresholds for
barcodes and is refused)::

    DIR/index.json       manifest: format version, metric, HNSW parameters, and one *part* per modality
                         (dna, image, text): its encoder description and fingerprint, calibrated
                         thresholds (per query modality; for barcode queries against barcodes they
                         are alignment identities), counts, part fingerprint; validated on load
                         against :class:`clibd_cli.manifests.IndexManifest`
    DIR/gen-N/records.sqlite  one row per reference record and modality (taxonomy, BIN, the embedded input:
                         barcode, image path or taxonomy text; source): the single source of truth for
                         metadata; `vector` is the graph label of its embedding in its modality's graph
    DIR/gen-N/<modality>.hnsw  hnswlib graph (inner product on L2-normalised vectors = cosine), one per
                         modality; it also holds the vectors, so nothing is stored twice, nor held
                         twice in memory (a search reads its candidates' rows from this file, and a
                         build makes the graph from a scratch file, not beside the array); built
                         without hnswlib, the part stores gen-N/<modality>.npy (the vectors) instead
                         and is searched exactly (:mod:`clibd_cli.search`: both open everywhere)
    DIR/gen-N/dna.words  barcodes only: the sampled 12-mers of every distinct barcode and the references that
                         hold each (:mod:`clibd_cli.anchors`), which propose candidates for reads under
                         500 bp; memory-mapped by `clibd match` (an index built before it was saved has
                         none, and builds it on first use)

A :class:`ReferenceIndex` object is one part (one modality).  A DNA-only index built with the k-mer
profile has just the ``dna`` part; an index built with a model bundle may hold barcodes, photos and
taxonomy strings as references in one embedding space, so a photo can be matched against barcodes.

Identical inputs share one vector: BOLD libraries hold the same haplotype many times (80,767 barcodes
are 38,291 distinct sequences in bold_insect_coi_dev), and HNSW graphs lose recall on exact duplicates.
A search finds the nearest distinct vectors and expands them to their records, which gives what a kNN
over all records would (ties included) at half the size.  Vectors are inserted in a seeded random
order: inserted sorted by taxonomy, as reference files usually are, the graph misses the true nearest
neighbour of ~1 % of queries on this clustered data.

Small indexes (≤ ``EXACT_MAX`` vectors) are searched exactly with a matrix product over the vectors
read back from the graph, which is both fast and exact there; ``exact=True`` forces it on any size,
and so does a machine without hnswlib.
Every write builds a new generation folder and then replaces index.json in one rename, under a lock
(:mod:`clibd_cli.indexdir`), so an interrupted build never leaves a half-written index behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from clibd_cli import __version__
from clibd_cli.align import CONVENTIONAL, base_codes
from clibd_cli.assign import LeadRule
from clibd_cli.atomic import read_json
from clibd_cli.checksums import MANIFEST_CHECKSUM, manifest_checksum, sha256_file
from clibd_cli.confine import confined
from clibd_cli.encoders import Encoder, encoder_from_description
from clibd_cli.errors import ClibdError, IndexMismatchError, InputError
from clibd_cli.indexdir import MANIFEST, clean, ignorable, new_generation, switch, writing
from clibd_cli.search import (
    GRAPH_SUFFIX,
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    HNSWLIB,
    VECTORS_SUFFIX,
    GraphRows,
    SpilledVectors,
    build_graph,
    engine,
    exact_knn,
    exact_reason,
    hnswlib_module,
    load_graph,
    load_vectors,
    read_hnsw_vectors,
    rescore,
    save_vectors,
)
from clibd_cli.sequences import RANKS, SequenceRecord, require_taxonomy

if TYPE_CHECKING:  # clibd_cli.manifests (pydantic) is imported when a manifest is first read
    from clibd_cli.manifests import IndexManifest, IndexPart
    from clibd_cli.match import ShortReads

FORMAT_VERSION = 4  # 4: generation folders (3: flat layout, still read); 3: barcode thresholds are identities
READABLE_VERSIONS = (3, 4)
GLOBAL_KEYS = ("format_version", "clibd_version", "metric", "hnsw", "records")
RECORDS_DB = "records.sqlite"
EXACT_MAX = 10_000
RESCORE_BLOCK = 128  # queries whose candidate rows are read and rescored at a time
LOOKUP_BLOCK = 500  # rowids per SQLite query (older SQLite builds allow 999 parameters)
WORDS_SUFFIX = ".words"  # a barcode part's 12-mer word table (clibd_cli.anchors)
INPUT_BLOCK = 8192  # barcodes encoded to base codes at a time (a joined copy of them all would be transient GBs)

_SCHEMA = """
CREATE TABLE records (
    rowid INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL,
    vector INTEGER NOT NULL,
    "order" TEXT NOT NULL DEFAULT '',
    family TEXT NOT NULL DEFAULT '',
    genus TEXT NOT NULL DEFAULT '',
    species TEXT NOT NULL DEFAULT '',
    bin TEXT NOT NULL DEFAULT '',
    modality TEXT NOT NULL DEFAULT 'dna',
    length INTEGER,
    flags TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    sequence TEXT,
    UNIQUE (record_id, modality)
);
"""


# One row per distinct vector of a part (its records share the barcode), in vector order.
_PER_VECTOR = "FROM records WHERE modality = ? GROUP BY vector ORDER BY vector"


class VectorFilter(Protocol):
    """Which distinct vectors a search may return: per vector (a graph search's filter) or as a mask (a scan)."""

    def __call__(self, vector: int) -> bool: ...

    def mask(self) -> np.ndarray: ...


@dataclass
class Labels:
    """In-memory taxonomy of every record (row i = SQLite rowid i + 1) and its vector."""

    record_id: np.ndarray
    ranks: dict[str, np.ndarray]
    bin: np.ndarray
    vector: np.ndarray  # record → row of the distinct-vector matrix

    def records_by_vector(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR layout (indptr, record rows) of the records sharing each vector, in record order."""
        order = np.argsort(self.vector, kind="stable")
        counts = np.bincount(self.vector, minlength=int(self.vector.max(initial=-1)) + 1)
        return np.r_[0, np.cumsum(counts)], order


@dataclass
class SearchResult:
    """k nearest references per query: labels (rowids, -1 where fewer than k exist) and cosines."""

    labels: np.ndarray
    similarities: np.ndarray


class ReferenceIndex:
    """Reference embeddings plus their metadata, searchable by cosine similarity."""

    def __init__(self, manifest: dict, labels: Labels, vectors: np.ndarray | None = None,
                 graph=None, path: Path | None = None) -> None:
        self.manifest = manifest  # the part's entry (plus the global keys) as a dict, as index.json holds it
        self._spec: IndexPart | None = None
        self.labels = labels
        self.path = path
        self._vectors = vectors
        self._graph = graph
        self._graph_lock = threading.Lock()  # a search's breadth is the graph's: set and searched under this lock
        self._rows: GraphRows | None = None
        self._stored = False  # True while the part's file on disk holds exactly these vectors
        self._csr: tuple[np.ndarray, np.ndarray] | None = None
        self._records: list[SequenceRecord] | None = None
        self._codes: dict[str, np.ndarray] | None = None
        self._taxa: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lineage_keys: np.ndarray | None = None
        self._inputs: list[str] | None = None
        self._input_codes: tuple[np.ndarray, np.ndarray] | None = None
        self._rowids: np.ndarray | None = None  # a saved index's SQLite rowid of each record row
        self._lookup: _InputLookup | None = None
        self.look_up_inputs = False
        """Read the barcodes :meth:`input_codes` is asked for from SQLite as they are asked for, instead of
        encoding every one first (a saved index only): for a run that touches few of them (`clibd match` of a
        few barcodes against a million references: 7 s of encoding saved)."""
        self._bins: dict[str, int] | None = None
        self._anchors = None
        self._spreads: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------------------------- facts
    @property
    def spec(self) -> IndexPart:
        """:attr:`manifest` typed (:class:`clibd_cli.manifests.IndexPart`): validated when the index was
        read, rebuilt after a change made through this class (change the manifest only that way)."""
        if self._spec is None:
            from clibd_cli.manifests import IndexPart

            self._spec = IndexPart.model_validate(self.manifest, strict=False)  # strict on reading index.json
        return self._spec

    @property
    def records_db(self) -> Path:
        """The SQLite file of a saved index (in its current generation folder)."""
        return _records_file(self.path, self.manifest)

    @property
    def size(self) -> int:
        return self.spec.counts.records

    @property
    def encoder_description(self) -> dict:
        return self.manifest["encoder"]

    @property
    def encoder_fingerprint(self) -> str:
        return self.spec.encoder.fingerprint

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def modality(self) -> str:
        return self.spec.encoder.modality

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.spec.thresholds)

    def thresholds_for(self, query_modality: str) -> dict[str, float] | None:
        """Calibrated thresholds for queries of ``query_modality`` (None if that pair was never calibrated).

        Cosines between modalities live on another scale than within one (a photo is never as close
        to a barcode as a barcode to its twin), so each query modality needs its own thresholds.
        """
        if query_modality == self.modality:
            return self.thresholds
        cross = self.spec.cross_thresholds.get(query_modality)
        return dict(cross.thresholds) if cross else None

    @property
    def leads(self) -> dict[str, LeadRule]:
        """The barcode part's lead rules, per rank that has one (:class:`clibd_cli.assign.LeadRule`)."""
        return _lead_rules(self.spec.leads)

    def short_read_thresholds(self) -> tuple[ShortReads, ...]:
        """The thresholds (and lead rules) for barcode queries with a short overlap, one set per window it was
        fitted on, shortest overlap first; () when none was fitted."""
        from clibd_cli.match import ShortReads

        return tuple(ShortReads(dict(s.thresholds), s.below_overlap, _lead_rules(s.leads), s.window)
                     for s in sorted(self.spec.short_read_sets, key=lambda s: s.below_overlap))

    def set_short_read_thresholds(self, sets: Sequence[tuple[ShortReads, dict]]) -> None:
        """Store short-read sets, each (thresholds and lead rules fitted on ``window`` bp stretches, for queries
        overlapping < ``below_overlap``; its calibration report)."""
        self.manifest["short_reads"] = [
            {"thresholds": {rank: float(short.thresholds[rank]) for rank in RANKS}, "calibration": calibration,
             "window": short.window, "below_overlap": short.below_overlap, **_leads_entry(short.leads)}
            for short, calibration in sets]
        self._spec = None

    def set_cross_thresholds(self, query_modality: str, thresholds: dict[str, float], calibration: dict) -> None:
        """Store thresholds calibrated for queries of another modality (written on the next save)."""
        self.manifest.setdefault("cross_thresholds", {})[query_modality] = {
            "thresholds": {rank: float(thresholds[rank]) for rank in RANKS}, "calibration": calibration}
        self._spec = None

    def encoder(self) -> Encoder:
        """The encoder this index was built with (weight-free encoders are rebuilt from the manifest)."""
        try:
            return encoder_from_description(self.encoder_description)
        except ValueError:
            where = self.path or "this index"
            raise ClibdError(f"{where}: built with model {self.spec.encoder.model!r}; pass that "
                             "model bundle with --model.") from None

    def encoder_defaults(self) -> dict[str, float]:
        """Default thresholds of the index's encoder (floors for calibration)."""
        return dict(self.spec.encoder.default_thresholds)

    def check_encoder(self, encoder: Encoder) -> None:
        """Refuse an encoder whose embedding space differs from the index's."""
        if encoder.fingerprint != self.encoder_fingerprint:
            where = self.path or "the reference"
            raise IndexMismatchError(
                f"{where}: index was built with encoder {self.spec.encoder.name} "
                f"(fingerprint {self.encoder_fingerprint}) but the queries use {encoder.name} "
                f"(fingerprint {encoder.fingerprint}). Rebuild the index with the same encoder/model.")

    @property
    def search_engine(self) -> str:
        """What answers :meth:`search` beyond ``EXACT_MAX`` vectors: ``hnswlib`` or ``exact``."""
        return HNSWLIB if self._graph is not None else "exact"

    def search_description(self) -> str:
        """One line for output ``info`` and notes: which search this index gets here, and why."""
        n_vectors = self.spec.counts.vectors
        if self._graph is not None:
            if n_vectors <= EXACT_MAX:
                return f"exact ({n_vectors:,} distinct vectors ≤ {EXACT_MAX:,}; hnswlib graph beyond)"
            return f"hnswlib HNSW graph (M {HNSW_M}, ef_search ≥ {HNSW_EF_SEARCH})"
        if (self.spec.file or "").endswith(VECTORS_SUFFIX):
            return "exact (index built without hnswlib; rebuild it with --force where hnswlib is installed)"
        if self.path is None:
            return "exact (in-memory reference)"
        return f"exact ({exact_reason()})"

    def vectors(self) -> np.ndarray:
        """The distinct reference vectors (row j ↔ graph label j), loaded on first use."""
        if self._vectors is None:
            if self._stored:  # NumPy reads the graph file ~10x faster than hnswlib's get_items
                self._vectors = read_hnsw_vectors(_part_file(self.path, self.manifest), self._graph.dim)
            else:
                count = self._graph.get_current_count()
                self._vectors = np.ascontiguousarray(self._graph.get_items(np.arange(count), return_type="numpy"),
                                                     dtype=np.float32)
        return self._vectors

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Some rows of :meth:`vectors`, without loading all of them.

        A saved graph's rows are read from its file by offset (:class:`clibd_cli.search.GraphRows`):
        searching never loads the vectors next to the graph that holds them already.
        """
        if self._vectors is not None or self._graph is None:
            return self.vectors()[rows]
        if self._stored:
            if self._rows is None:
                self._rows = GraphRows(_part_file(self.path, self.manifest), self._graph.dim)
            return self._rows(rows)
        if not len(rows):
            return np.empty((0, self._graph.dim), dtype=np.float32)
        return np.asarray(self._graph.get_items(np.asarray(rows), return_type="numpy"), dtype=np.float32)

    # ---------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, exact: bool | None = None,
               threads: int | None = None) -> SearchResult:
        """k nearest reference records of each query embedding by cosine similarity.

        Labels are record rowids (1-based), -1 where the index holds fewer than k records.
        """
        vec_labels, vec_sims = self.search_vectors(queries, k, exact=exact, threads=threads)
        return self._expand(vec_labels, vec_sims, k)

    def search_vectors(self, queries: np.ndarray, k: int, exact: bool | None = None,
                       threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest *distinct* reference vectors (0-based rows of :meth:`vectors`) and their cosines."""
        n_vectors = self.spec.counts.vectors
        k_vec = min(k, n_vectors)
        if exact is None:
            exact = self._graph is None or n_vectors <= EXACT_MAX
        if exact:
            vec_labels = exact_knn(queries, self.vectors(), k_vec)[0]
        else:
            with self._graph_lock:
                self._graph.set_ef(max(HNSW_EF_SEARCH, 2 * k_vec))
                vec_labels = self._graph.knn_query(queries, k=k_vec, num_threads=threads or -1)[0].astype(np.int64)
        # Rescored over the candidates' rows only, read per block of queries (a few MB); np.unique keeps the
        # rows' order, so ties break as over all rows, and blocks are rescore's own chunks: the same scores.
        queries = np.asarray(queries, dtype=np.float32)
        labels, sims = np.empty_like(vec_labels), np.empty(vec_labels.shape, dtype=np.float32)
        for start in range(0, len(vec_labels), RESCORE_BLOCK):
            block = vec_labels[start : start + RESCORE_BLOCK]
            found, local = np.unique(block, return_inverse=True)
            local_labels, block_sims = rescore(queries[start : start + RESCORE_BLOCK], self.vectors_of(found),
                                               local.reshape(block.shape), chunk=RESCORE_BLOCK)
            labels[start : start + RESCORE_BLOCK], sims[start : start + RESCORE_BLOCK] = found[local_labels], block_sims
        return labels, sims

    def search_allowed(self, query: np.ndarray, k: int, allowed: VectorFilter, ef: int = HNSW_EF_SEARCH,
                       ) -> np.ndarray:
        """The k distinct vectors (rows of :meth:`vectors`) nearest one query embedding among those ``allowed``
        lets through (fewer where fewer are allowed): the graph searched with ``allowed`` as its filter beyond
        ``EXACT_MAX`` vectors (breadth ``ef``), else (or where the search found fewer than k) an exact scan of
        ``allowed.mask()``."""
        query = np.asarray(query, dtype=np.float32)
        if self._graph is not None and self.spec.counts.vectors > EXACT_MAX:
            try:
                with self._graph_lock:
                    self._graph.set_ef(max(ef, k))
                    return self._graph.knn_query(query[None], k=k, num_threads=1, filter=allowed)[0][0].astype(np.int64)
            except RuntimeError:  # fewer than k allowed, or the filter cut the graph where the search went: scan
                pass
        rows = np.flatnonzero(allowed.mask())
        k = min(k, len(rows))
        if k == 0:
            return np.empty(0, dtype=np.int64)
        scores = np.concatenate([self.vectors_of(rows[i : i + INPUT_BLOCK]) @ query
                                 for i in range(0, len(rows), INPUT_BLOCK)])
        top = np.argpartition(-scores, k - 1)[:k]
        return rows[top[np.argsort(-scores[top], kind="stable")]]

    def members(self, vector: int) -> np.ndarray:
        """Record rows (0-based) that share distinct vector ``vector``, in record order."""
        indptr, members = self._members()
        return members[indptr[vector] : indptr[vector + 1]]

    def taxa(self, vector: int, keep: Callable[[np.ndarray], np.ndarray] | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """The taxa behind distinct vector ``vector``: for each lineage (as far as it is known) the first record
        of it, in record order, and how many records of it share the vector; ``keep`` (a mask of record rows)
        leaves records out, as leave-out calibration does.

        A barcode shared by 20 records of one species and 10 of another is two taxa of 20 and 10 records:
        what the vote weighs and a call's lead is measured against (:func:`clibd_cli.match.verified_hits`)
        without expanding a haplotype shared by hundreds of records.  Computed for every vector at once, on
        first use; regrouped only for a vector that lost records to ``keep``."""
        if keep is not None:
            members = self.members(vector)
            kept = keep(members)
            if not kept.all():
                members = members[kept]
                _, first, counts = np.unique(self._lineage_key()[members], return_index=True, return_counts=True)
                by_row = np.argsort(first)
                return members[first[by_row]], counts[by_row]
        if self._taxa is None:
            vector_of = self.labels.vector
            rows = np.arange(len(vector_of))
            key = self._lineage_key()
            order = np.lexsort((rows, key, vector_of))
            v, k = vector_of[order], key[order]
            starts = np.flatnonzero(np.r_[True, (v[1:] != v[:-1]) | (k[1:] != k[:-1])]) if len(order) else order
            counts = np.diff(np.r_[starts, len(order)])
            reps = order[starts]
            by_row = np.lexsort((reps, vector_of[reps]))  # within a vector, in record order
            reps, counts = reps[by_row], counts[by_row]
            indptr = np.searchsorted(vector_of[reps], np.arange(len(self._members()[0])))
            self._taxa = (indptr, reps, counts)
        indptr, reps, counts = self._taxa
        return reps[indptr[vector] : indptr[vector + 1]], counts[indptr[vector] : indptr[vector + 1]]

    def _lineage_key(self) -> np.ndarray:
        """An integer per record naming its lineage down to its deepest known rank (records of one species share
        it; a record known only to genus shares it with the others known only to that genus)."""
        if self._lineage_keys is None:
            codes = self.lineage_codes()
            key = np.full(len(self.labels.vector), -1, dtype=np.int64)
            for depth, rank in enumerate(RANKS, start=1):
                known = codes[rank] >= 0
                key[known] = codes[rank][known] * (len(RANKS) + 1) + depth
            self._lineage_keys = key
        return self._lineage_keys

    def vector_inputs(self) -> list[str]:
        """The embedded input behind each distinct vector (a barcode for DNA parts), in vector order.

        Barcodes are what calibration aligns; they are read once from SQLite and kept.
        """
        if self._inputs is None:
            if self._records is not None:
                first: dict[int, str] = {}
                for record, j in zip(self._records, self.labels.vector, strict=True):
                    first.setdefault(int(j), record.sequence)
                inputs = [first.get(j, "") for j in range(max(first, default=-1) + 1)]
            else:
                with _connect(self.records_db) as db:
                    rows = db.execute(f"SELECT vector, sequence {_PER_VECTOR}", (self.modality,)).fetchall()
                inputs = [""] * (rows[-1][0] + 1 if rows else 0)
                for j, sequence in rows:
                    inputs[j] = sequence or ""
            self._inputs = inputs
        return self._inputs

    def input_codes(self, vectors: Sequence[int]) -> list[np.ndarray]:
        """:meth:`vector_inputs` of some vectors as base codes (0-3, N = 4), encoded once for the whole index.

        One byte per base in one buffer: alignment verification looks up ~64 barcodes per query.  With
        :attr:`look_up_inputs` set (and no buffer built yet), only these vectors' barcodes are read and encoded.
        """
        if self._input_codes is None and self.look_up_inputs and self._rowids is not None:
            if self._lookup is None or self._lookup.pid != os.getpid():  # a connection must not cross a fork
                self._lookup = _InputLookup(self.records_db)
            indptr, members = self._members()  # a vector's first record: its records share the barcode
            vectors = np.asarray(vectors, dtype=np.int64)
            return self._lookup.codes(vectors, self._rowids[members[indptr[vectors]]])
        bases, offsets = self._encoded_inputs()
        return [bases[offsets[v] : offsets[v + 1]] for v in vectors]

    def _encoded_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct vector's barcode as base codes in one buffer, and the offsets of each, built on first use.

        A saved index's barcodes are encoded straight from SQLite, :data:`INPUT_BLOCK` at a time, never all held as
        text: `clibd match` needs only the codes, and a million barcodes as Python strings take ~0.7 GB, which the
        allocator keeps once freed.  (Its lengths are read first; the records of a vector share its barcode.)
        """
        if self._input_codes is None:
            if self._inputs is not None or self._records is not None:
                inputs = self.vector_inputs()
                lengths = np.fromiter(map(len, inputs), dtype=np.int64, count=len(inputs))
                self._input_codes = _encoded(lengths, (inputs[i : i + INPUT_BLOCK]
                                                       for i in range(0, len(inputs), INPUT_BLOCK)))
            else:
                self._input_codes = _codes_from_db(self.records_db, self.modality)
        return self._input_codes

    def anchors(self):
        """The exact 12-mer table of the distinct barcodes (:mod:`clibd_cli.anchors`): mapped from the saved index
        (its checksum checked first), or built on first use where it holds none (built before the table was saved,
        or not saved yet)."""
        if self._anchors is None:
            from clibd_cli.anchors import AnchorTable

            path = self._words_file()
            if path is not None:
                try:
                    self._anchors = AnchorTable.load(path, self.spec.counts.vectors)
                except ValueError as exc:
                    raise InputError(f"{exc}. Rebuild the index.") from None
            else:
                self._anchors = AnchorTable(*self._encoded_inputs())
        return self._anchors

    def _words_file(self) -> Path | None:
        """The saved word table, its checksum checked; None where the index holds none for these records."""
        if not (self._stored and self.path is not None and self.manifest.get("words")):
            return None
        path = confined(self.path, self.manifest["words"], manifest=MANIFEST, what="index", remedy="Rebuild the index.")
        if not path.exists():
            raise InputError(f"{self.path}: {self.manifest['words']} is missing. Rebuild the index.")
        _verify(path, self.manifest.get("words_sha256"), self.path)
        return path

    def species_per_bin(self) -> dict[str, int]:
        """How many species of the reference each BIN holds (BINs shared by species are a warning sign)."""
        if self._bins is None:
            pairs = {(b, s) for b, s in zip(self.labels.bin, self.labels.ranks["species"], strict=True) if b and s}
            counts: dict[str, int] = {}
            for bin_uri, _ in pairs:
                counts[bin_uri] = counts.get(bin_uri, 0) + 1
            self._bins = counts
        return self._bins

    def _expand(self, vec_labels: np.ndarray, vec_sims: np.ndarray, k: int) -> SearchResult:
        """Distinct-vector hits → the first k records behind them, in similarity order."""
        indptr, members = self._members()
        labels = np.full((len(vec_labels), k), -1, dtype=np.int64)
        sims = np.full((len(vec_labels), k), -np.inf, dtype=np.float32)
        for i, (row, row_sims) in enumerate(zip(vec_labels, vec_sims, strict=True)):
            filled = 0
            for vec, sim in zip(row, row_sims, strict=True):
                take = members[indptr[vec] : indptr[vec + 1]][: k - filled]
                labels[i, filled : filled + len(take)] = take + 1
                sims[i, filled : filled + len(take)] = sim
                filled += len(take)
                if filled == k:
                    break
        return SearchResult(labels, sims)

    def _members(self) -> tuple[np.ndarray, np.ndarray]:
        if self._csr is None:
            self._csr = self.labels.records_by_vector()
        return self._csr

    def lineage_codes(self) -> dict[str, np.ndarray]:
        """:func:`clibd_cli.assign.lineage_codes` of every record (row i = rowid i + 1), computed once."""
        if self._codes is None:
            from clibd_cli.assign import lineage_codes

            self._codes = lineage_codes(self.labels.ranks)
        return self._codes

    def lineage_name(self, row: int, rank: str) -> str:
        """Record ``row``'s lineage down to ``rank`` as text (``order|family|genus``): a taxon's name that two
        homonyms in different families do not share, as stored spreads are keyed."""
        return "|".join(str(self.labels.ranks[r][row]) for r in RANKS[: RANKS.index(rank) + 1])

    def spreads(self, rank: str) -> np.ndarray:
        """Per lineage code at ``rank`` (:meth:`lineage_codes`), the taxon's spread (:meth:`set_spreads`); +inf
        where none is stored (a taxon of one member one rank below, or an index built before spreads)."""
        if rank not in self._spreads:
            codes = self.lineage_codes()[rank]
            table = np.full(int(codes.max()) + 1 if len(codes) else 0, np.inf)
            stored = self.spec.spreads.get(rank, {})
            if stored:
                found, first = np.unique(codes, return_index=True)
                for code, row in zip(found.tolist(), first.tolist(), strict=True):
                    if code >= 0:
                        table[code] = stored.get(self.lineage_name(row, rank), np.inf)
            self._spreads[rank] = table
        return self._spreads[rank]

    def set_spreads(self, spreads: Mapping[str, Mapping[str, float]]) -> None:
        """Store each taxon's spread per rank (lineage name → identity; written on the next save)."""
        self.manifest["spreads"] = {rank: {name: round(float(v), 6) for name, v in sorted(table.items())}
                                    for rank, table in spreads.items()}
        self._spec = None
        self._spreads = {}

    def lineage_codes_of(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`lineage_codes` of the records behind a label matrix (-1 for none)."""
        idx = np.where(labels > 0, labels - 1, 0)
        return {rank: np.where(labels > 0, codes[idx], -1) for rank, codes in self.lineage_codes().items()}

    def taxonomy_of(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of rank labels for a label matrix ('' where the label is -1)."""
        idx = np.where(labels > 0, labels - 1, 0)
        out = {}
        for rank in RANKS:
            values = self.labels.ranks[rank][idx]
            out[rank] = np.where(labels > 0, values, "")
        return out

    # ------------------------------------------------------------------------------- building
    @classmethod
    def from_records(cls, records: Sequence[SequenceRecord], encoder: Encoder, *, batch_size: int = 2048,
                     progress=None, what: str = "the reference") -> ReferenceIndex:
        """Embed `records` and keep everything in memory (exact search); nothing is written."""
        require_taxonomy(list(records), what)
        return cls._assemble(list(records), encoder, np.empty((0, encoder.dim), np.float32), {},
                             _new_manifest(encoder), batch_size, progress)

    @classmethod
    def _assemble(cls, records: list[SequenceRecord], encoder: Encoder, vectors: np.ndarray,
                  vector_of_input: dict[str, int], manifest: dict, batch_size: int, progress,
                  path: Path | None = None) -> ReferenceIndex:
        """Embed the inputs not seen yet (one vector per distinct input) and build the in-memory index."""
        vector_of_input = dict(vector_of_input)
        fresh: list[str] = []
        vector = np.empty(len(records), dtype=np.int64)
        for i, record in enumerate(records):
            j = vector_of_input.get(record.sequence)
            if j is None:
                j = vector_of_input[record.sequence] = len(vectors) + len(fresh)
                fresh.append(record.sequence)
            vector[i] = j
        if fresh:  # (concatenating onto nothing would copy them all: 4 kB per k-mer profile)
            embedded = _embed(encoder, fresh, batch_size, progress)
            vectors = np.concatenate([vectors, embedded]) if len(vectors) else embedded
            del embedded
        manifest = {**manifest, "counts": _counts(records, len(vectors)),
                    "fingerprint": _index_fingerprint(encoder.fingerprint, [r.id for r in records])}
        index = cls(manifest, _labels_from_records(records, vector), vectors=vectors, path=path)
        index._records = records
        return index

    def records(self) -> list[SequenceRecord]:
        """Every reference record (read from SQLite for a saved index)."""
        if self._records is not None:
            return self._records
        return _read_records(self.records_db, self.modality)

    def save(self, directory: Path, *, force: bool = False, threads: int | None = None) -> Path:
        """Write the index atomically to `directory` (an existing one needs `force`).

        Other modalities already stored in `directory` (when this part replaces or extends one
        modality of it) are kept.
        """
        directory = Path(directory)
        others = []
        if (directory / MANIFEST).exists() and (force or directory == self.path):
            others = [ReferenceIndex.load(directory, m) for m in index_modalities(directory) if m != self.modality]
        return save_parts([self, *others], directory, force=force, threads=threads)

    def appended(self, records: Sequence[SequenceRecord], encoder: Encoder, *, batch_size: int = 2048,
                 progress=None) -> ReferenceIndex:
        """A new in-memory index holding this one's records plus `records`."""
        self.check_encoder(encoder)
        existing = self.records()
        taken = {r.id: r.source for r in existing}
        for record in records:
            if record.id in taken:
                raise InputError(f"{record.source}: id {record.id!r} is already in the index "
                                 f"(from {taken[record.id]}). Ids must be unique.")
        known = {r.sequence: int(j) for r, j in zip(existing, self.labels.vector, strict=True)}
        return self._assemble([*existing, *records], encoder, self.vectors(), known, self.manifest,
                              batch_size, progress, path=self.path)

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, directory: Path, modality: str | None = None) -> ReferenceIndex:
        """Open one modality of a saved index (default: dna, or the only one), checking format and files."""
        directory = Path(directory)
        stored, typed = _read_manifest(directory)
        parts = typed.parts
        if modality is None:
            modality = "dna" if "dna" in parts or len(parts) != 1 else next(iter(parts))
        if modality not in parts:
            raise InputError(f"{directory}: holds no {modality} references (it has: {', '.join(parts) or 'none'}). "
                             f"Add them with 'clibd build-index --append'.")
        part = parts[modality]
        manifest = {**{k: stored[k] for k in GLOBAL_KEYS if k in stored}, **stored["parts"][modality]}
        records, file = _records_file(directory, manifest), _part_file(directory, manifest)
        # The search file (most of an index's bytes) is hashed while SQLite is read: file reads and hashlib leave
        # the interpreter lock (3.5 s of a million references' start-up).  hnswlib crashes on a damaged file, so it
        # reads the file only once the sum is checked.
        with ThreadPoolExecutor(1) as hashing:
            digest = hashing.submit(sha256_file, file) if part.sha256 is not None and file.exists() else None
            _verify(records, typed.records_sha256, directory)
            labels, rowids = _labels_from_db(records, modality)
            if len(labels.record_id) != part.counts.records:
                raise InputError(f"{directory}: records.sqlite has {len(labels.record_id)} {modality} rows but the "
                                 f"manifest says {part.counts.records}. Rebuild the index.")
            if not file.exists():
                raise InputError(f"{directory}: {part.file} is missing. Rebuild the index.")
            _verify(file, part.sha256, directory, digest.result() if digest is not None else None)
        dim = part.encoder.dim
        graph = vectors = None
        if file.suffix == VECTORS_SUFFIX:
            vectors = load_vectors(file, dim)
        elif hnswlib_module() is not None:
            graph = load_graph(file, dim)
        else:
            vectors = read_hnsw_vectors(file, dim)
        count = graph.get_current_count() if graph is not None else len(vectors)
        if count != part.counts.vectors:
            raise InputError(f"{file}: holds {count} vectors but the manifest says "
                             f"{part.counts.vectors}. Rebuild the index.")
        index = cls(manifest, labels, vectors=vectors, graph=graph, path=directory)
        index._stored = True
        index._rowids = rowids
        index._spec = part
        return index

    def set_thresholds(self, thresholds: dict[str, float], calibration: dict,
                       leads: Mapping[str, LeadRule] | None = None) -> None:
        """Store calibrated thresholds (and the lead rules calibrated with them, replacing any earlier ones) in the
        manifest (written on the next save)."""
        self.manifest["thresholds"] = {rank: float(thresholds[rank]) for rank in RANKS}
        self.manifest["calibration"] = calibration
        self.manifest.pop("leads", None)
        self.manifest.update(_leads_entry(leads))
        self._spec = None

    def save_manifest(self) -> None:
        """Rewrite only this part's entry in index.json (atomically, under the write lock), e.g. after
        calibration.  Refused if another writer replaced the part since it was loaded: the entry would
        describe records the index no longer holds."""
        with writing(self.path):
            stored, typed = _read_manifest(self.path)
            current = typed.parts.get(self.modality)
            if current is None or current.file != self.spec.file or current.counts != self.spec.counts:
                raise ClibdError(f"{self.path}: the index changed while this command ran (another build-index "
                                 "--append?); run it again.")
            stored["parts"][self.modality] = _part_entry(self.manifest)
            switch(self.path, stored)


# ------------------------------------------------------------------------------- whole index

def _leads_entry(leads: Mapping[str, LeadRule] | None) -> dict:
    """``{"leads": …}`` for a manifest where any rank has a lead rule, else nothing (older readers see no
    change)."""
    kept = {rank: leads[rank].as_info(6) for rank in RANKS if leads and rank in leads}
    return {"leads": kept} if kept else {}


def _lead_rules(stored: Mapping) -> dict[str, LeadRule]:
    """Stored lead rules (manifest models) as :class:`clibd_cli.assign.LeadRule`."""
    return {rank: LeadRule(rule.lead, rule.threshold, rule.within_spread) for rank, rule in stored.items()}


def index_modalities(directory: Path) -> list[str]:
    """The modalities (parts) a saved index holds."""
    return list(_read_manifest(Path(directory))[1].parts)


def _read_manifest(directory: Path) -> tuple[dict, IndexManifest]:
    """index.json as read (the dict written back on a change) and validated
    (:class:`clibd_cli.manifests.IndexManifest`), after its format version and checksum are checked."""
    from clibd_cli.manifests import IndexManifest, validated

    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise InputError(f"{directory}: not a clibd index (no {MANIFEST}). Build one with 'clibd build-index'.")
    manifest = read_json(manifest_path, InputError, "Rebuild the index.")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), dict):
        raise InputError(f"{manifest_path}: is not a clibd index manifest (no 'parts'). Rebuild the index.")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise InputError(f"{directory}: index format version {version}, this clibd reads "
                         f"{FORMAT_VERSION}. Rebuild the index with this version.")
    if version >= 4 and manifest.get(MANIFEST_CHECKSUM) != manifest_checksum(manifest):
        raise InputError(f"{manifest_path}: was modified by hand (its {MANIFEST_CHECKSUM} does not match its "
                         "content), so its thresholds and counts cannot be trusted. Change thresholds with "
                         "'clibd calibrate' or --threshold; otherwise rebuild the index.")
    return manifest, validated(IndexManifest, manifest, path=manifest_path, remedy="Rebuild the index.")


def _previous_manifest(directory: Path) -> dict | None:
    """The manifest a write replaces, read leniently: `--force` must be able to replace a damaged or
    hand-edited index (whose generations it then cleans up), which loading it would refuse."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("parts"), dict) else None


def _verify(path: Path, expected: str | None, directory: Path, digest: str | None = None) -> None:
    """Refuse a data file whose sha256 (``digest``, if computed already) differs from the manifest's (format 3
    indexes have none)."""
    if expected is not None and path.exists() and (digest or sha256_file(path)) != expected:
        raise InputError(f"{path}: does not match the checksum in {directory / MANIFEST} (damaged, or copied "
                         "from another index). Rebuild the index.")


def _part_file(directory: Path, manifest: dict) -> Path:
    """A part's graph file, which must lie inside the index folder (an edited index.json could name any file)."""
    return confined(directory, manifest.get("file"), manifest=MANIFEST, what="index", remedy="Rebuild the index.")


def _records_file(directory: Path, manifest: dict) -> Path:
    """The records database an index manifest names (format 3: records.sqlite beside it), inside the folder."""
    return confined(directory, manifest.get("records", RECORDS_DB), manifest=MANIFEST, what="index",
                    remedy="Rebuild the index.")


def _part_entry(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in GLOBAL_KEYS}


def save_parts(parts: Sequence[ReferenceIndex], directory: Path, *, force: bool = False,
               threads: int | None = None) -> Path:
    """Write one index holding several modalities (one part each) atomically to `directory`."""
    directory = Path(directory)
    modalities = [part.modality for part in parts]
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"two parts of one modality: {modalities}")
    spaces = {part.encoder_fingerprint for part in parts}
    if len(spaces) > 1:
        raise IndexMismatchError("the parts of one index must share one embedding space (one model bundle).")
    with writing(directory):
        occupied = directory.exists() and any(not ignorable(p.name) for p in directory.iterdir())
        if occupied and not force and all(directory != part.path for part in parts):
            raise ClibdError(f"{directory}: already exists. Use --force to replace it or --append to add to it.")
        previous = _previous_manifest(directory)
        if occupied and previous is None:
            raise ClibdError(f"{directory}: exists and is not a clibd index; refusing to replace it.")
        with new_generation(directory) as (generation, tmp):
            stored: dict = {k: parts[0].manifest[k] for k in GLOBAL_KEYS if k in parts[0].manifest}
            stored.update(format_version=FORMAT_VERSION, records=f"{generation}/{RECORDS_DB}", parts={})
            db = _create_db(tmp / RECORDS_DB)
            try:
                for part in parts:
                    _write_records(db, part.records(), part.labels.vector, part.modality)
                db.execute("CREATE INDEX records_species ON records (species)")
                db.commit()
            finally:
                db.close()
            stored["records_sha256"] = sha256_file(tmp / RECORDS_DB)
            for part in parts:
                words = part.modality + WORDS_SUFFIX if part.modality == "dna" else None
                if part._stored and part.path is not None:  # loaded and unchanged: keep its files
                    filename = Path(part.manifest["file"]).name
                    shutil.copyfile(_part_file(part.path, part.manifest), tmp / filename)
                    saved = part._words_file() if words is not None else None
                    if saved is not None:
                        shutil.copyfile(saved, tmp / words)
                    elif words is not None:
                        _save_words(part, tmp, words)
                elif engine() == HNSWLIB:
                    filename = part.modality + GRAPH_SUFFIX
                    _save_graph(part, tmp, filename, threads, words)
                else:
                    filename = part.modality + VECTORS_SUFFIX
                    save_vectors(part.vectors(), tmp / filename)
                    if words is not None:
                        _save_words(part, tmp, words)
                part.manifest.update(file=f"{generation}/{filename}", records=stored["records"],
                                     search=HNSWLIB if filename.endswith(GRAPH_SUFFIX) else "exact",
                                     format_version=FORMAT_VERSION, sha256=sha256_file(tmp / filename))
                if words is not None:
                    part.manifest.update(words=f"{generation}/{words}", words_sha256=sha256_file(tmp / words))
                part._spec = None
                stored["parts"][part.modality] = _part_entry(part.manifest)
        switch(directory, stored)
        keep = {generation}
        legacy: set[str] = set()
        if previous is not None:
            old = previous.get("records", RECORDS_DB)
            if "/" in old:  # keep the previous generation for readers that opened it a moment ago
                keep.add(old.split("/")[0])
            else:  # a format-3 (flat) index: its files are replaced by the generation
                legacy = {RECORDS_DB, *(p.get("file", "") for p in previous["parts"].values())}
        clean(directory, keep, legacy)
    for part in parts:
        part.path = directory
        part._rows = None
        if part._graph is not None:  # its graph file holds exactly its vectors (built or copied just now)
            part._stored = True
    return directory


# ------------------------------------------------------------------------------------ helpers

def _save_graph(part: ReferenceIndex, folder: Path, filename: str, threads: int | None,
                words: str | None = None) -> None:
    """Build and save a part's graph (and its word table as ``words``) without its vectors and records in memory
    beside it.

    The graph holds a copy of every vector; keeping the array too would double the peak of a large
    build (and the records, written to ``folder``'s SQLite already, add ~1.6 kB per barcode).  So the
    vectors go to a scratch file in the new generation, the array, the records and the lookup tables
    made from them are dropped, the word table is written then (its transient pairs beside neither the
    array nor the graph), and the graph is built from the file a chunk at a time.  Afterwards the
    part reads its rows from the graph file and its records from SQLite, like a loaded index: the same
    values.  If the build fails, both are read back, so the part is as it was.
    """
    spill = SpilledVectors(part.vectors(), folder / (filename + ".vectors"))
    codes = part._input_codes
    part._vectors = part._records = part._inputs = part._input_codes = part._anchors = None
    try:
        if words is not None:
            _save_words(part, folder, words, codes)
        del codes
        graph = build_graph(spill, threads)
    except BaseException:
        part._vectors = np.fromfile(spill.path, dtype="<f4").reshape(spill.shape)
        part._records = _read_records(folder / RECORDS_DB, part.modality)
        raise
    finally:
        spill.path.unlink()
    graph.save_index(str(folder / filename))
    part._graph = graph


def _save_words(part: ReferenceIndex, folder: Path, name: str,
                codes: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write the part's word table (:class:`clibd_cli.anchors.AnchorTable`) as ``folder/name``: from its barcodes'
    ``codes`` when given, else encoded from ``folder``'s records database, which holds them (a part about to be
    saved may hold its records no more)."""
    from clibd_cli.anchors import AnchorTable

    if codes is None:
        codes = part._input_codes if part._input_codes is not None else _codes_from_db(folder / RECORDS_DB,
                                                                                         part.modality)
    AnchorTable(*codes).save(folder / name)


def _embed(encoder: Encoder, items: list[str], batch_size: int, progress) -> np.ndarray:
    out = np.empty((len(items), encoder.dim), dtype=np.float32)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        out[start : start + len(batch)] = encoder.encode(batch)
        if progress is not None:
            progress(len(batch))
    return out


def _new_manifest(encoder: Encoder) -> dict:
    description = encoder.describe()
    defaults = dict(getattr(encoder, "default_thresholds", {}))
    return {
        "format_version": FORMAT_VERSION,
        "clibd_version": __version__,
        "encoder": {**description, "fingerprint": encoder.fingerprint, "default_thresholds": defaults},
        "metric": "cosine",
        "hnsw": {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH,
                 "exact_max": EXACT_MAX},
        # Barcodes are called on alignment identity: until calibrated, the conventional cut-offs apply.
        "thresholds": dict(CONVENTIONAL) if encoder.modality == "dna" else defaults,
        "calibration": {"method": "conventional identity cut-offs" if encoder.modality == "dna"
                        else "encoder default"},
    }


def _counts(records: Sequence[SequenceRecord], n_vectors: int) -> dict[str, int]:
    return {"records": len(records), "vectors": n_vectors,
            **{rank: len({r.label(rank) for r in records} - {""}) for rank in RANKS}}


def _index_fingerprint(encoder_fingerprint: str, ids: Sequence[str]) -> str:
    digest = hashlib.sha256(encoder_fingerprint.encode())
    for record_id in ids:
        digest.update(b"\0" + record_id.encode())
    return digest.hexdigest()[:16]


def _shared(values) -> np.ndarray:
    """An object array of `values` holding each distinct string once.

    A taxon's name repeats for every record of it; held once per record, the names of a million
    references take ~300 MB, held once per taxon a pointer each (8 bytes).
    """
    seen: dict[str, str] = {}
    return np.array([seen.setdefault(v, v) for v in values], dtype=object)


def _labels_from_records(records: Sequence[SequenceRecord], vector: np.ndarray) -> Labels:
    return Labels(np.array([r.id for r in records], dtype=object),
                  {rank: _shared(r.label(rank) for r in records) for rank in RANKS},
                  _shared(r.bin for r in records), vector)


def _connect(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    if not path.exists():
        raise InputError(f"{path}: missing. Rebuild the index.")
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        raise InputError(f"{path}: cannot be opened ({exc}). Rebuild the index.") from exc


def _codes_from_db(path: Path, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct vector's barcode in a records database as base codes in one buffer, and their offsets,
    encoded :data:`INPUT_BLOCK` at a time (lengths read first)."""
    with _connect(path) as db:
        sizes = db.execute(f"SELECT vector, length(sequence) {_PER_VECTOR}", (modality,)).fetchall()
        lengths = np.zeros(sizes[-1][0] + 1 if sizes else 0, dtype=np.int64)
        for j, size in sizes:
            lengths[j] = size or 0
        cursor = db.execute(f"SELECT sequence {_PER_VECTOR}", (modality,))
        return _encoded(lengths, ([s or "" for (s,) in rows]
                                  for rows in iter(lambda: cursor.fetchmany(INPUT_BLOCK), [])))


def _encoded(lengths: np.ndarray, blocks: Iterable[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(base codes in one buffer, offsets) of barcodes of ``lengths``, given in order as blocks of text (a barcode
    of length 0 may be left out of them)."""
    offsets = np.r_[0, np.cumsum(lengths, dtype=np.int64)]
    bases = np.empty(offsets[-1], dtype=np.uint8)
    at = 0
    for block in blocks:
        codes = base_codes("".join(block))
        bases[at : at + len(codes)] = codes
        at += len(codes)
    return bases, offsets


def _labels_from_db(path: Path, modality: str) -> tuple[Labels, np.ndarray]:
    """The part's labels and the SQLite rowid of each of its records."""
    with _connect(path) as db:
        try:
            rows = db.execute('SELECT record_id, "order", family, genus, species, bin, vector, rowid FROM records '
                              "WHERE modality = ? ORDER BY rowid", (modality,)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{path}: not a readable records database ({exc}). Rebuild the index.") from exc
    columns = list(zip(*rows, strict=True)) if rows else [()] * 8
    arrays = [np.array(columns[0], dtype=object), *(_shared(c) for c in columns[1:6])]
    return (Labels(arrays[0], dict(zip(RANKS, arrays[1:5], strict=True)), arrays[5],
                   np.array(columns[6], dtype=np.int64)), np.array(columns[7], dtype=np.int64))


class _InputLookup:
    """Barcodes of a saved index read from SQLite by rowid as they are asked for, encoded once and kept.

    One per process (a SQLite connection must not cross a fork); verification threads share it under its lock.
    """

    def __init__(self, path: Path) -> None:
        self.pid, self.path = os.getpid(), path
        self.db = _connect(path, check_same_thread=False)
        self.lock = threading.Lock()
        self.kept: dict[int, np.ndarray] = {}

    def codes(self, vectors: np.ndarray, rowids: np.ndarray) -> list[np.ndarray]:
        """Base codes of ``vectors``' barcodes, read from the records at ``rowids`` (one per vector)."""
        with self.lock:
            missing = sorted({(r, v) for r, v in zip(rowids.tolist(), vectors.tolist(), strict=True)
                              if v not in self.kept})
            for start in range(0, len(missing), LOOKUP_BLOCK):
                wanted = dict(missing[start : start + LOOKUP_BLOCK])
                rows = self.db.execute(f"SELECT rowid, sequence FROM records WHERE rowid IN "
                                       f"({','.join('?' * len(wanted))})", list(wanted)).fetchall()
                for rowid, sequence in rows:
                    self.kept[wanted[rowid]] = base_codes(sequence or "")
                if len(rows) != len(wanted):
                    raise InputError(f"{self.path}: lacks records the index refers to (damaged). Rebuild the index.")
            return [self.kept[v] for v in vectors.tolist()]


def _read_records(path: Path, modality: str) -> list[SequenceRecord]:
    with _connect(path) as db:
        rows = db.execute('SELECT record_id, "order", family, genus, species, bin, flags, source, sequence '
                          "FROM records WHERE modality = ? ORDER BY rowid", (modality,)).fetchall()
    return [SequenceRecord(row[0], row[8] or "", dict(zip(RANKS, row[1:5], strict=True)), row[5], row[7],
                           tuple(f for f in row[6].split(",") if f)) for row in rows]


def _create_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    return db


def _write_records(db: sqlite3.Connection, records: Sequence[SequenceRecord], vector: np.ndarray,
                   modality: str) -> None:
    """Insert one part's records; `length` is the barcode length (NULL for photos and texts)."""
    db.executemany(
        'INSERT INTO records (record_id, vector, "order", family, genus, species, bin, modality, length, '
        "flags, source, sequence) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        ((r.id, int(v), *(r.label(rank) for rank in RANKS), r.bin, modality,
          len(r.sequence) if modality == "dna" else None, ",".join(r.flags), r.source, r.sequence)
         for r, v in zip(records, vector, strict=True)))
