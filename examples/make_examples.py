"""Write the small DNA-only example used by the README quickstart (synthetic, deterministic per seed).

    python examples/make_examples.py [--seed 0] [--out examples]

Writes
* ``reference.fasta``: 40 species, 4-6 barcodes each, headers ``processid|order|family|genus|species|BIN``;
* ``queries.fasta``: 40 barcodes without taxonomy: most from reference species (records not in the
  reference), 8 from 5 species absent from it, so the quickstart shows ``novel_candidate`` rows;
* ``queries_truth.tsv``: each query's true taxonomy and whether its species is in the reference.

The files are committed, so they stay small (< 200 KB in all): ~5 records per reference species
instead of BOLD's usual dozens, which is still enough for leave-species-out calibration.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clibd_cli.schema import RANKS, UNSEEN_SPLITS, Specimen
from clibd_training.synthetic import simulate

HERE = Path(__file__).resolve().parent
N_REFERENCE_SPECIES = 40
N_ABSENT_SPECIES = 5
N_ABSENT_QUERIES = 8
N_PRESENT_QUERIES = 32
REFERENCE_RECORDS = (4, 6)  # inclusive range per reference species


def _by_species(specimens: Sequence[Specimen]) -> dict[str, list[Specimen]]:
    """Labelled records grouped by species (by BIN, which unlabelled records would share)."""
    groups: dict[str, list[Specimen]] = {}
    for specimen in specimens:
        if specimen.species:
            groups.setdefault(specimen.bin, []).append(specimen)
    return groups


def select(seed: int = 0) -> tuple[list[Specimen], list[Specimen], set[str]]:
    """(reference records, query records, BINs of the absent species).

    Absent species are taken among the simulation's unseen species, which sit in genera that keep
    other species in the reference: the realistic case of a new species in a known genus.
    """
    specimens = simulate(n_species=N_REFERENCE_SPECIES + N_ABSENT_SPECIES, specimens_per_species=(6, 8),
                         seed=seed)
    rng = np.random.default_rng([seed, 4242])
    groups = _by_species(specimens)
    unseen = sorted({s.bin for s in specimens if s.split in UNSEEN_SPLITS})
    absent = {unseen[i] for i in rng.choice(len(unseen), size=N_ABSENT_SPECIES, replace=False)}
    present = sorted(set(groups) - absent)
    queried = {present[i] for i in rng.choice(len(present), size=N_PRESENT_QUERIES, replace=False)}
    reference: list[Specimen] = []
    queries: list[Specimen] = []
    for bin_uri in present:
        records = [groups[bin_uri][i] for i in rng.permutation(len(groups[bin_uri]))]
        if bin_uri in queried:
            queries.append(records.pop())
        reference.extend(records[: int(rng.integers(REFERENCE_RECORDS[0], REFERENCE_RECORDS[1] + 1))])
    even = np.full(N_ABSENT_SPECIES, 1 / N_ABSENT_SPECIES)
    absent_counts = rng.multinomial(N_ABSENT_QUERIES - N_ABSENT_SPECIES, even)  # ≥ 1 query per absent species
    for bin_uri, extra in zip(sorted(absent), absent_counts, strict=True):
        queries.extend(groups[bin_uri][: 1 + int(extra)])
    queries = [queries[i] for i in rng.permutation(len(queries))]
    reference.sort(key=lambda s: (*(getattr(s, rank) for rank in RANKS), s.id))
    return reference, queries, absent


def reference_fasta(records: Sequence[Specimen]) -> str:
    return "".join(f">{s.id}|{s.order}|{s.family}|{s.genus}|{s.species}|{s.bin}\n{s.sequence}\n"
                   for s in records)


def queries_fasta(records: Sequence[Specimen]) -> str:
    return "".join(f">{s.id}\n{s.sequence}\n" for s in records)


def truth_tsv(records: Sequence[Specimen], absent: set[str]) -> str:
    lines = ["query_id\torder\tfamily\tgenus\tspecies\tin_reference"]
    lines += [f"{s.id}\t{s.order}\t{s.family}\t{s.genus}\t{s.species}\t"
              f"{'no' if s.bin in absent else 'yes'}" for s in records]
    return "\n".join(lines) + "\n"


def write_examples(out: Path, seed: int = 0) -> dict[str, int]:
    """Write the three files under `out`; returns their sizes in bytes."""
    reference, queries, absent = select(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = {"reference.fasta": reference_fasta(reference), "queries.fasta": queries_fasta(queries),
             "queries_truth.tsv": truth_tsv(queries, absent)}
    for name, text in files.items():
        (out / name).write_bytes(text.encode("utf-8"))
    return {name: len(text.encode("utf-8")) for name, text in files.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: examples/)")
    args = parser.parse_args(argv)
    sizes = write_examples(args.out, args.seed)
    for name, size in sizes.items():
        print(f"{args.out / name}: {size:,} bytes")


if __name__ == "__main__":
    main()
