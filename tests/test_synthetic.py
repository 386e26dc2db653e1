"""The synthetic specimens must have the structure CLIBD relies on, or tests built on them prove nothing.

Checked here: determinism per seed, the TSV/HDF5 layouts and CLIBD split rules, barcode distances and
image similarity that follow the taxonomy, and the committed quickstart example files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clibd_training import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim")
    summary = syn.write_simulation(out, n_species=20, seed=1, image_size=64)
    return out, summary


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "specimens.tsv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _species_by_split(rows: list[dict[str, str]]) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        groups[row["split"]].add(row["species"])
    return groups


# ---------------------------------------------------------------------------------------------
# Determinism and taxonomy


def test_simulate_is_deterministic_per_seed() -> None:
    first = syn.simulate(n_species=12, seed=3, image_size=64)
    second = syn.simulate(n_species=12, seed=3, image_size=64)
    assert first == second
    assert [s.image_seed for s in first] == [s.image_seed for s in second]
    assert first[0].jpeg() == second[0].jpeg()
    other = syn.simulate(n_species=12, seed=4, image_size=64)
    assert [s.sequence for s in other] != [s.sequence for s in first]


def test_write_simulation_is_byte_identical_per_seed(tmp_path: Path) -> None:
    for name in ("a", "b"):
        syn.write_simulation(tmp_path / name, n_species=6, seed=7, image_size=48, hdf5=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "specimens.tsv").read_bytes() == (b / "specimens.tsv").read_bytes()
    images = sorted(p.name for p in (a / "images").iterdir())
    assert images == sorted(p.name for p in (b / "images").iterdir())
    assert all((a / "images" / n).read_bytes() == (b / "images" / n).read_bytes() for n in images)


def test_parallel_rendering_gives_the_same_bytes() -> None:
    specimens = syn.simulate(n_species=6, seed=11, image_size=48)[:12]
    assert list(syn.encode_images(specimens, workers=2)) == list(syn.encode_images(specimens, workers=1))


def test_taxonomy_tree_shape_and_names() -> None:
    nodes = syn.make_taxonomy(60, seed=0)
    assert len(nodes) == 60
    assert len({n.species for n in nodes}) == 60
    assert 2 <= len({n.order for n in nodes}) <= 6
    assert len({n.family for n in nodes}) >= 4
    per_genus: dict[str, int] = defaultdict(int)
    family_of_genus: dict[str, set[str]] = defaultdict(set)
    for n in nodes:
        assert n.order.endswith("ptera") and n.order[0].isupper()
        assert n.family.endswith("idae") and n.family[0].isupper()
        assert n.genus.isalpha() and n.genus[0].isupper() and n.genus[1:].islower()
        genus, epithet = n.species.split(" ")
        assert genus == n.genus and epithet.isalpha() and epithet.islower()
        assert n.bin_uri == f"BOLD:SYN{n.index:04d}"
        per_genus[n.genus] += 1
        family_of_genus[n.genus].add(n.family)
    assert all(1 <= count <= 6 for count in per_genus.values())
    assert all(len(families) == 1 for families in family_of_genus.values())  # a tree, not a graph


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        syn.simulate(n_species=3)
    with pytest.raises(ValueError):
        syn.simulate(n_species=10, specimens_per_species=(1, 4))


# ---------------------------------------------------------------------------------------------
# TSV and splits


def test_tsv_columns_files_and_split_names(written: tuple[Path, dict]) -> None:
    out, summary = written
    with (out / "specimens.tsv").open(encoding="utf-8") as fh:
        assert fh.readline().rstrip("\n").split("\t") == list(syn.TSV_COLUMNS)
    rows = _rows(out)
    assert len(rows) == summary["records"]
    assert {row["split"] for row in rows} == set(syn.SPLITS)
    assert summary["splits"]["all_keys"] == sum(summary["splits"][k] for k in syn.KEY_SPLITS)
    for row in rows:
        assert row["image_file"] == f"images/{row['processid']}.jpg"
        assert (out / row["image_file"]).is_file()
        assert row["order"] and row["family"] and row["genus"]
        assert (row["species"] == "") == (row["split"] == "no_split")


def test_seen_and_unseen_species_are_disjoint(written: tuple[Path, dict]) -> None:
    groups = _species_by_split(_rows(written[0]))
    seen = set().union(*(groups[s] for s in syn.SEEN_SPLITS))
    val_unseen = groups["val_unseen"] | groups["val_unseen_keys"]
    test_unseen = groups["test_unseen"] | groups["test_unseen_keys"]
    assert not seen & (val_unseen | test_unseen)
    assert not val_unseen & test_unseen
    n_species = len(seen | val_unseen | test_unseen)
    assert len(val_unseen | test_unseen) == round(0.2 * n_species)


def test_every_unseen_species_has_queries_and_keys(written: tuple[Path, dict]) -> None:
    groups = _species_by_split(_rows(written[0]))
    for queries in ("val_unseen", "test_unseen"):
        assert groups[queries] == groups[f"{queries}_keys"]
        assert groups[queries]


def test_seen_split_proportions() -> None:
    specimens = syn.simulate(n_species=60, seed=2, image_size=64)
    counts = {name: sum(s.split == name for s in specimens) for name in syn.SPLITS}
    seen = sum(counts[name] for name in syn.SEEN_SPLITS)
    assert 0.6 <= counts["train_seen"] / seen <= 0.75
    for name in ("val_seen", "test_seen", "seen_keys"):
        assert 0.05 <= counts[name] / seen <= 0.16
    assert 0.02 <= counts["no_split"] / len(specimens) <= 0.08
    seen_species = {s.species for s in specimens if s.split in syn.SEEN_SPLITS}
    key_species = {s.species for s in specimens if s.split == "seen_keys"}
    assert seen_species == key_species  # every seen query can find its species among the keys


# ---------------------------------------------------------------------------------------------
# Barcodes


def _p_distance(a: np.ndarray, b: np.ndarray) -> float:
    called = (a != ord("N")) & (b != ord("N"))
    return float((a[called] != b[called]).mean())


def test_barcodes_look_like_insect_coi() -> None:
    specimens = syn.simulate(n_species=30, seed=5, image_size=64)
    sequences = [s.sequence for s in specimens]
    assert all(set(seq) <= set("ACGTN") for seq in sequences)
    joined = "".join(sequences)
    at = (joined.count("A") + joined.count("T")) / (len(joined) - joined.count("N"))
    assert 0.64 <= at <= 0.72
    lengths = [len(seq) for seq in sequences]
    assert sum(n == syn.BARCODE_LENGTH for n in lengths) / len(lengths) > 0.85
    assert min(lengths) >= 400
    for seq in sequences:
        if len(seq) == syn.BARCODE_LENGTH:
            codons = {seq[i: i + 3] for i in range(0, len(seq) - 2, 3)}
            assert not codons & {"TAA", "TAG"}  # open reading frame (invertebrate mitochondrial code)


def test_barcode_distances_follow_taxonomy() -> None:
    specimens = [s for s in syn.simulate(n_species=30, seed=6, image_size=64)
                 if len(s.sequence) == syn.BARCODE_LENGTH]
    seqs = [np.frombuffer(s.sequence.encode(), dtype=np.uint8) for s in specimens]
    buckets: dict[str, list[float]] = defaultdict(list)
    for i in range(len(specimens)):
        for j in range(i + 1, len(specimens)):
            a, b = specimens[i], specimens[j]
            if a.bin == b.bin:
                kind = "species"
            elif a.genus == b.genus:
                kind = "genus"
            elif a.family == b.family:
                kind = "family"
            else:
                kind = "between_families"
            buckets[kind].append(_p_distance(seqs[i], seqs[j]))
    means = {kind: float(np.mean(values)) for kind, values in buckets.items()}
    assert means["species"] < means["genus"] < means["family"] < means["between_families"]
    assert means["species"] < 0.02
    assert 0.03 < means["genus"] < 0.13


# ---------------------------------------------------------------------------------------------
# Images


def _hue_histogram(image: Image.Image, bins: int = 12) -> np.ndarray:
    """Saturation-weighted hue histogram: ignores the grey plate and is robust to lighting changes."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64)
    weight = (hsv[..., 1] / 255) ** 2 * (hsv[..., 2] > 40)
    hue_bin = (hsv[..., 0] * bins // 256).astype(np.int64)
    counts = np.bincount(hue_bin.ravel(), weights=weight.ravel(), minlength=bins)
    return counts / counts.sum()


def test_same_species_images_are_more_alike_than_other_genera() -> None:
    specimens = syn.simulate(n_species=16, seed=8, image_size=64)
    per_species: dict[str, list[np.ndarray]] = defaultdict(list)
    genus_of: dict[str, str] = {}
    for s in specimens:
        if len(per_species[s.bin]) < 4:
            per_species[s.bin].append(_hue_histogram(s.render()))
            genus_of[s.bin] = s.genus
    distances: dict[str, list[float]] = defaultdict(list)
    keys = sorted(per_species)
    for x, a in enumerate(keys):
        for b in keys[x:]:
            kind = "species" if a == b else "genus" if genus_of[a] == genus_of[b] else "other"
            for i, h1 in enumerate(per_species[a]):
                for j, h2 in enumerate(per_species[b]):
                    if a != b or j > i:
                        distances[kind].append(float(np.abs(h1 - h2).sum()))
    mean = {kind: np.mean(values) for kind, values in distances.items()}
    assert mean["species"] < 0.6 * mean["other"]
    assert mean["species"] < mean["genus"]  # sister species are distinct variants too


def test_render_is_deterministic_and_sized() -> None:
    specimen = syn.simulate(n_species=6, seed=9, image_size=64)[0]
    image = specimen.render()
    assert image.mode == "RGB" and image.size == (64, 64)
    assert specimen.render(96).size == (96, 96)
    assert np.array_equal(np.asarray(image), np.asarray(specimen.render()))


# ---------------------------------------------------------------------------------------------
# HDF5


def test_hdf5_layout_matches_clibd(written: tuple[Path, dict]) -> None:
    h5py = pytest.importorskip("h5py")
    out, summary = written
    rows = {row["processid"]: row for row in _rows(out)}
    with h5py.File(out / "clibd.hdf5", "r") as h5:
        assert set(h5.keys()) == set(syn.HDF5_GROUPS)
        for name in syn.HDF5_GROUPS:
            group = h5[name]
            assert set(group.keys()) == {"image", "image_mask", *syn.HDF5_STRING_FIELDS}
            n = summary["splits"][name]
            assert group["image"].dtype == np.uint8 and group["image"].shape[0] == n
            assert group["image_mask"].shape == (n,)
            for field in syn.HDF5_STRING_FIELDS:
                assert group[field].shape == (n,)
                assert all(isinstance(v, bytes) for v in group[field][:3])
            for i, pid in enumerate(group["processid"][:]):
                row = rows[pid.decode()]
                assert name == "all_keys" or row["split"] == name
                assert group["barcode"][i].decode() == row["nucleotides"]
                assert group["species"][i].decode() == row["species"]
        keys = {pid for name in syn.KEY_SPLITS for pid in h5[name]["processid"][:]}
        assert set(h5["all_keys"]["processid"][:]) == keys
        group = h5["test_unseen"]
        length = int(group["image_mask"][0])
        data = group["image"][0, :length].tobytes()
        assert not group["image"][0, length:].any()  # zero padding after the JPEG
        file_name = group["image_file"][0].decode()
        assert data == (out / file_name).read_bytes()
        assert Image.open(io.BytesIO(data)).size == (64, 64)


# ---------------------------------------------------------------------------------------------
# Quickstart example files


def _make_examples_module():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_are_deterministic_and_committed_up_to_date(tmp_path: Path) -> None:
    make_examples = _make_examples_module()
    make_examples.main(["--out", str(tmp_path / "a")])
    make_examples.main(["--out", str(tmp_path / "b"), "--seed", "0"])
    names = ("reference.fasta", "queries.fasta", "queries_truth.tsv")
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == (EXAMPLES / name).read_bytes(), \
            f"examples/{name} is stale: run python examples/make_examples.py"
    assert sum((EXAMPLES / name).stat().st_size for name in names) < 200_000


def test_example_files_parse_with_taxonomy() -> None:
    from clibd_cli.sequences import read_sequences

    reference = read_sequences([EXAMPLES / "reference.fasta"]).records
    assert all(r.has_taxonomy and r.label("species") and r.bin.startswith("BOLD:SYN") for r in reference)
    species = {r.label("species") for r in reference}
    assert 35 <= len(species) <= 45
    queries = read_sequences([EXAMPLES / "queries.fasta"]).records
    assert 30 <= len(queries) <= 50
    assert not {q.id for q in queries} & {r.id for r in reference}
    with (EXAMPLES / "queries_truth.tsv").open(encoding="utf-8", newline="") as fh:
        truth = {row["query_id"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert set(truth) == {q.id for q in queries}
    absent = {row["species"] for row in truth.values() if row["in_reference"] == "no"}
    assert 4 <= len(absent) <= 5 and not absent & species
    present = {row["species"] for row in truth.values() if row["in_reference"] == "yes"}
    assert present <= species
    genera = {r.label("genus") for r in reference}
    assert all(row["genus"] in genera for row in truth.values())  # absent species of known genera
