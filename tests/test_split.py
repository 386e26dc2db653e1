"""`clibd split`: the CLIBD seen/unseen partition, on the real BIOSCAN-1M metadata and small tables."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import SHARED
from typer.testing import CliRunner

from clibd_cli.app import app
from clibd_cli.split import SEEN_SPLITS, UNSEEN_SPLITS, clibd_split, split_table

METADATA = ("bioscan1m_metadata/bioscan1m_small_dataset_validation_metadata_bba882e.tsv",
            "bioscan1m_metadata/bioscan1m_small_dataset_validation_metadata_dba8b59.tsv")


def _metadata(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the real BIOSCAN-1M metadata exists only in the clibd "
                    "development setup and is never copied into the repository")
    return path


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module", params=METADATA, ids=lambda p: p.rsplit("_", 1)[-1])
def real(request):
    path = _metadata(request.param)
    _, rows = _read(path)
    species = [row["species"] for row in rows]
    return path, species, clibd_split(species, seed=0)


def _species_by_split(species, splits):
    out = defaultdict(set)
    for label, split in zip(species, splits, strict=True):
        if label.strip():
            out[split].add(label.strip())
    return out


def test_seen_and_unseen_species_are_disjoint(real):
    _, species, splits = real
    by_split = _species_by_split(species, splits)
    seen = set().union(*(by_split[s] for s in SEEN_SPLITS))
    unseen = set().union(*(by_split[s] for s in UNSEEN_SPLITS))
    assert seen and unseen
    assert not seen & unseen
    val = by_split["val_unseen"] | by_split["val_unseen_keys"]
    test = by_split["test_unseen"] | by_split["test_unseen_keys"]
    assert not val & test


def test_seen_records_follow_70_10_10_10(real):
    _, species, splits = real
    counts = Counter(s for s in splits if s in SEEN_SPLITS)
    total = sum(counts.values())
    for name, share in zip(SEEN_SPLITS, (0.7, 0.1, 0.1, 0.1), strict=True):
        assert abs(counts[name] / total - share) <= 0.03, (name, counts[name], total)
    by_split = _species_by_split(species, splits)
    seen = set().union(*(by_split[s] for s in SEEN_SPLITS))
    assert by_split["seen_keys"] == seen  # every seen species has at least one key


def test_unseen_share_of_eligible_species(real):
    _, species, splits = real
    sizes = Counter(s.strip() for s in species if s.strip())
    eligible = {s for s, n in sizes.items() if n >= 10}
    by_split = _species_by_split(species, splits)
    unseen = set().union(*(by_split[s] for s in UNSEEN_SPLITS)) & eligible
    seen = set().union(*(by_split[s] for s in SEEN_SPLITS))
    assert seen | unseen == eligible
    assert abs(len(unseen) / len(eligible) - 0.2) <= max(0.05, 1 / len(eligible))
    # species with 2..9 records are all unseen, singletons all single_species
    for label, n in sizes.items():
        assigned = {split for s, split in zip(species, splits, strict=True) if s.strip() == label}
        if n == 1:
            assert assigned == {"single_species"}
        elif n < 10:
            assert assigned <= set(UNSEEN_SPLITS)


def test_every_unseen_species_has_a_query_and_a_key(real):
    _, species, splits = real
    per_species = defaultdict(Counter)
    for label, split in zip(species, splits, strict=True):
        if split in UNSEEN_SPLITS:
            per_species[label.strip()][split] += 1
    assert per_species
    for label, counts in per_species.items():
        prefixes = {split.split("_")[0] for split in counts}
        assert len(prefixes) == 1, label
        prefix = prefixes.pop()
        assert counts[f"{prefix}_unseen"] >= 1 and counts[f"{prefix}_unseen_keys"] >= 1, label
        assert abs(counts[f"{prefix}_unseen"] - counts[f"{prefix}_unseen_keys"]) <= 1, label
    queries = sum(1 for s in splits if s in ("val_unseen", "test_unseen"))
    keys = sum(1 for s in splits if s in ("val_unseen_keys", "test_unseen_keys"))
    assert abs(queries - keys) <= 1


def test_records_without_species_are_pretraining_only(real):
    _, species, splits = real
    assert all(split == "no_split" for label, split in zip(species, splits, strict=True) if not label.strip())
    assert all(split != "no_split" for label, split in zip(species, splits, strict=True) if label.strip())


def test_deterministic_per_seed(real):
    _, species, splits = real
    assert clibd_split(species, seed=0) == splits
    assert clibd_split(species, seed=1) != splits


def test_cli_writes_all_columns_and_refuses_overwrite(tmp_path):
    path = _metadata(METADATA[0])
    header, rows = _read(path)
    out = tmp_path / "splits.tsv"
    runner = CliRunner()
    result = runner.invoke(app, ["split", str(path), "-o", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "train_seen" in result.output and "seen_keys" in result.output
    out_header, out_rows = _read(out)
    assert out_header == [*header, "split"]
    assert len(out_rows) == len(rows)
    assert all({k: r[k] for k in header} == row for r, row in zip(out_rows, rows, strict=True))
    species = [row["species"] for row in rows]
    assert [r["split"] for r in out_rows] == clibd_split(species, seed=0)

    before = out.read_bytes()
    again = runner.invoke(app, ["split", str(path), "-o", str(out), "--seed", "1"])
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert out.read_bytes() == before
    forced = runner.invoke(app, ["split", str(path), "-o", str(out), "--seed", "1", "--force"])
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes() != before


def test_cli_user_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["split", str(tmp_path / "nope.tsv"), "-o", str(tmp_path / "o.tsv")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    table = tmp_path / "no_species.csv"
    table.write_text("processid,genus\nA1,Aedes\n", encoding="utf-8")
    result = runner.invoke(app, ["split", str(table), "-o", str(tmp_path / "o.tsv")])
    assert result.exit_code == 2 and "no species column" in result.output
    assert not (tmp_path / "o.tsv").exists()


def test_bioscan5m_split_column_is_kept(tmp_path):
    table = tmp_path / "bioscan5m.csv"
    rows = [("P1", "Aedes aegypti", "train"), ("P2", "Aedes aegypti", "key_unseen"),
            ("P3", "", "pretrain"), ("P4", "Culex pipiens", "val_unseen"), ("P5", "Culex pipiens", "test"),
            ("P6", "Musca domestica", "other_heldout")]
    table.write_text("processid,species,split\n" + "".join(",".join(r) + "\n" for r in rows),
                     encoding="utf-8")
    out = tmp_path / "out.tsv"
    summary = split_table(table, out)
    assert summary["source"] == "existing"
    header, written = _read(out)
    assert header == ["processid", "species", "split"]
    assert [tuple(r.values()) for r in written] == rows
    assert summary["splits"]["train"] == {"records": 1, "species": 1}
    result = CliRunner().invoke(app, ["split", str(table), "-o", str(tmp_path / "cli.tsv")])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output


def test_small_groups_and_singletons():
    species = ["a"] * 12 + ["b"] * 3 + ["c"] + ["", "not_classified"] + [f"s{i}" for i in range(10)
                                                                           for _ in range(10)]
    splits = clibd_split(species, seed=3)
    assert splits[12:15] != ["no_split"] * 3 and set(splits[12:15]) <= set(UNSEEN_SPLITS)
    assert splits[15] == "single_species"
    assert splits[16:18] == ["no_split", "no_split"]
    unseen_large = {s for s, split in zip(species, splits, strict=True) if split in UNSEEN_SPLITS} - {"b"}
    assert len(unseen_large) == 2  # round(0.2 * 11 eligible species)


def test_named_unseen_species():
    species = [f"s{i}" for i in range(12) for _ in range(10 + i % 3)]
    drawn = clibd_split(species, seed=5)
    held_out = {s for s, split in zip(species, drawn, strict=True) if split in UNSEEN_SPLITS}
    assert clibd_split(species, seed=5, unseen=held_out) == drawn  # naming the drawn species changes nothing
    chosen = clibd_split(species, seed=5, unseen={"s0", "s1", "s2"})
    assert {s for s, split in zip(species, chosen, strict=True) if split in UNSEEN_SPLITS} == {"s0", "s1", "s2"}
    with pytest.raises(ValueError, match="s99"):
        clibd_split(species, seed=5, unseen={"s99"})


def test_every_small_seen_species_trains_and_has_a_key():
    species = [f"s{i}" for i in range(40) for _ in range(2 + i % 3)]
    splits = clibd_split(species, seed=0, min_seen_records=2)
    for label in set(species):
        assigned = [split for s, split in zip(species, splits, strict=True) if s == label]
        if assigned[0] in SEEN_SPLITS:
            assert "train_seen" in assigned and "seen_keys" in assigned, (label, assigned)
