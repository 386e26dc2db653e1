"""Fragment-aware candidates: references that share exact 12-mers with the query, wherever they lie.

A composition profile of a 200 bp read resembles the profile of no full barcode in particular (on real
BOLD data the species of ~5 % of 200 bp fragments is missing from the 32 nearest profiles), but a read
cut from a barcode shares long exact words with every reference that covers its region, as VSEARCH's
word filter uses.  This table lists the 12-mers of every distinct reference barcode at every
``STRIDE``-th position, with the references that hold each; a query looks up all of its 12-mers, so a
shared stretch of ≥ 12 + STRIDE bases is always found, whatever the offset.  Words shared by more than
``MAX_POSTINGS`` references (conserved motifs) say nothing about which reference is closest and are
skipped.  O(total barcode length / STRIDE) memory.  `clibd build-index` writes the table into the index
(:meth:`AnchorTable.save`) and `clibd match` maps it from there (:meth:`AnchorTable.load`): built on demand it
costs a read and encoding of every barcode, 16 s at a million references, and a transient 1.2 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from clibd_cli.align import _kmers, base_codes

K = 12
STRIDE = 4
MAX_POSTINGS = 2000
BLOCK = 1 << 22  # pairs read at a time while the table is compressed


class AnchorTable:
    """The references holding each sampled 12-mer, as a compressed table: ``words`` (the distinct codes,
    ascending), ``starts`` (word ``i``'s references are ``owners[starts[i]:starts[i+1]]``, ascending) and
    ``owners`` (32-bit reference numbers).

    Real barcodes share most of their words: a million references hold 152 million sampled words but only
    3 million distinct ones, so four bytes per word and a short list of codes (0.65 GB) hold what a sorted
    array of (code, owner) pairs held in eight (1.2 GB).  Built as that array, chunk by chunk, sorted in
    place; then each pair's owner half is moved to the front of the same buffer, which is shrunk to it, so
    the build never holds more than the pairs.
    """

    def __init__(self, bases: np.ndarray, offsets: np.ndarray, chunk: int = 20_000) -> None:
        """From the barcodes' base codes in one buffer (0-3, N = 4), barcode ``i`` at ``offsets[i]:offsets[i+1]``,
        as the index holds them (:meth:`clibd_cli.index.ReferenceIndex.input_codes`)."""
        self.size = len(offsets) - 1
        most = int(np.maximum(0, (np.diff(offsets) - K) // STRIDE + 1).sum())
        buffer = np.empty(2 * most, dtype=np.uint32)  # (word, owner) pairs, read as 64-bit numbers to sort
        low = 0 if np.little_endian else 1  # where a pair's owner half lies
        n = 0
        for first in range(0, self.size, chunk):  # bounded working memory, whatever the library's size
            words, owners = _sampled(bases, offsets, first, min(first + chunk, self.size))
            buffer[2 * n + low : 2 * (n + len(words)) : 2] = owners
            buffer[2 * n + 1 - low : 2 * (n + len(words)) : 2] = words
            n += len(words)
        pairs = buffer.view(np.uint64)[:n]
        pairs.sort()  # by word, then owner
        high = buffer[1 - low : 2 * n : 2]
        begins = [np.zeros(min(n, 1), dtype=np.int64)]
        for i in range(1, n, BLOCK):  # where each word's run begins, a block at a time
            stop = min(i + BLOCK, n)
            begins.append(np.flatnonzero(high[i:stop] != high[i - 1 : stop - 1]) + i)
        at = np.concatenate(begins)
        self.words = high[at]
        self.starts = np.r_[at, n]
        for i in range(0, n, BLOCK):  # each pair's owner half to the front of the buffer, in order
            stop = min(i + BLOCK, n)
            buffer[i:stop] = buffer[2 * i + low : 2 * stop : 2]
        del pairs, high
        buffer.resize(n, refcheck=False)  # (no view of it is left)
        self.owners = buffer

    @classmethod
    def of(cls, sequences: Sequence[str], chunk: int = 20_000) -> AnchorTable:
        """The table of barcodes given as text."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        return cls(base_codes("".join(sequences)), np.r_[0, np.cumsum(lengths)], chunk)

    _ARRAYS = (("words", np.uint32), ("starts", np.int64), ("owners", np.uint32))

    def save(self, path: Path) -> None:
        """Write ``words``, ``starts`` and ``owners`` as three ``.npy`` arrays one after another in one file."""
        with open(path, "wb") as fh:
            for name, dtype in self._ARRAYS:
                npy.write_array(fh, np.ascontiguousarray(getattr(self, name), dtype=dtype), allow_pickle=False)

    @classmethod
    def load(cls, path: Path, size: int) -> AnchorTable:
        """The table :meth:`save` wrote, for ``size`` references, its arrays memory-mapped (read-only): a run
        reads only the pages of the words its queries hold.  A file not laid out as :meth:`save` writes it raises
        ``ValueError`` (never unpickled)."""
        table = cls.__new__(cls)
        table.size = size
        with open(path, "rb") as fh:
            for name, dtype in cls._ARRAYS:
                version = npy.read_magic(fh)
                header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, fortran, stored = header(fh)
                if stored != np.dtype(dtype).newbyteorder("<") or len(shape) != 1 or fortran:
                    raise ValueError(f"{path}: {name} is not a one-dimensional {np.dtype(dtype).name} array")
                at, length = fh.tell(), shape[0] * stored.itemsize
                if at + length > path.stat().st_size:
                    raise ValueError(f"{path}: ends inside its {name} array")
                array = np.memmap(path, dtype=stored, mode="r", offset=at, shape=shape) if length else \
                    np.empty(0, dtype=stored)
                setattr(table, name, array)
                fh.seek(at + length)
        if len(table.starts) != len(table.words) + 1 or table.starts[0] != 0 or \
                table.starts[-1] != len(table.owners):
            raise ValueError(f"{path}: its word table's parts do not fit together")
        return table

    def candidates(self, query: str, n: int) -> np.ndarray:
        """Up to ``n`` references sharing the most sampled 12-mers with ``query`` (most first)."""
        return self.most_shared(query, n)[0]

    def most_shared(self, query: str, *sizes: int) -> list[np.ndarray]:
        """:meth:`candidates` of ``query`` for each size, its words looked up and counted once."""
        kmers = np.unique(_kmers(base_codes(query), K))
        kmers = kmers[kmers >= 0].astype(np.uint32)
        at = np.searchsorted(self.words, kmers)
        inside = at < len(self.words)
        at = at[inside][self.words[at[inside]] == kmers[inside]]  # the query's words the table holds
        start = self.starts[at]
        length = self.starts[at + 1] - start
        keep = length <= MAX_POSTINGS
        if not keep.any():
            return [np.empty(0, dtype=np.int64) for _ in sizes]
        start, length = start[keep], length[keep]
        where = np.repeat(start - np.r_[0, np.cumsum(length)[:-1]], length) + np.arange(length.sum())
        owners = self.owners[where]
        if self.size <= len(owners):  # a count per reference costs less than sorting the postings
            counts = np.bincount(owners, minlength=self.size)
            sharing = np.flatnonzero(counts)
            counts = counts[sharing]
        else:
            sharing, counts = np.unique(owners, return_counts=True)
        found = []
        for n in sizes:
            top = np.argpartition(-counts, n - 1)[:n] if len(sharing) > n else np.arange(len(sharing))
            found.append(sharing[top[np.argsort(-counts[top], kind="stable")]].astype(np.int64))
        return found


def _sampled(bases: np.ndarray, offsets: np.ndarray, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """The 12-mer codes of barcodes ``first:stop`` at every ``STRIDE``-th position (none holding an N), and the
    barcode each belongs to.

    A 12-mer is three 4-mers, and a 4-mer fits a byte: the chunk's 4-mers at every position are two passes
    over bytes, and each sampled word three look-ups, where building it base by base took twelve.
    """
    chunk = bases[offsets[first] : offsets[stop]]
    begin = offsets[first:stop] - offsets[first]
    counts = np.maximum(0, (np.diff(offsets[first : stop + 1]) - K) // STRIDE + 1)
    owner = np.repeat(np.arange(first, stop, dtype=np.uint32), counts)
    at = STRIDE * np.arange(int(counts.sum())) + np.repeat(begin - STRIDE * (np.cumsum(counts) - counts), counts)
    if not len(at):
        return np.empty(0, dtype=np.uint32), owner
    two = ((chunk[:-1] & 3) << 2) | (chunk[1:] & 3)
    four = (two[:-2] << 4) | two[2:]
    words = (four[at].astype(np.uint32) << 16) | (four[at + 4].astype(np.uint32) << 8) | four[at + 8]
    unknown = chunk == 4
    if unknown.any():  # the same three look-ups of "a 4-mer holds an N"
        unknown = unknown[:-1] | unknown[1:]
        unknown = unknown[:-2] | unknown[2:]
        good = ~(unknown[at] | unknown[at + 4] | unknown[at + 8])
        words, owner = words[good], owner[good]
    return words, owner
