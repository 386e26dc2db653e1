"""The reference index: build, save, load, search (exact and HNSW), append, refuse mismatches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_reference, to_records

import clibd_cli.index as index_module
from clibd_cli.align import CONVENTIONAL
from clibd_cli.checksums import sealed
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.errors import ClibdError, IndexMismatchError, InputError
from clibd_cli.index import MANIFEST, RECORDS_DB, ReferenceIndex
from clibd_cli.indexdir import LOCK
from clibd_cli.search import exact_knn
from clibd_cli.sequences import RANKS


@pytest.fixture(scope="module")
def records():
    return to_records(make_reference(seed=21, orders=2, families=2, genera=3, species=3, specimens=3))


@pytest.fixture(scope="module")
def encoder():
    return KmerProfileEncoder()


def leftovers(directory):
    """Temporary or backup siblings a save may have left next to `directory`."""
    return [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")]


def test_round_trip(tmp_path, records, encoder):
    built = ReferenceIndex.from_records(records, encoder)
    target = tmp_path / "idx"
    assert built.save(target) == target
    assert sorted(p.name for p in target.iterdir()) == [LOCK, "gen-000001", MANIFEST]
    assert sorted(p.name for p in (target / "gen-000001").iterdir()) == ["dna.hnsw", "dna.words", RECORDS_DB]
    loaded = ReferenceIndex.load(target)
    assert loaded.size == len(records) == 108
    assert loaded.fingerprint == built.fingerprint
    assert loaded.encoder_fingerprint == encoder.fingerprint
    assert loaded.encoder().fingerprint == encoder.fingerprint
    stored = json.loads((target / MANIFEST).read_text())
    assert stored["format_version"] == 4 and list(stored["parts"]) == ["dna"]
    assert stored["records"] == f"gen-000001/{RECORDS_DB}"
    manifest = stored["parts"]["dna"]
    counts = manifest["counts"]
    assert {rank: counts[rank] for rank in ("records", *RANKS)} == \
        {"records": 108, "order": 2, "family": 4, "genus": 12, "species": 36}
    assert manifest["file"] == "gen-000001/dna.hnsw"
    assert counts["vectors"] == len(loaded.vectors()) <= 108
    assert manifest["thresholds"] == CONVENTIONAL  # barcodes are called on identity until calibrated
    assert list(loaded.labels.record_id) == [r.id for r in records]
    for rank in RANKS:
        assert list(loaded.labels.ranks[rank]) == [r.label(rank) for r in records]
    assert list(loaded.labels.bin) == [r.bin for r in records]
    back = loaded.records()
    assert [(r.id, r.sequence, r.taxonomy, r.bin, r.source, r.flags) for r in back] == \
        [(r.id, r.sequence, r.taxonomy, r.bin, r.source, r.flags) for r in records]
    np.testing.assert_array_equal(loaded.vectors(), built.vectors())
    queries = encoder.encode([r.sequence for r in records[::7]])
    a, b = built.search(queries, 5), loaded.search(queries, 5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-6)
    assert not leftovers(target)


def test_self_search_finds_itself_and_its_species(records, encoder):
    index = ReferenceIndex.from_records(records, encoder)
    found = index.search(encoder.encode([r.sequence for r in records]), 3)
    np.testing.assert_allclose(found.similarities[:, 0], 1.0, atol=1e-5)
    # The top hit is the query itself, or a specimen with the very same haplotype.
    top = [records[label - 1].sequence for label in found.labels[:, 0]]
    assert top == [r.sequence for r in records]
    assert (found.labels[:, 0] == np.arange(1, len(records) + 1)).mean() > 0.9
    assert (np.diff(found.similarities, axis=1) <= 1e-7).all()
    taxonomy = index.taxonomy_of(found.labels)
    # Each species has 3 specimens, so the two other hits are the same species.
    assert (taxonomy["species"][:, 1] == taxonomy["species"][:, 0]).all()
    assert (taxonomy["species"][:, 2] == taxonomy["species"][:, 0]).all()


def test_hnsw_search_equals_exact(tmp_path, records, encoder, monkeypatch):
    ReferenceIndex.from_records(records, encoder).save(tmp_path / "idx")
    loaded = ReferenceIndex.load(tmp_path / "idx")
    queries = encoder.encode([r.sequence for r in make_reference(seed=21, orders=2, families=2, genera=3,
                                                                  species=3, specimens=4)[3::4]])
    exact = loaded.search(queries, 10, exact=True)

    calls = []

    class Spy:
        def __init__(self, graph):
            self.graph = graph

        def __getattr__(self, name):
            return getattr(self.graph, name)

        def knn_query(self, *args, **kwargs):
            calls.append(args[0].shape)
            return self.graph.knn_query(*args, **kwargs)

    loaded._graph = Spy(loaded._graph)
    monkeypatch.setattr(index_module, "EXACT_MAX", 10)
    approximate = loaded.search(queries, 10)
    assert calls == [queries.shape]
    # Same neighbours up to the order of exact ties (specimens may share a haplotype or a profile):
    # the similarity lists are equal and every returned label really has the similarity reported.
    np.testing.assert_allclose(approximate.similarities, exact.similarities, atol=1e-5)
    record_vectors = encoder.encode([r.sequence for r in records])
    true_sims = np.take_along_axis(queries @ record_vectors.T, approximate.labels - 1, axis=1)
    np.testing.assert_allclose(approximate.similarities, true_sims, atol=1e-5)
    assert (approximate.labels == exact.labels).mean() > 0.9
    # Below EXACT_MAX the graph is not consulted.
    monkeypatch.setattr(index_module, "EXACT_MAX", 10_000)
    loaded.search(queries, 10)
    assert len(calls) == 1


def test_more_neighbours_than_references(records, encoder):
    index = ReferenceIndex.from_records(records[:4], encoder)
    found = index.search(encoder.encode([records[0].sequence]), 6)
    assert found.labels.shape == (1, 6)
    assert found.labels[0, 4:].tolist() == [-1, -1]
    assert np.isneginf(found.similarities[0, 4:]).all()
    assert sorted(found.labels[0, :4].tolist()) == [1, 2, 3, 4]
    assert index.taxonomy_of(found.labels)["species"][0, 5] == ""


def test_exact_knn_exclude():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exclude = np.zeros((20, 20), dtype=bool)
    exclude[np.arange(20), np.arange(20)] = True
    exclude[:, 0] = True
    labels, sims = exact_knn(vectors, vectors, 3, chunk=7, exclude=exclude)
    assert not (labels == np.arange(20)[:, None]).any()
    assert not (labels == 0).any()
    full = vectors @ vectors.T
    full[exclude] = -np.inf
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :3], atol=1e-6)


def test_append(tmp_path, records, encoder):
    target = tmp_path / "idx"
    first, rest = records[:60], records[60:]
    ReferenceIndex.from_records(first, encoder).save(target)
    loaded = ReferenceIndex.load(target)
    bigger = loaded.appended(rest, encoder)
    bigger.save(target)  # saving over its own directory needs no force
    again = ReferenceIndex.load(target)
    assert again.size == len(records)
    assert list(again.labels.record_id) == [r.id for r in records]
    assert again.manifest["counts"]["records"] == len(records)
    assert again.fingerprint == ReferenceIndex.from_records(records, encoder).fingerprint
    assert again.fingerprint != loaded.fingerprint
    found = again.search(encoder.encode([r.sequence for r in rest]), 1)
    assert [again.records()[label - 1].sequence for label in found.labels[:, 0]] == [r.sequence for r in rest]
    assert (found.labels[:, 0] == np.arange(61, len(records) + 1)).mean() > 0.9
    np.testing.assert_allclose(found.similarities[:, 0], 1.0, atol=1e-5)
    assert not leftovers(target)


def test_the_word_table_is_saved_mapped_and_follows_appends(tmp_path, records, encoder):
    """`build-index` saves the 12-mer table that proposes a read's candidates; a loaded index maps it (not built
    again) and it equals the table built from the barcodes; an append saves one that holds the new barcodes; and
    an index saved before the table was (no ``words`` in its manifest) builds the same table on first use."""
    from clibd_cli.anchors import AnchorTable

    target = tmp_path / "idx"
    first, rest = records[:60], records[60:]
    ReferenceIndex.from_records(first, encoder).save(target)
    bigger = ReferenceIndex.load(target).appended(rest, encoder)
    bigger.save(target)
    loaded = ReferenceIndex.load(target)
    table = loaded.anchors()
    assert isinstance(table.owners, np.memmap) and loaded._input_codes is None  # mapped, nothing encoded
    built = AnchorTable.of(loaded.vector_inputs())
    assert all(np.array_equal(getattr(table, a), getattr(built, a)) for a in ("words", "starts", "owners"))
    last = rest[-1]
    vector = int(loaded.labels.vector[len(records) - 1])
    assert table.candidates(last.sequence[-200:], 1)[0] == vector  # an appended barcode is in the table

    stored = json.loads((target / MANIFEST).read_text())
    for key in ("words", "words_sha256"):
        del stored["parts"]["dna"][key]
    (target / MANIFEST).write_text(json.dumps(sealed(stored), indent=2))
    older = ReferenceIndex.load(target)
    rebuilt = older.anchors()
    assert not isinstance(rebuilt.owners, np.memmap)
    assert all(np.array_equal(getattr(rebuilt, a), getattr(built, a)) for a in ("words", "starts", "owners"))
    older.save(target)  # saved again, unchanged: the table is written now
    assert "words" in json.loads((target / MANIFEST).read_text())["parts"]["dna"]
    assert isinstance(ReferenceIndex.load(target).anchors().owners, np.memmap)


def test_append_rejects_duplicate_ids(tmp_path, records, encoder):
    target = tmp_path / "idx"
    ReferenceIndex.from_records(records[:60], encoder).save(target)
    before = (target / "gen-000001" / RECORDS_DB).read_bytes()
    loaded = ReferenceIndex.load(target)
    with pytest.raises(InputError, match=rf"id '{records[10].id}' is already in the index"):
        loaded.appended([*records[60:70], records[10]], encoder)
    assert (target / "gen-000001" / RECORDS_DB).read_bytes() == before
    assert ReferenceIndex.load(target).size == 60


def test_other_encoder_is_refused(tmp_path, records, encoder):
    ReferenceIndex.from_records(records, encoder).save(tmp_path / "idx")
    loaded = ReferenceIndex.load(tmp_path / "idx")
    assert encoder.k == 5  # the default
    loaded.check_encoder(KmerProfileEncoder(k=5))
    for other in (KmerProfileEncoder(k=6), KmerProfileEncoder(k=5, sqrt=False)):
        with pytest.raises(IndexMismatchError, match="Rebuild the index") as info:
            loaded.check_encoder(other)
        assert str(tmp_path / "idx") in str(info.value)
        assert other.fingerprint in str(info.value) and encoder.fingerprint in str(info.value)
    with pytest.raises(IndexMismatchError):
        loaded.appended(records[:2], KmerProfileEncoder(k=6))


def test_save_refuses_existing_directory_without_force(tmp_path, records, encoder):
    target = tmp_path / "idx"
    ReferenceIndex.from_records(records[:30], encoder).save(target)
    other = ReferenceIndex.from_records(records[30:60], encoder)
    with pytest.raises(ClibdError, match="already exists"):
        other.save(target)
    assert ReferenceIndex.load(target).size == 30
    other.save(target, force=True)
    replaced = ReferenceIndex.load(target)
    assert replaced.size == 30 and replaced.labels.record_id[0] == records[30].id
    assert not leftovers(target)


def test_save_never_replaces_a_folder_that_is_not_an_index(tmp_path, records, encoder):
    target = tmp_path / "results"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    index = ReferenceIndex.from_records(records[:10], encoder)
    for force in (False, True):
        with pytest.raises(ClibdError, match="results"):
            index.save(target, force=force)
    assert (target / "precious.txt").read_text() == "keep me"
    assert not leftovers(target)


def test_save_into_empty_existing_directory(tmp_path, records, encoder):
    target = tmp_path / "empty"
    target.mkdir()
    ReferenceIndex.from_records(records[:10], encoder).save(target)
    assert ReferenceIndex.load(target).size == 10


def test_failed_save_leaves_nothing_behind(tmp_path, records, encoder, monkeypatch):
    target = tmp_path / "idx"
    ReferenceIndex.from_records(records[:20], encoder).save(target)
    def files():
        return {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    before = files()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_module, "build_graph", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ReferenceIndex.from_records(records, encoder).save(target, force=True)
    assert files() == before
    with pytest.raises(RuntimeError):
        ReferenceIndex.from_records(records, encoder).save(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_thresholds_saved_in_manifest(tmp_path, records, encoder):
    ReferenceIndex.from_records(records, encoder).save(tmp_path / "idx")
    loaded = ReferenceIndex.load(tmp_path / "idx")
    thresholds = {"order": 0.4, "family": 0.5, "genus": 0.6, "species": 0.9}
    loaded.set_thresholds(thresholds, {"method": "test"})
    loaded.save_manifest()
    again = ReferenceIndex.load(tmp_path / "idx")
    assert again.thresholds == thresholds
    assert again.manifest["calibration"] == {"method": "test"}
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".") and p.name != LOCK]


def test_load_errors(tmp_path, records, encoder):
    with pytest.raises(InputError, match="not a clibd index"):
        ReferenceIndex.load(tmp_path)
    good = tmp_path / "good"
    ReferenceIndex.from_records(records[:10], encoder).save(good)

    def broken_copy(name):
        copy = tmp_path / name
        shutil.copytree(good, copy)
        return copy

    bad_json = broken_copy("badjson")
    (bad_json / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ReferenceIndex.load(bad_json)

    version = broken_copy("version")
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["format_version"] = 99
    (version / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format version 99"):
        ReferenceIndex.load(version)

    count = broken_copy("count")
    manifest = json.loads((count / MANIFEST).read_text())
    manifest["parts"]["dna"]["counts"]["records"] = 11
    (count / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="modified by hand"):
        ReferenceIndex.load(count)
    (count / MANIFEST).write_text(json.dumps(sealed(manifest)))  # consistent, yet wrong about the data
    with pytest.raises(InputError, match="10 dna rows but the manifest says 11"):
        ReferenceIndex.load(count)

    graph = broken_copy("graph")
    (graph / "gen-000001" / "dna.hnsw").unlink()
    with pytest.raises(InputError, match=r"dna\.hnsw is missing"):
        ReferenceIndex.load(graph)

    db = broken_copy("db")
    (db / "gen-000001" / RECORDS_DB).unlink()
    with pytest.raises(InputError, match="missing"):
        ReferenceIndex.load(db)


def test_reference_without_taxonomy_is_refused(records, encoder):
    bare = [type(r)(r.id, r.sequence) for r in records[:5]]
    with pytest.raises(InputError, match="no record has a taxonomy"):
        ReferenceIndex.from_records(bare, encoder, what="bare.fasta")


def test_records_with_identical_sequences_are_all_found(tmp_path, records, encoder):
    twins = [type(r)(f"TWIN-{i}", records[0].sequence, dict(r.taxonomy), r.bin)
             for i, r in enumerate(records[:3])]
    index = ReferenceIndex.from_records([*twins, *records[3:20]], encoder)
    index.save(tmp_path / "idx")
    for candidate in (index, ReferenceIndex.load(tmp_path / "idx")):
        found = candidate.search(encoder.encode([records[0].sequence]), 4)
        assert sorted(found.labels[0, :3].tolist()) == [1, 2, 3]
        np.testing.assert_allclose(found.similarities[0, :3], 1.0, atol=1e-5)
        assert found.similarities[0, 3] < 1.0 - 1e-4
        assert list(candidate.labels.record_id[:3]) == ["TWIN-0", "TWIN-1", "TWIN-2"]


def test_barcode_codes_read_back_in_blocks_equal_the_built_ones(tmp_path, records, encoder, monkeypatch):
    """A loaded index encodes its barcodes from SQLite a block at a time; blocks of 3 barcodes, with shared
    barcodes, lengths that differ and an N, must give the codes the index was built with."""
    varied = [type(r)(r.id, r.sequence[: 400 + 7 * i] + ("N" if i == 5 else ""), dict(r.taxonomy), r.bin)
              for i, r in enumerate(records[:20])]
    twins = [type(r)(f"TWIN-{i}", varied[4].sequence, dict(r.taxonomy), r.bin) for i, r in enumerate(records[20:24])]
    built = ReferenceIndex.from_records([*varied, *twins], encoder)
    built.save(tmp_path / "idx")
    monkeypatch.setattr(index_module, "INPUT_BLOCK", 3)
    loaded = ReferenceIndex.load(tmp_path / "idx")
    every = range(len(built.vectors()))
    assert len(every) == 20  # the twins share barcode 4's vector
    got, expected = loaded.input_codes(every), built.input_codes(every)
    assert [len(c) for c in got] == [len(r.sequence) for r in varied]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert (got[5] == 4).any()  # N
