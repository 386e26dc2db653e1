"""Search engines: hnswlib where it is installed, exact NumPy where it is not, one index format for both.

"Without hnswlib" is made real in-process by putting None in ``sys.modules['hnswlib']``: Python's
import then raises ImportError, exactly as on a machine where it is not installed.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import ROOT, clibd_ok, invoke, one_error_line, read_rows

import clibd_cli.index as index_module
from clibd_cli.encoders import KmerProfileEncoder
from clibd_cli.errors import InputError
from clibd_cli.index import MANIFEST, ReferenceIndex
from clibd_cli.search import load_vectors, read_hnsw_vectors, save_vectors
from clibd_cli.sequences import SequenceStream

hnswlib = pytest.importorskip("hnswlib", reason="the hnswlib side of the comparison needs hnswlib")
EXAMPLES = ROOT / "examples"


@pytest.fixture
def no_hnswlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "hnswlib", None)


@pytest.fixture
def graph_always(monkeypatch):
    """Search through the graph even on the small bundled example (normally searched exactly)."""
    monkeypatch.setattr(index_module, "EXACT_MAX", 0)


def example_index(directory):
    records = list(SequenceStream([EXAMPLES / "reference.fasta"]))
    ReferenceIndex.from_records(records, KmerProfileEncoder()).save(directory)
    return directory


def part_file(directory):
    manifest = json.loads((directory / MANIFEST).read_text())["parts"]["dna"]
    return directory / manifest["file"], manifest


def test_numpy_reads_the_vectors_of_an_hnswlib_graph(tmp_path):
    """Vectors go into the graph in a shuffled order, so labels and internal ids differ: the reader
    must return row j = label j, as hnswlib's own get_items does."""
    file, manifest = part_file(example_index(tmp_path / "idx"))
    dim = manifest["encoder"]["dim"]
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.load_index(str(file))
    count = graph.get_current_count()
    expected = np.asarray(graph.get_items(np.arange(count), return_type="numpy"), dtype=np.float32)
    read = read_hnsw_vectors(file, dim)
    assert read.shape == (count, dim) and np.array_equal(read, expected)
    with pytest.raises(InputError, match="not an hnswlib graph of 64-dimensional"):
        read_hnsw_vectors(file, 64)


def test_vector_files_are_data_only(tmp_path):
    good = tmp_path / "v.npy"
    save_vectors(np.eye(3, 4), good)
    assert load_vectors(good, 4).dtype == np.float32
    with pytest.raises(InputError, match=r"not float32 \[n, 5\]"):
        load_vectors(good, 5)
    pickled = tmp_path / "p.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot be read as vectors"):
        load_vectors(pickled, 4)


def test_one_format_both_ways(tmp_path, monkeypatch):
    """An index built without hnswlib stores .npy vectors and opens with hnswlib; one built with
    hnswlib opens without it; both give the graph's top hits on the bundled example."""
    with_graph = example_index(tmp_path / "graph")
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    flat = example_index(tmp_path / "flat")
    flat_file, flat_manifest = part_file(flat)
    graph_file, graph_manifest = part_file(with_graph)
    assert (flat_file.suffix, flat_manifest["search"]) == (".npy", "exact")
    assert (graph_file.suffix, graph_manifest["search"]) == (".hnsw", "hnswlib")

    opened_without = ReferenceIndex.load(with_graph)
    assert opened_without.search_engine == "exact"
    assert "hnswlib is not installed" in opened_without.search_description()
    monkeypatch.delitem(sys.modules, "hnswlib")
    opened_with = ReferenceIndex.load(flat)
    assert opened_with.search_engine == "exact"
    assert "built without hnswlib" in opened_with.search_description()
    graph = ReferenceIndex.load(with_graph)
    assert graph.search_engine == "hnswlib"
    assert np.array_equal(graph.vectors(), opened_with.vectors())

    queries = KmerProfileEncoder().encode([r.sequence for r in SequenceStream([EXAMPLES / "queries.fasta"])])
    monkeypatch.setattr(index_module, "EXACT_MAX", 0)
    by_graph = graph.search(queries, 5)
    for other in (opened_without, opened_with):
        found = other.search(queries, 5)
        np.testing.assert_array_equal(found.labels[:, 0], by_graph.labels[:, 0])
        np.testing.assert_allclose(found.similarities, by_graph.similarities, atol=1e-6)


def test_append_without_hnswlib_to_a_graph_index(tmp_path, monkeypatch):
    """A lab without a compiler adds references to an index built elsewhere: it becomes exact-search."""
    directory = example_index(tmp_path / "idx")
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    extra = tmp_path / "extra.fasta"
    extra.write_text(">EXTRA1|Vomeptera|Stugaecaemidae|Lestotocera|Lestotocera nova\n" + "ACGT" * 160 + "\n")
    result = invoke("build-index", "--barcodes", extra, "-o", directory, "--append")
    assert result.exit_code == 0, result.output
    index = ReferenceIndex.load(directory)
    assert index.size == 194 and part_file(directory)[0].suffix == ".npy"


