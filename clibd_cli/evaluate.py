"""The paper's evaluation protocol, plus the open-set numbers a field deployment needs.  Pure numpy.

Closed set (CLIBD_REFERENCE.md "Evaluation protocol"): embed the queries of one split (``val`` or
``test``; seen and unseen species) and all keys (``seen_keys``, ``val_unseen_keys``,
``test_unseen_keys``), classify each query at each rank by its nearest keys (exact cosine), and report
micro/macro top-1/3/5 for seen and unseen queries and their harmonic mean, for every query→key
modality pair the model has.  The metric functions are :mod:`clibd_cli.metrics`, the ones training
validation uses, so `clibd evaluate` and the training log agree.

Open set (what the paper lacks): the unseen species' keys are taken *out* of the reference, so the
split's unseen queries are species absent from it, as new species are in the field.  Thresholds are
calibrated on the *other* split's queries (val when evaluating test) against the same reference, with
the same assignment code as `clibd match`/`classify`, then applied to this split.  Reported: for
absent-species queries, the share wrongly given a species name and the share correctly rolled up to
genus or family; for present species, the share still named and how often rightly; and a
threshold-free AUROC of the species score for "species absent".  Reliability: per rank, score bins
against the observed accuracy of the call at that rank.

:func:`evaluate_model` is the `clibd evaluate` workflow for any caller: a split table read, the model
loaded (a bundle, a training checkpoint exported to a temporary bundle, or the k-mer profile), the report
returned; :func:`write_report` saves it as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clibd_cli.assign import DEFAULT_TAU, assign_batch
from clibd_cli.calibrate import correct_calls, fit_thresholds, score_queries
from clibd_cli.errors import InputError
from clibd_cli.metrics import DEFAULT_KS, harmonic_mean, topk_accuracy
from clibd_cli.schema import KEY_SPLITS, PAIRS, RANKS, Specimen, taxonomy_text
from clibd_cli.sequences import SpecimenTable
from clibd_cli.workflow import Progress, ReadOptions, no_progress

QUERY_SPLITS = {"val": ("val_seen", "val_unseen"), "test": ("test_seen", "test_unseen")}
NEIGHBOURS = 10


class Embedder(Protocol):
    """Anything that embeds specimens of a modality (a model bundle, the k-mer profile)."""

    modalities: tuple[str, ...]

    def embed(self, modality: str, specimens: Sequence[Specimen]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings of the usable specimens, boolean mask of which were usable)."""


def read_split_table(path: Path, *, id_column: str | None = None, sequence_column: str | None = None,
                     image_column: str | None = None) -> list[Specimen]:
    """A table with a ``split`` column (from `clibd split` or `clibd simulate`), taxonomy, barcodes and/or photos.

    Read with the one table reader (:class:`~clibd_cli.sequences.SpecimenTable`); the ``*_column`` arguments
    name columns explicitly.  A row without an id is called ``line<N>``.
    """
    table = SpecimenTable(path, id_column=id_column, sequence_column=sequence_column, image_column=image_column)
    if not table.columns.has("split"):
        raise InputError(f"{path}: no 'split' column. Run 'clibd split' on it first.")
    return [specimen if specimen.id else replace(specimen, id=f"line{line}") for line, specimen in table.specimens()]


# ---------------------------------------------------------------------------------------------
# Closed set


def pairs_for(modalities: Sequence[str]) -> list[tuple[str, str]]:
    return [(q, k) for q, k in PAIRS if q in modalities and k in modalities]


@dataclass
class Embedded:
    """Embeddings of one group of specimens, per modality, with the specimens behind each row."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, list[Specimen]] = field(default_factory=dict)

    def labels(self, modality: str) -> dict[str, list[str]]:
        return {rank: [s.label(rank) for s in self.rows[modality]] for rank in RANKS}


def embed_group(embedder: Embedder, specimens: Sequence[Specimen], modalities: Sequence[str],
                progress: Progress = no_progress, what: str = "specimens") -> Embedded:
    """Each modality's vectors of ``specimens`` (those it can embed), as one ``progress`` step per modality."""
    out = Embedded()
    for modality in modalities:
        with progress(f"embedding {what} ({modality})", len(specimens)) as advance:
            vectors, ok = embedder.embed(modality, specimens)
            advance(len(specimens))
        out.vectors[modality] = vectors
        out.rows[modality] = [s for s, good in zip(specimens, ok, strict=True) if good]
    return out


