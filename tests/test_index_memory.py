"""A large index without its vectors twice in memory: the graph is built from a scratch file a chunk at a
time, a saved part reads candidate rows from its graph file, and none of it changes a result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

import clibd_cli.index as index_module
import clibd_cli.search as search_module
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.index import MANIFEST, ReferenceIndex
from clibd_cli.search import GraphRows, SpilledVectors, build_graph, read_hnsw_vectors, rescore
from clibd_cli.sequences import SequenceStream

hnswlib = pytest.importorskip("hnswlib", reason="the graph side needs hnswlib")
EXAMPLES = ROOT / "examples"


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def graph_file(directory):
    part = json.loads((directory / MANIFEST).read_text())["parts"]["dna"]
    return directory / part["file"], part["encoder"]["dim"]


def test_chunked_insertion_builds_the_same_graph(tmp_path):
    """One thread inserts in a fixed order, so the chunked build must save the very bytes of a one-shot build."""
    vectors = unit_vectors(700, 16)
    whole = hnswlib.Index(space="ip", dim=16)
    whole.init_index(max_elements=700, ef_construction=search_module.HNSW_EF_CONSTRUCTION, M=search_module.HNSW_M,
                     random_seed=100)
    order = np.random.default_rng(0).permutation(700)
    whole.add_items(vectors[order], order, num_threads=1)
    whole.save_index(str(tmp_path / "whole.hnsw"))
    spill = SpilledVectors(vectors, tmp_path / "spill")
    build_graph(spill, threads=1, chunk=64).save_index(str(tmp_path / "chunked.hnsw"))
    assert (tmp_path / "whole.hnsw").read_bytes() == (tmp_path / "chunked.hnsw").read_bytes()


def test_spilled_vectors_read_back_the_rows_asked_for(tmp_path):
    vectors = unit_vectors(50, 8)
    spill = SpilledVectors(vectors, tmp_path / "spill")
    rows = np.array([49, 0, 7, 7, 3])
    assert len(spill) == 50 and spill.shape == (50, 8)
    assert np.array_equal(spill[rows], vectors[rows])


def test_graph_rows_are_the_graph_vectors_by_label(tmp_path):
    """Rows read by offset equal hnswlib's get_items, in the order and with the repeats asked for."""
    records = list(SequenceStream([EXAMPLES / "reference.fasta"]))
    ReferenceIndex.from_records(records, KmerProfileEncoder()).save(tmp_path / "idx")
    file, dim = graph_file(tmp_path / "idx")
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.load_index(str(file))
    rows = np.array([5, 0, graph.get_current_count() - 1, 5])
    expected = np.asarray(graph.get_items(rows, return_type="numpy"), dtype=np.float32)
    read = GraphRows(file, dim)
    assert np.array_equal(read(rows), expected)
    assert read(np.array([], dtype=np.int64)).shape == (0, dim)
    # the chunked whole-file reader agrees with itself whatever the chunk
    assert np.array_equal(read_hnsw_vectors(file, dim, chunk=7), read_hnsw_vectors(file, dim))


def test_a_saved_part_drops_its_vectors_and_records_and_finds_the_same(tmp_path, monkeypatch):
    """After a save the part holds neither its vectors nor its records, reads them back unchanged, and
    searches (through the graph, rescored from rows read off the file) exactly as the loaded index does
    and as rescoring over all vectors would."""
    monkeypatch.setattr(index_module, "EXACT_MAX", 0)
    records = list(SequenceStream([EXAMPLES / "reference.fasta"]))
    encoder = KmerProfileEncoder()
    part = ReferenceIndex.from_records(records, encoder)
    vectors = part.vectors().copy()
    part.save(tmp_path / "idx")
    assert part._vectors is None and part._records is None
    assert [(r.id, r.sequence, r.taxonomy, r.bin) for r in part.records()] == \
        [(r.id, r.sequence, r.taxonomy, r.bin) for r in records]
    queries = encoder.encode([r.sequence for r in records[:40]])
    labels, sims = part.search_vectors(queries, 8)
    loaded = ReferenceIndex.load(tmp_path / "idx")
    loaded_labels, loaded_sims = loaded.search_vectors(queries, 8)
    assert np.array_equal(labels, loaded_labels) and np.array_equal(sims, loaded_sims)
    assert loaded._vectors is None  # searching never loaded the whole matrix
    raw = loaded._graph.knn_query(queries, k=8)[0].astype(np.int64)
    all_labels, all_sims = rescore(queries, vectors, raw)
    assert np.array_equal(labels, all_labels) and np.array_equal(sims, all_sims)
    assert np.array_equal(part.vectors(), vectors)


def test_a_failed_graph_build_gives_the_part_back_its_vectors_and_records(tmp_path, monkeypatch):
    records = list(SequenceStream([EXAMPLES / "reference.fasta"]))
    part = ReferenceIndex.from_records(records, KmerProfileEncoder())
    vectors = part.vectors().copy()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_module, "build_graph", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        part.save(tmp_path / "idx")
    assert np.array_equal(part.vectors(), vectors)
    assert [r.id for r in part.records()] == [r.id for r in records]
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").rglob("*.vectors"))