def test_match_is_identical_with_and_without_hnswlib(tmp_path, monkeypatch, graph_always):
    """The README's barcode job: rows and top hits (ids, identities, calls) do not depend on the engine,
    even with the graph searched on this small index (normally exact below 10,000 vectors); nor do the calls
    of Leray reads, whose candidates also come from the 12-mer word table both engines save in the index."""
    reads = tmp_path / "leray.fasta"
    reads.write_text("".join(f">{r.id}\n{r.sequence[-313:]}\n" for r in SequenceStream([EXAMPLES / "queries.fasta"])))
    outputs = {}
    for engine in ("hnswlib", "exact"):
        if engine == "exact":
            monkeypatch.setitem(sys.modules, "hnswlib", None)
        index, out = tmp_path / f"idx-{engine}", tmp_path / engine
        out.mkdir()
        clibd_ok("build-index", "--barcodes", EXAMPLES / "reference.fasta", "-o", index)
        clibd_ok("match", EXAMPLES / "queries.fasta", "--index", index, "-o", out / "calls.json",
                 "--hits", out / "hits.tsv")
        clibd_ok("match", reads, "--index", index, "-o", out / "reads.csv")
        document = json.loads((out / "calls.json").read_text())
        assert (index / part_file(index)[1]["words"]).is_file()
        outputs[engine] = (document["results"], read_rows(out / "hits.tsv"), document["info"]["search"],
                           read_rows(out / "reads.csv"))
    (rows, hits, search, fragments), (exact_rows, exact_hits, exact_search, exact_fragments) = \
        outputs["hnswlib"], outputs["exact"]
    assert len(rows) == 40 and rows == exact_rows
    assert len(hits) > 150 and hits == exact_hits
    assert search.startswith("hnswlib HNSW graph") and exact_search.startswith("exact (index built without")
    assert sum(row["status"] == "assigned" for row in fragments) >= 20 and fragments == exact_fragments


def test_classify_is_identical_with_and_without_hnswlib(tmp_path, monkeypatch, graph_always):
    model = EXAMPLES / "demo-model"
    outputs = {}
    for engine in ("hnswlib", "exact"):
        if engine == "exact":
            monkeypatch.setitem(sys.modules, "hnswlib", None)
        index, out = tmp_path / f"idx-{engine}", tmp_path / f"{engine}.csv"
        clibd_ok("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", model, "-o", index)
        clibd_ok("classify", EXAMPLES / "photos", "--model", model, "--index", index, "-o", out,
                 "--hits", tmp_path / f"{engine}-hits.csv")
        outputs[engine] = (read_rows(out), read_rows(tmp_path / f"{engine}-hits.csv"))
    assert len(outputs["hnswlib"][0]) >= 10
    assert outputs["hnswlib"] == outputs["exact"]


def test_large_index_says_once_that_search_is_exact(tmp_path, monkeypatch, no_hnswlib):
    index = tmp_path / "idx"
    clibd_ok("build-index", "--barcodes", EXAMPLES / "reference.fasta", "-o", index)
    monkeypatch.setattr(index_module, "EXACT_MAX", 100)  # the example (193 records) counts as large
    result = invoke("match", EXAMPLES / "queries.fasta", "--index", index, "-o", tmp_path / "calls.tsv")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "search:" in line]
    assert len(notes) == 1 and "exact" in notes[0] and "built without hnswlib" in notes[0]


def test_asking_for_hnswlib_where_it_is_missing(tmp_path, monkeypatch, no_hnswlib):
    monkeypatch.setenv("CLIBD_SEARCH", "hnswlib")
    one_error_line(invoke("build-index", "--barcodes", EXAMPLES / "reference.fasta", "-o", tmp_path / "idx"),
                   "hnswlib is not installed", "clibd[hnsw]")


def test_note_names_the_extra_and_why(tmp_path, monkeypatch):
    """The note is printed through Rich: the extra's name must survive markup ('[hnsw]' is not a style)."""
    index = tmp_path / "idx"
    clibd_ok("build-index", "--barcodes", EXAMPLES / "reference.fasta", "-o", index)
    monkeypatch.setattr(index_module, "EXACT_MAX", 100)
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    result = invoke("match", EXAMPLES / "queries.fasta", "--index", index, "-o", tmp_path / "a.tsv")
    note = " ".join(result.stderr.split())
    assert "hnswlib is not installed; pip install 'clibd[hnsw]'" in note, note
    monkeypatch.delitem(sys.modules, "hnswlib")
    monkeypatch.setenv("CLIBD_SEARCH", "exact")
    result = invoke("match", EXAMPLES / "queries.fasta", "--index", index, "-o", tmp_path / "b.tsv")
    assert "search: exact (CLIBD_SEARCH=exact)" in " ".join(result.stderr.split())


def test_build_summary_names_the_search_match_runs(tmp_path, monkeypatch):
    """The README promises that build-index's summary says which search runs: on a small reference that is exact
    search, though the graph is built for when the reference grows, and the summary said `search: hnswlib`."""
    import re

    readme = " ".join((ROOT / "README.md").read_text().split())
    index = tmp_path / "idx"
    built = clibd_ok("build-index", "--barcodes", EXAMPLES / "reference.fasta", "-o", index)
    out = tmp_path / "out.json"
    clibd_ok("match", EXAMPLES / "queries.fasta", "--index", index, "-o", out)
    engine = json.loads(out.read_text())["info"]["search"]
    assert engine.startswith("exact (") and "hnswlib graph beyond" in engine
    assert f"search: {engine})" in " ".join(built.stderr.split())
    example = re.search(r"`(search: exact \([\d,]+ distinct vectors ≤ [\d,]+; hnswlib graph beyond\))`", readme)
    assert example and re.sub(r"[\d,]+ distinct", "N distinct", example.group(1)) == re.sub(
        r"[\d,]+ distinct", "N distinct", f"search: {engine}")
    monkeypatch.setattr(index_module, "EXACT_MAX", 10)
    graph = ReferenceIndex.load(index).search_description()
    assert f"`search: {graph}`" in readme
