"""KmerTokenizer against a slow reference written from the layout description alone."""

from __future__ import annotations

import csv
import gzip
import io
import itertools

import numpy as np
import pytest
from conftest import requires_shared, shared_path
from hypothesis import given, settings
from hypothesis import strategies as st

from clibd_cli.sequences import normalise_sequence
from clibd_cli.tokenizer import KmerTokenizer, TokenizerConfig, encode_bases


def reference_tokenize(sequence: str, k: int, layout: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and attention mask for one sequence, spelled out position by position.

    current: [MASK]=0, [UNK]=1, k-mer id = 2 + base-4 index (A<C<G<T); the sequence is padded or
    truncated to max_len with N and cut into max_len // k non-overlapping k-mers; a k-mer with any
    non-ACGT letter is UNK; the mask is 1 for tokens holding at least one real base.
    legacy: <MASK>=0, <CLS>=1, <UNK>=2, k-mers from 3, tokens are [0] + ids, mask all ones.
    """
    offset, unk = (2, 1) if layout == "current" else (3, 2)
    real = min(len(sequence), max_len)
    padded = sequence[:max_len] + "N" * (max_len - real)
    ids, mask = [], []
    for position in range(max_len // k):
        kmer = padded[position * k : (position + 1) * k]
        if all(c in "ACGT" for c in kmer):
            index = 0
            for c in kmer:
                index = 4 * index + "ACGT".index(c)
            ids.append(offset + index)
        else:
            ids.append(unk)
        mask.append(1 if position * k < real else 0)
    if layout == "legacy":
        ids = [0, *ids]
        mask = [1] * len(ids)
    return ids, mask


def assert_matches_reference(tokenizer: KmerTokenizer, sequences: list[str]) -> None:
    ids, mask = tokenizer(sequences)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (len(sequences), tokenizer.seq_len)
    for row, sequence in enumerate(sequences):
        want_ids, want_mask = reference_tokenize(sequence, tokenizer.k, tokenizer.layout, tokenizer.max_len)
        assert ids[row].tolist() == want_ids, sequence
        assert mask[row].tolist() == want_mask, sequence
    assert ((ids >= 0) & (ids < tokenizer.vocab_size)).all()


mostly_dna = st.text(alphabet=st.sampled_from("ACGTACGTACGTACGTNNRYX-é"), max_size=160)


@settings(max_examples=250, deadline=None)
@given(sequences=st.lists(mostly_dna, min_size=1, max_size=6), k=st.integers(3, 6),
       layout=st.sampled_from(["current", "legacy"]), max_len=st.integers(1, 150))
def test_matches_reference(sequences, k, layout, max_len):
    assert_matches_reference(KmerTokenizer(k=k, layout=layout, max_len=max_len), sequences)


@settings(max_examples=60, deadline=None)
@given(sequences=st.lists(st.text(alphabet="ACGT", min_size=600, max_size=700), min_size=1, max_size=3),
       k=st.integers(3, 6), layout=st.sampled_from(["current", "legacy"]))
def test_matches_reference_on_barcode_lengths(sequences, k, layout):
    assert_matches_reference(KmerTokenizer(k=k, layout=layout, max_len=660), sequences)


@settings(max_examples=60, deadline=None)
@given(sequences=st.lists(mostly_dna, min_size=2, max_size=8), k=st.integers(3, 6))
def test_batch_equals_one_by_one(sequences, k):
    tokenizer = KmerTokenizer(k=k, max_len=64)
    ids, mask = tokenizer(sequences)
    for row, sequence in enumerate(sequences):
        one_ids, one_mask = tokenizer([sequence])
        assert (ids[row] == one_ids[0]).all() and (mask[row] == one_mask[0]).all()


@pytest.mark.parametrize(("k", "layout", "max_len", "seq_len", "vocab"), [
    (4, "current", 660, 165, 258),
    (5, "legacy", 660, 133, 1027),
    (6, "current", 660, 110, 4098),
    (3, "legacy", 10, 4, 67),
])
def test_sizes(k, layout, max_len, seq_len, vocab):
    tokenizer = KmerTokenizer(TokenizerConfig(k=k, layout=layout, max_len=max_len))
    assert tokenizer.seq_len == seq_len
    assert tokenizer.vocab_size == vocab
    ids, mask = tokenizer(["ACGT" * 200, ""])
    assert ids.shape == mask.shape == (2, seq_len)


def test_special_ids():
    current = KmerTokenizer(k=4, layout="current", max_len=12)
    assert (current.mask_id, current.unk_id, current.pad_id, current.cls_id) == (0, 1, 1, None)
    legacy = KmerTokenizer(k=5, layout="legacy", max_len=660)
    assert (legacy.mask_id, legacy.cls_id, legacy.unk_id) == (0, 1, 2)


def test_kmer_ids_are_lexicographic():
    for k, layout in itertools.product((3, 4, 5), ("current", "legacy")):
        tokenizer = KmerTokenizer(k=k, layout=layout)
        kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        ids = [tokenizer.kmer_to_id(kmer) for kmer in kmers]
        assert ids == list(range(tokenizer.offset, tokenizer.offset + 4**k))
        assert tokenizer.kmer_to_id("N" * k) == tokenizer.unk_id
        assert tokenizer.kmer_to_id("A" * (k + 1)) == tokenizer.unk_id
        # __call__ and kmer_to_id agree.
        sample = kmers[:: max(1, len(kmers) // 50)]
        ids_call, _ = tokenizer(sample)
        first = ids_call[:, 1 if layout == "legacy" else 0]
        assert first.tolist() == [tokenizer.kmer_to_id(kmer) for kmer in sample]


def test_worked_example_current():
    tokenizer = KmerTokenizer(k=4, layout="current", max_len=14)
    ids, mask = tokenizer(["ACGTAAAATTTTN", "ACGTAC"])
    # AAAA = 0, ACGT = 0*64 + 1*16 + 2*4 + 3 = 27, TTTT = 255; the 14th base is dropped (14 // 4 = 3).
    assert ids.tolist() == [[29, 2, 257], [29, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_worked_example_legacy():
    tokenizer = KmerTokenizer(k=5, layout="legacy", max_len=660)
    ids, mask = tokenizer(["AAAAACCCCC"])
    assert ids[0, :4].tolist() == [0, 3, 3 + 341, 2]
    assert (ids[0, 3:] == 2).all()
    assert mask.tolist() == [[1] * 133]


def test_lower_case_is_read_as_bases():
    tokenizer = KmerTokenizer(k=4, max_len=40)
    upper, _ = tokenizer(["ACGTTGCAAC"])
    lower, _ = tokenizer(["acgttgcaac"])
    assert (upper == lower).all()


def test_encode_bases():
    codes = encode_bases(["ACGTN", "ac", "AXé"], 4)
    assert codes.tolist() == [[0, 1, 2, 3], [0, 1, 4, 4], [0, 4, 4, 4]]


def test_invalid_config():
    with pytest.raises(ValueError, match="layout"):
        TokenizerConfig(layout="bert")
    with pytest.raises(ValueError, match="k must be"):
        TokenizerConfig(k=0)
    with pytest.raises(ValueError, match="k must be"):
        TokenizerConfig(k=9)
    assert TokenizerConfig(k=5, layout="legacy").to_dict() == {"k": 5, "layout": "legacy", "max_len": 660}


def _real_sequences(limit: int) -> list[str]:
    path = shared_path("bold_insect_coi_dev.tsv.gz")
    with gzip.open(path, "rb") as fh:
        head = fh.read(1_500_000).decode()
    reader = csv.DictReader(io.StringIO(head[: head.rfind("\n")]), delimiter="\t")
    return [normalise_sequence(row["nucleotides"]) for row, _ in zip(reader, range(limit), strict=False)]


@requires_shared
@pytest.mark.parametrize(("k", "layout"), [(4, "current"), (5, "legacy"), (6, "current"), (3, "legacy")])
def test_real_bold_sequences(k, layout):
    sequences = _real_sequences(300)
    assert len(sequences) == 300
    assert any("N" in s for s in sequences) and any(len(s) < 660 for s in sequences)
    tokenizer = KmerTokenizer(k=k, layout=layout, max_len=660)
    assert_matches_reference(tokenizer, sequences)
