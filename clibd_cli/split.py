"""The CLIBD partition of a BIOSCAN table into seen/unseen train, query and key splits.

CLIBD (BIOSCAN-1M): records without a species are for contrastive pretraining only (`no_split`).
Species with at least ``min_seen_records`` records are drawn 80 % "seen", 20 % "unseen".  Seen
species' records go 70/10/10/10 to `train_seen`, `val_seen`, `test_seen` and `seen_keys` (the keys
are shared by all evaluations; every seen species keeps at least one training record and one key).
Unseen species are divided by species between validation and test, and within each species the
records 50/50 into queries (`val_unseen`, `test_unseen`) and keys (`val_unseen_keys`, `test_unseen_keys`).
Species with 2 to ``min_seen_records - 1`` records join the unseen validation/test splits the same way;
singletons go to `single_species`.

BIOSCAN-5M ships its own `split` column (pretrain, train, val, test, key_unseen, …); a table that
has one keeps it unchanged.  The split names are :mod:`clibd_cli.schema`'s; the synthetic generator
(`clibd simulate`) splits its records with :func:`clibd_split` too.  Torch-free; the functions return
values and never print.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from clibd_cli.errors import InputError, OutputExistsError
from clibd_cli.schema import SEEN_SPLITS, SPLIT_NAMES, clean_label
from clibd_cli.schema import UNSEEN_SPLITS as UNSEEN_SPLITS  # re-exported beside SEEN_SPLITS
from clibd_cli.sequences import SpecimenTable

# BIOSCAN-5M's own split values that hold species not used for training.
_UNSEEN_WORD = "unseen"
_SEEN_5M = {"train", "val", "test"}


def _allocate(n: int, fractions: Sequence[float], carry: np.ndarray) -> list[int]:
    """Split ``n`` records by ``fractions``, carrying rounding error over from earlier species.

    ``carry`` (updated in place) holds what each split is owed so far, so the shares are right over
    the whole dataset even though every species is rounded separately.
    """
    quota = n * np.asarray(fractions, dtype=float) + carry
    counts = np.maximum(np.floor(quota), 0).astype(int)
    while counts.sum() > n:  # take from the most over-served split that has records
        over = np.where(counts > 0, counts - quota, -np.inf)
        counts[int(np.argmax(over))] -= 1
    while counts.sum() < n:  # give to the most under-served split
        counts[int(np.argmax(quota - counts))] += 1
    if counts[-1] == 0 and n >= 1:  # every seen species needs at least one key
        counts[int(np.argmax(counts[:-1]))] -= 1
        counts[-1] += 1
    if counts[0] == 0 and n >= 2 and counts[1:-1].any():  # … and one training record (matters below ~5 records)
        counts[1 + int(np.argmax(counts[1:-1]))] -= 1
        counts[0] += 1
    carry[:] = quota - counts
    return counts.tolist()


def clibd_split(species: Sequence[str], seed: int = 0, *, unseen_share: float = 0.2,
                min_seen_records: int = 10,
                seen_fractions: Sequence[float] = (0.7, 0.1, 0.1, 0.1),
                unseen: Collection[str] | None = None) -> list[str]:
    """One CLIBD split name per record (see the module docstring); deterministic for a ``seed``.

    ``unseen`` names the species to hold out as unseen instead of drawing ``unseen_share`` of the eligible
    ones (the synthetic generator picks species whose genus stays seen); the records are allocated as
    usual, and passing the species a draw would pick gives the same splits as the draw.
    """
    if not 0.0 <= unseen_share <= 1.0:
        raise ValueError(f"unseen_share must be between 0 and 1, got {unseen_share}")
    if min_seen_records < 2:
        raise ValueError(f"min_seen_records must be at least 2, got {min_seen_records}")
    if len(seen_fractions) != 4 or min(seen_fractions) < 0 or not math.isclose(sum(seen_fractions), 1.0):
        raise ValueError("seen_fractions must be four non-negative shares (train, val, test, keys) "
                         "summing to 1")
    labels = [clean_label(s) for s in species]
    out = ["no_split"] * len(labels)
    members: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label:
            members.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)

    eligible = sorted(s for s, idx in members.items() if len(idx) >= min_seen_records)
    small = sorted(s for s, idx in members.items() if 2 <= len(idx) < min_seen_records)
    for idx in members.values():
        if len(idx) == 1:
            out[idx[0]] = "single_species"

    order = [eligible[i] for i in rng.permutation(len(eligible))]
    if unseen is None:
        n_unseen = round(unseen_share * len(eligible))
        if unseen_share > 0 and len(eligible) >= 2:
            n_unseen = max(n_unseen, 1)
        if unseen_share < 1 and len(eligible) >= 2:
            n_unseen = min(n_unseen, len(eligible) - 1)
        held_out, seen = order[:n_unseen], sorted(order[n_unseen:])
    else:
        chosen = {clean_label(s) for s in unseen}
        absent = sorted(chosen - set(members))
        if absent:
            raise ValueError(f"unseen species not among the records: {', '.join(absent[:5])}")
        held_out, seen = [s for s in order if s in chosen], sorted(s for s in eligible if s not in chosen)

    carry = np.zeros(4)
    for s in seen:
        idx = [members[s][i] for i in rng.permutation(len(members[s]))]
        start = 0
        for name, count in zip(SEEN_SPLITS, _allocate(len(idx), seen_fractions, carry), strict=True):
            for i in idx[start:start + count]:
                out[i] = name
            start += count

    extra_to_queries = True  # odd-sized species alternate their extra record between queries and keys
    for group in (sorted(held_out), small):
        shuffled = [group[i] for i in rng.permutation(len(group))]
        half = (len(shuffled) + 1) // 2 if rng.random() < 0.5 else len(shuffled) // 2
        for position, s in enumerate(shuffled):
            prefix = "val" if position < half else "test"
            idx = [members[s][i] for i in rng.permutation(len(members[s]))]
            n_queries = len(idx) // 2
            if len(idx) % 2:
                n_queries += extra_to_queries
                extra_to_queries = not extra_to_queries
            for j, i in enumerate(idx):
                out[i] = f"{prefix}_unseen" if j < n_queries else f"{prefix}_unseen_keys"
    return out


def summarise(species: Sequence[str], splits: Sequence[str]) -> dict:
    """Records and species per split, plus how many species are seen and unseen."""
    per_split: dict[str, dict[str, object]] = {}
    seen_species: set[str] = set()
    unseen_species: set[str] = set()
    for label, split in zip(species, splits, strict=True):
        label = clean_label(label)
        entry = per_split.setdefault(split, {"records": 0, "species": set()})
        entry["records"] += 1
        if label:
            entry["species"].add(label)
            lowered = split.lower()
            if _UNSEEN_WORD in lowered:
                unseen_species.add(label)
            elif lowered in SEEN_SPLITS or lowered in _SEEN_5M:
                seen_species.add(label)
    known = [name for name in SPLIT_NAMES if name in per_split]
    ordered = known + sorted(name for name in per_split if name not in SPLIT_NAMES)
    return {
        "records": len(splits),
        "species": len({clean_label(s) for s in species} - {""}),
        "splits": {name: {"records": per_split[name]["records"], "species": len(per_split[name]["species"])}
                   for name in ordered},
        "seen_species": len(seen_species),
        "unseen_species": len(unseen_species),
    }


def _write(out: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write atomically: a temporary file next to ``out``, then ``os.replace``."""
    delimiter = "," if out.name.lower().removesuffix(".gz").endswith(".csv") else "\t"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        opener = gzip.open if out.name.lower().endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_table(path: Path | str, out: Path | str, seed: int = 0, species_column: str | None = None,
                split_column: str | None = None, *, force: bool = False, unseen_share: float = 0.2,
                min_seen_records: int = 10) -> dict:
    """Write ``path`` to ``out`` with a `split` column appended (or kept, when the table has one).

    Returns the :func:`summarise` summary plus ``source`` (``"computed"`` or ``"existing"``),
    ``species_column``, ``split_column`` and ``output``.
    """
    path, out = Path(path), Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists. Use --force to replace it, or another name.")
    table = SpecimenTable(path, species_column=species_column, split_column=split_column)
    if table.header and table.header[0].startswith(">"):
        raise InputError(f"{path}: is FASTA; split needs a table with one specimen per row and a species column "
                         "(BOLD or BIOSCAN TSV/CSV).")
    header, rows = table.header, [row for _, row in table]
    species_col = table.columns.require("species")
    species_i = header.index(species_col)
    species = [row[species_i] for row in rows]
    existing = table.columns.names["split"]
    if existing is not None:
        split_i = header.index(existing)
        splits = [row[split_i].strip() for row in rows]
        source = "existing"
    else:
        splits = clibd_split(species, seed, unseen_share=unseen_share, min_seen_records=min_seen_records)
        header = [*header, "split"]
        rows = [[*row, name] for row, name in zip(rows, splits, strict=True)]
        existing, source = "split", "computed"
    _write(out, header, rows)
    summary = summarise(species, splits)
    summary.update(source=source, species_column=species_col, split_column=existing, output=str(out),
                   seed=seed)
    return summary
