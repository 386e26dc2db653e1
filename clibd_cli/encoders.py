"""DNA encoders behind one interface: sequences in, L2-normalised float32 embeddings out.

The weight-free :class:`KmerProfileEncoder` lets `clibd match` work before any model is trained;
ONNX model bundles implement the same :class:`Encoder` protocol, so the index and the assignment
code never care which one produced a vector.  Every encoder has a *fingerprint*: an index remembers
the fingerprint it was built with and refuses queries embedded by anything else, because cosine
similarities from two different embedding spaces are meaningless together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from clibd_cli.tokenizer import encode_bases


@runtime_checkable
class Encoder(Protocol):
    """What the index and `clibd match` need from an encoder."""

    name: str
    modality: str
    dim: int

    @property
    def fingerprint(self) -> str: ...

    def describe(self) -> dict: ...

    def encode(self, items: Sequence[str]) -> np.ndarray: ...


def fingerprint_of(description: dict) -> str:
    """A short stable hash of an encoder's description (name, parameters, weights' hash)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class KmerProfileEncoder:
    """L2-normalised overlapping k-mer frequency profile of a barcode.

    k is chosen by measurement on `bold_insect_coi_dev.tsv.gz` (benchmarks/kmer_choice.py and
    benchmarks/dna_vs_vsearch.py): k = 4…6 give the same species accuracy; k=6 finds the right genus
    of a species missing from the reference more often, but its 4,096 dimensions make the index 4×
    larger and the search ~5× slower than k=5 (1,024 dimensions), so k=5 is the default and
    ``--kmer 6`` is there for novel-species work.  k-mers containing N are ignored; the square-root
    transform of counts (Hellinger) damps repeated motifs such as poly-A runs.
    """

    name = "kmer-profile"
    modality = "dna"
    version = 1
    # Leave-species-out calibration at precision 0.95, novel share 0.25, on bold_insect_coi_dev.tsv.gz
    # (90,084 barcodes, 819 species, 2,000 queries, seeds 0-2), rounded towards stricter values.
    # Other k have no defaults and must be calibrated (build-index does so).
    MEASURED_DEFAULTS: ClassVar[dict[int, dict[str, float]]] = {
        5: {"order": 0.40, "family": 0.51, "genus": 0.78, "species": 0.92},
        6: {"order": 0.30, "family": 0.40, "genus": 0.60, "species": 0.86}}

    def __init__(self, k: int = 5, sqrt: bool = True, max_len: int = 2000) -> None:
        if not 2 <= k <= 8:
            raise ValueError(f"k must be between 2 and 8, got {k}")
        self.k, self.sqrt, self.max_len = k, sqrt, max_len
        self.dim = 4**k
        self.default_thresholds = dict(self.MEASURED_DEFAULTS.get(k, {}))

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "modality": self.modality, "k": self.k,
                "sqrt": self.sqrt, "max_len": self.max_len, "dim": self.dim}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.describe())

    def encode(self, items: Sequence[str], batch_size: int = 2048) -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(items), batch_size):
            out[start : start + batch_size] = self._encode_batch(items[start : start + batch_size])
        return out

    def _encode_batch(self, items: Sequence[str]) -> np.ndarray:
        n, k = len(items), self.k
        length = max((min(len(s), self.max_len) for s in items), default=0)
        counts = np.zeros((n, self.dim), dtype=np.float32)
        if length < k:
            return counts
        codes = encode_bases(items, length).astype(np.int64)
        windows = length - k + 1
        index = np.zeros((n, windows), dtype=np.int64)
        bad = np.zeros((n, windows), dtype=bool)
        for j in range(k):
            column = codes[:, j : j + windows]
            index = index * 4 + np.minimum(column, 3)
            bad |= column == 4
        rows = np.broadcast_to(np.arange(n)[:, None] * self.dim, index.shape)
        flat = (rows + index)[~bad]
        counts = np.bincount(flat, minlength=n * self.dim).astype(np.float32).reshape(n, self.dim)
        if self.sqrt:
            np.sqrt(counts, out=counts)
        norms = np.linalg.norm(counts, axis=1, keepdims=True)
        np.divide(counts, norms, out=counts, where=norms > 0)
        return counts


ENCODERS = {"kmer-profile": KmerProfileEncoder}


def encoder_from_description(description: dict) -> Encoder:
    """Rebuild a weight-free encoder from the description stored in an index."""
    name = description.get("name")
    if name == KmerProfileEncoder.name:
        return KmerProfileEncoder(k=description["k"], sqrt=description["sqrt"],
                                  max_len=description.get("max_len", 2000))
    raise ValueError(f"unknown encoder {name!r}")