def closed_set(queries: dict[str, Embedded], keys: Embedded, pairs: Sequence[tuple[str, str]],
               ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """``{pair: {"seen"|"unseen"|"harmonic": {rank: {metric: value}}}}`` as in the paper's tables."""
    from clibd_cli.metrics import nearest_keys

    results: dict[str, Any] = {}
    for q_mod, k_mod in pairs:
        pair = f"{q_mod}_to_{k_mod}"
        entry: dict[str, Any] = {}
        for group in ("seen", "unseen"):
            query = queries[group]
            if not len(query.rows[q_mod]) or not len(keys.rows[k_mod]):
                continue
            neighbours = nearest_keys(query.vectors[q_mod], keys.vectors[k_mod], max(ks))
            entry[group] = topk_accuracy(neighbours, query.labels(q_mod), keys.labels(k_mod), ks)
        if "seen" in entry and "unseen" in entry:
            seen, unseen = entry["seen"], entry["unseen"]
            entry["harmonic"] = {rank: {metric: harmonic_mean(seen[rank][metric], unseen[rank][metric])
                                        for metric in seen[rank] if metric != "n"} for rank in RANKS}
        results[pair] = entry
    return results


# ---------------------------------------------------------------------------------------------
# Open set


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores (positives should score higher), ties counted half."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if not len(positive) or not len(negative):
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def _neighbours(queries: np.ndarray, keys: np.ndarray, key_labels: dict[str, list[str]],
                k: int = NEIGHBOURS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cosines of the k nearest keys and their labels per rank."""
    from clibd_cli.search import exact_knn

    neighbours, sims = exact_knn(queries, keys, min(k, len(keys)))
    return sims, {rank: np.asarray(key_labels[rank], dtype=object)[neighbours] for rank in RANKS}


def _assign(queries: np.ndarray, keys: np.ndarray, key_labels: dict[str, list[str]], thresholds: dict[str, float]):
    return assign_batch(*_neighbours(queries, keys, key_labels), thresholds, DEFAULT_TAU)


def open_set(calibration: dict[str, Embedded], evaluation: dict[str, Embedded], keys: Embedded,
             pairs: Sequence[tuple[str, str]], precision: float = 0.95, bins: int = 10) -> dict[str, Any]:
    """Open-set metrics per pair against the seen keys only (see the module docstring)."""
    results: dict[str, Any] = {}
    for q_mod, k_mod in pairs:
        rows = keys.rows[k_mod]
        mask = np.array([s.split == "seen_keys" for s in rows], dtype=bool)
        if not mask.any():
            continue
        key_vectors = keys.vectors[k_mod][mask]
        key_labels = {rank: [lab for lab, m in zip(keys.labels(k_mod)[rank], mask, strict=True) if m] for rank in RANKS}
        # calibrate on the other split's queries (present and absent species) with the assignment's own scores
        cal_vectors = np.concatenate([calibration[g].vectors[q_mod] for g in ("seen", "unseen")])
        cal_truth = {rank: [*calibration["seen"].labels(q_mod)[rank], *calibration["unseen"].labels(q_mod)[rank]]
                     for rank in RANKS}
        if len(cal_vectors) < 10:
            continue
        scores, correct = score_queries(*_neighbours(cal_vectors, key_vectors, key_labels), cal_truth)
        thresholds = fit_thresholds(scores, correct, precision).thresholds
        present, absent = evaluation["seen"], evaluation["unseen"]
        a_present = _assign(present.vectors[q_mod], key_vectors, key_labels, thresholds)
        a_absent = _assign(absent.vectors[q_mod], key_vectors, key_labels, thresholds)
        t_present, t_absent = present.labels(q_mod), absent.labels(q_mod)
        ok_present, ok_absent = correct_calls(a_present, t_present), correct_calls(a_absent, t_absent)
        named_present = np.array([a.status == "assigned" for a in a_present])
        named_absent = np.array([a.status == "assigned" for a in a_absent])
        rolled_right = np.array([a.rank in ("genus", "family") and a.status != "assigned" and bool(ok_absent[a.rank][i])
                                 for i, a in enumerate(a_absent)])
        species_present = np.array([a.calls["species"].score for a in a_present])
        species_absent = np.array([a.calls["species"].score for a in a_absent])
        results[f"{q_mod}_to_{k_mod}"] = {
            "thresholds": thresholds, "calibrated_on": len(cal_vectors),
            "absent": {"n": len(a_absent), "named_species_share": _share(named_absent),
                       "rolled_up_correct_share": _share(rolled_right),
                       "genus_correct_share": _share(ok_absent["genus"])},
            "present": {"n": len(a_present), "named_share": _share(named_present),
                        "named_correct_share": _share(named_present & ok_present["species"]),
                        "precision_named": _share(ok_present["species"][named_present]) if named_present.any()
                        else float("nan")},
            "auroc_species_absent": auroc(-species_absent, -species_present),
            "reliability": reliability([*a_present, *a_absent],
                                       {rank: [*t_present[rank], *t_absent[rank]] for rank in RANKS}, bins),
        }
    return results


def _share(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else float("nan")


def reliability(assignments, truth: dict[str, list[str]], bins: int = 10) -> dict[str, list[dict[str, float]]]:
    """Per rank: score bins (equal width over the observed range) with mean score, accuracy and count."""
    out: dict[str, list[dict[str, float]]] = {}
    correct = correct_calls(assignments, truth)
    for rank in RANKS:
        known = np.array([bool(truth[rank][i]) for i in range(len(assignments))], dtype=bool)
        scores = np.array([a.calls[rank].score for a in assignments], dtype=float)
        keep = known & np.isfinite(scores)
        if not keep.any():
            out[rank] = []
            continue
        s, c = scores[keep], correct[rank][keep]
        edges = np.linspace(s.min(), s.max() + 1e-9, bins + 1)
        which = np.clip(np.digitize(s, edges) - 1, 0, bins - 1)
        out[rank] = [{"score": float(s[which == b].mean()), "accuracy": float(c[which == b].mean()),
                      "n": int((which == b).sum())} for b in range(bins) if (which == b).any()]
    return out


# ---------------------------------------------------------------------------------------------
# Whole protocol


def evaluate(specimens: Sequence[Specimen], embedder: Embedder, split: str = "test",
             ks: Sequence[int] = DEFAULT_KS, precision: float = 0.95,
             progress: Progress = no_progress) -> dict[str, Any]:
    """Closed- and open-set results for one split (see the module docstring); embedding photos of a large
    table takes minutes, so each group's embedding is a ``progress`` step."""
    if split not in QUERY_SPLITS:
        raise InputError(f"--split {split!r}: use val or test.")
    seen_split, unseen_split = QUERY_SPLITS[split]
    other = "val" if split == "test" else "test"
    groups = {"seen": [s for s in specimens if s.split == seen_split],
              "unseen": [s for s in specimens if s.split == unseen_split]}
    keys = [s for s in specimens if s.split in KEY_SPLITS]
    if not keys or not (groups["seen"] or groups["unseen"]):
        raise InputError(f"no {seen_split}/{unseen_split} queries or no keys ({', '.join(KEY_SPLITS)}) in the "
                         "table; run 'clibd split' on it first.")
    pairs = pairs_for(embedder.modalities)
    modalities = sorted({m for pair in pairs for m in pair})
    query_mods = sorted({q for q, _ in pairs})
    embedded = {g: embed_group(embedder, rows, query_mods, progress, f"{g} {split} queries")
                for g, rows in groups.items()}
    key_emb = embed_group(embedder, keys, modalities, progress, "keys")
    cal_groups = {"seen": [s for s in specimens if s.split == QUERY_SPLITS[other][0]],
                  "unseen": [s for s in specimens if s.split == QUERY_SPLITS[other][1]]}
    calibration = {g: embed_group(embedder, rows, query_mods, progress, f"{g} {other} queries (calibration)")
                   for g, rows in cal_groups.items()}
    counts = {"queries_seen": len(groups["seen"]), "queries_unseen": len(groups["unseen"]), "keys": len(keys),
              "species_seen": len({s.species for s in groups["seen"]}),
              "species_unseen": len({s.species for s in groups["unseen"]})}
    return {"split": split, "counts": counts, "pairs": [f"{q}_to_{k}" for q, k in pairs],
            "closed_set": closed_set(embedded, key_emb, pairs, ks),
            "open_set": open_set(calibration, embedded, key_emb, pairs, precision),
            "open_set_calibrated_on": other, "open_set_precision": precision}


# ---------------------------------------------------------------------------------------------
# Embedders


class KmerEmbedder:
    """The weight-free k-mer profile (DNA only): the baseline every trained DNA encoder must beat."""

    modalities = ("dna",)

    def __init__(self, k: int = 5) -> None:
        from clibd_cli.encoders import KmerProfileEncoder

        self.encoder = KmerProfileEncoder(k=k)
        self.name = f"kmer-profile k={k}"

    def embed(self, modality: str, specimens: Sequence[Specimen]) -> tuple[np.ndarray, np.ndarray]:
        ok = np.array([bool(s.sequence) for s in specimens], dtype=bool)
        return self.encoder.encode([s.sequence for s, good in zip(specimens, ok, strict=True) if good]), ok


class BundleEmbedder:
    """A model bundle: photos decoded in the worker pool, barcodes and taxonomy strings tokenised."""

    def __init__(self, bundle, workers: int | None = None, scratch: Any = None) -> None:
        self.bundle, self.workers = bundle, workers
        self.scratch = scratch  # a TemporaryDirectory holding the bundle, kept as long as the embedder
        self.modalities = bundle.modalities
        self.name = bundle.name

    def embed(self, modality: str, specimens: Sequence[Specimen]) -> tuple[np.ndarray, np.ndarray]:
        if modality == "dna":
            ok = np.array([bool(s.sequence) for s in specimens], dtype=bool)
            return self.bundle.embed_dna([s.sequence for s, good in zip(specimens, ok, strict=True) if good]), ok
        if modality == "text":
            ok = np.array([any(s.lineage) for s in specimens], dtype=bool)
            texts = [taxonomy_text(s.taxonomy) for s, good in zip(specimens, ok, strict=True) if good]
            return self.bundle.embed_text(texts), ok
        from clibd_cli.photos import Photo, iter_preprocessed

        photos = [Photo(id=str(i), path=Path(s.image)) for i, s in enumerate(specimens) if s.image is not None]
        ok = np.zeros(len(specimens), dtype=bool)
        chunks = [np.empty((0, self.bundle.dim), np.float32)]
        for batch in iter_preprocessed(photos, self.bundle.preprocessing, workers=self.workers):
            ok[[int(p.id) for p in batch.photos]] = True
            chunks.append(self.bundle.embed_pixels(batch.pixels))
        return np.concatenate(chunks), ok


# ---------------------------------------------------------------------------------------------
# The workflow


def load_embedder(model: str | Path, *, device: str = "auto", workers: int | None = None,
                  trust_checkpoint: bool = False) -> KmerEmbedder | BundleEmbedder:
    """``kmer`` or ``kmer:K`` (the weight-free profile), a model bundle folder, or a `clibd train` checkpoint
    file (exported to a temporary bundle first, kept as long as the embedder)."""
    from clibd_cli.errors import ClibdError
    from clibd_cli.models import checkpoint_bundle, load_model

    model = str(model)
    if model == "kmer" or model.startswith("kmer:"):
        k = model.partition(":")[2]
        if k and not k.isdigit():
            raise ClibdError(f"--model {model!r}: write kmer or kmer:K with an integer K, e.g. kmer:5.")
        return KmerEmbedder(int(k) if k else 5)
    path = Path(model)
    if path.is_file():
        bundle, scratch = checkpoint_bundle(path, device=device, trust_checkpoint=trust_checkpoint)
        return BundleEmbedder(bundle, workers, scratch)
    return BundleEmbedder(load_model(path, device), workers)


def evaluate_model(model: str | Path, data: str | Path, *, split: str = "test", precision: float = 0.95,
                   reading: ReadOptions = ReadOptions(), device: str = "auto", workers: int | None = None,
                   trust_checkpoint: bool = False, progress: Progress = no_progress) -> dict[str, Any]:
    """The full report (closed and open set, see the module docstring) of ``model`` on the split table
    ``data`` (from `clibd split` or `clibd simulate`), with the model's name and the table's path."""
    specimens = read_split_table(Path(data), id_column=reading.id_column, sequence_column=reading.sequence_column,
                                 image_column=reading.image_column)
    embedder = load_embedder(model, device=device, workers=workers, trust_checkpoint=trust_checkpoint)
    report = evaluate(specimens, embedder, split=split, precision=precision, progress=progress)
    report["model"] = embedder.name
    report["data"] = str(data)
    return report


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """The report as indented JSON (NumPy numbers as floats)."""
    import json

    path = Path(path)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return path
