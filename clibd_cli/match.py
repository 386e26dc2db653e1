"""Identify query barcodes against a reference index: embed, search, assign, in batches.

This is the library behind `clibd match`; it yields rows and never prints, so the app decides where
they go and a caller (a notebook, a pipeline) can use it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clibd_cli.assign import DEFAULT_TAU, Assignment, assign_batch
from clibd_cli.encoders import Encoder
from clibd_cli.index import ReferenceIndex
from clibd_cli.sequences import RANKS, SequenceRecord

DEFAULT_NEIGHBOURS = 10


@dataclass
class MatchOptions:
    """Search and assignment settings for one run."""

    neighbours: int = DEFAULT_NEIGHBOURS
    top_k: int = 0
    exact: bool | None = None
    batch_size: int = 1024
    threads: int | None = None
    tau: float = DEFAULT_TAU


@dataclass
class MatchResult:
    """One query's assignment as an output row, and its top hits as long-table rows."""

    row: dict
    hits: list[dict]


def result_row(query_id: str, assignment: Assignment, hit_ids: np.ndarray, hit_bins: np.ndarray,
               flags: Sequence[str] = ()) -> dict:
    """The output row (columns as :data:`clibd_cli.report.COLUMNS`)."""
    top = assignment.top_hit
    row = {"query_id": query_id, "status": assignment.status, "rank": assignment.rank,
           **assignment.labels, **{f"{rank}_score": assignment.scores[rank] for rank in RANKS},
           "top_hit_id": hit_ids[top] if top >= 0 else "",
           "top_hit_similarity": assignment.top_similarity,
           "bin": "", "support": assignment.support, "flags": ",".join(flags)}
    if assignment.status == "assigned":
        best = assignment.calls["species"].best_hit
        row["bin"] = hit_bins[best] if best >= 0 else ""
    return row


def identify(queries: Sequence[SequenceRecord], index: ReferenceIndex, encoder: Encoder,
             thresholds: dict[str, float], options: MatchOptions = MatchOptions(),
             progress: Callable[[int], None] | None = None) -> Iterator[MatchResult]:
    """Yield a :class:`MatchResult` per query, in input order, batch by batch."""
    index.check_encoder(encoder)
    for start in range(0, len(queries), options.batch_size):
        batch = queries[start : start + options.batch_size]
        vectors = encoder.encode([q.sequence for q in batch])
        empty = np.array([not q.sequence for q in batch], dtype=bool)
        for query, (result, _) in zip(batch, assign_vectors([q.id for q in batch], vectors, index, thresholds,
                                                            options, empty=empty), strict=True):
            if query.flags:
                result.row["flags"] = ",".join(query.flags)
            yield result
        if progress is not None:
            progress(len(batch))


def assign_vectors(query_ids: Sequence[str], vectors: np.ndarray, index: ReferenceIndex,
                   thresholds: dict[str, float], options: MatchOptions = MatchOptions(),
                   empty: np.ndarray | None = None) -> list[tuple[MatchResult, Assignment]]:
    """Search and assign a batch of query embeddings (any modality the index's space accepts).

    ``empty`` marks queries with nothing to compare (no sequence): they get no hits.
    """
    found = index.search(vectors, max(options.neighbours, options.top_k), exact=options.exact,
                         threads=options.threads)
    taxonomy = index.taxonomy_of(found.labels)
    safe = np.where(found.labels > 0, found.labels - 1, 0)
    ids = np.where(found.labels > 0, index.labels.record_id[safe], "")
    bins = np.where(found.labels > 0, index.labels.bin[safe], "")
    k = options.neighbours
    sims_k = found.similarities[:, :k].copy()
    if empty is not None:
        sims_k[empty] = -np.inf
    codes = {rank: c[:, :k] for rank, c in index.lineage_codes_of(found.labels).items()}
    assignments = assign_batch(sims_k, {rank: taxonomy[rank][:, :k] for rank in RANKS}, thresholds,
                               options.tau, codes=codes)
    out = []
    for i, (query_id, assignment) in enumerate(zip(query_ids, assignments, strict=True)):
        sims = found.similarities[i]
        hits = [{"query_id": query_id, "hit_rank": j + 1, "hit_id": ids[i][j],
                 "similarity": float(sims[j]), **{rank: taxonomy[rank][i][j] for rank in RANKS},
                 "bin": bins[i][j]}
                for j in range(min(options.top_k, len(sims))) if np.isfinite(sims[j])]
        out.append((MatchResult(result_row(query_id, assignment, ids[i][:k], bins[i][:k]), hits), assignment))
    return out
