"""Fragment-aware candidates: references that share exact 12-mers with the query, wherever they lie.

A composition profile of a 200 bp read resembles the profile of no full barcode in particular (on real
BOLD data the species of ~5 % of 200 bp fragments is missing from the 32 nearest profiles), but a read
cut from a barcode shares long exact words with every reference that covers its region, as VSEARCH's
word filter uses.  This table lists the 12-mers of every distinct reference barcode at every
``STRIDE``-th position (sorted codes and their owners); a query looks up all of its 12-mers, so a
shared stretch of ≥ 12 + STRIDE bases is always found, whatever the offset.  Words shared by more than
``MAX_POSTINGS`` references (conserved motifs) say nothing about which reference is closest and are
skipped.  Built from the index's barcodes on first use: O(total barcode length / STRIDE) memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clibd_cli.align import _kmers, base_codes

K = 12
STRIDE = 4
MAX_POSTINGS = 2000


class AnchorTable:
    """Sorted (12-mer code, reference) pairs of a list of barcodes, sampled every ``STRIDE`` bases, packed one
    pair per 64-bit word (code in the high half): the one array the table holds.

    Built in that array, chunk by chunk, and sorted in place: at a million references the table is 1.3 GB,
    and building it as separate code and owner arrays, concatenated, widened and packed, peaked at 6.7 GB more
    than the run held before (31 s); filled in place it peaks at about the table's size.
    """

    def __init__(self, bases: np.ndarray, offsets: np.ndarray, chunk: int = 20_000) -> None:
        """From the barcodes' base codes in one buffer (0-3, N = 4), barcode ``i`` at ``offsets[i]:offsets[i+1]``,
        as the index holds them (:meth:`clibd_cli.index.ReferenceIndex.input_codes`)."""
        self.size = len(offsets) - 1
        lengths = np.diff(offsets).astype(np.int64)
        counts = np.maximum(0, (lengths - K) // STRIDE + 1)
        packed = np.empty(int(counts.sum()), dtype=np.uint64)
        filled = 0
        for first in range(0, self.size, chunk):  # bounded working memory, whatever the library's size
            stop = min(first + chunk, self.size)
            part_counts = counts[first:stop]
            owner = np.repeat(np.arange(first, stop, dtype=np.uint64), part_counts)
            position = offsets[first:stop][owner - np.uint64(first)] + STRIDE * (
                np.arange(part_counts.sum()) - np.repeat(np.r_[0, np.cumsum(part_counts)[:-1]], part_counts))
            value = np.zeros(len(position), dtype=np.uint64)
            bad = np.zeros(len(position), dtype=bool)
            for offset in range(K):
                base = bases[position + offset]
                value = (value << np.uint64(2)) | (base & 3).astype(np.uint64)
                bad |= base == 4
            good = ~bad
            n = int(good.sum())
            packed[filled : filled + n] = (value[good] << np.uint64(32)) | owner[good]
            filled += n
        self.packed = packed[:filled]
        # One in-place sort of (code, owner) words: the owners of a code come out ascending.
        self.packed.sort()

    @classmethod
    def of(cls, sequences: Sequence[str], chunk: int = 20_000) -> AnchorTable:
        """The table of barcodes given as text."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        return cls(base_codes("".join(sequences)), np.r_[0, np.cumsum(lengths)], chunk)

    def candidates(self, query: str, n: int) -> np.ndarray:
        """Up to ``n`` references sharing the most sampled 12-mers with ``query`` (most first)."""
        return self.most_shared(query, n)[0]

    def most_shared(self, query: str, *sizes: int) -> list[np.ndarray]:
        """:meth:`candidates` of ``query`` for each size, its words looked up and counted once (at a million
        references, finding which references share any word costs as much as looking the words up)."""
        kmers = np.unique(_kmers(base_codes(query), K))
        kmers = kmers[kmers >= 0].astype(np.uint64)
        if not len(kmers) or not len(self.packed):
            return [np.empty(0, dtype=np.int64) for _ in sizes]
        start = np.searchsorted(self.packed, kmers << np.uint64(32), side="left")
        stop = np.searchsorted(self.packed, (kmers + np.uint64(1)) << np.uint64(32), side="left")
        length = stop - start
        keep = (length > 0) & (length <= MAX_POSTINGS)
        if not keep.any():
            return [np.empty(0, dtype=np.int64) for _ in sizes]
        start, length = start[keep], length[keep]
        offsets = np.repeat(start - np.r_[0, np.cumsum(length)[:-1]], length) + np.arange(length.sum())
        owners = (self.packed[offsets] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        counts = np.bincount(owners, minlength=self.size)
        sharing = np.flatnonzero(counts)
        minus_counts = -counts[sharing]
        found = []
        for n in sizes:
            top = sharing[np.argpartition(minus_counts, n - 1)[:n]] if len(sharing) > n else sharing
            found.append(top[np.argsort(-counts[top], kind="stable")].astype(np.int64))
        return found
