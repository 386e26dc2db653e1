"""KmerProfileEncoder: a vectorised k-mer profile checked against a slow dictionary count."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from conftest import make_reference, mutate, random_sequence
from hypothesis import given, settings
from hypothesis import strategies as st

from clibd_cli.encoders import (
    Encoder,
    KmerProfileEncoder,
    encoder_from_description,
    fingerprint_of,
)


def reference_profile(sequence: str, k: int, sqrt: bool = True, max_len: int = 2000) -> np.ndarray:
    """Overlapping k-mer counts (k-mers with a non-ACGT letter skipped), sqrt, then L2 norm."""
    sequence = sequence[:max_len].upper()
    counts = Counter(sequence[i : i + k] for i in range(len(sequence) - k + 1))
    vector = np.zeros(4**k)
    for kmer, count in counts.items():
        if all(c in "ACGT" for c in kmer):
            index = 0
            for c in kmer:
                index = 4 * index + "ACGT".index(c)
            vector[index] = math.sqrt(count) if sqrt else count
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


@settings(max_examples=150, deadline=None)
@given(sequences=st.lists(st.text(alphabet="ACGTACGTACGTNRY", max_size=90), min_size=1, max_size=5),
       k=st.integers(2, 5), sqrt=st.booleans(), max_len=st.sampled_from([7, 50, 2000]))
def test_matches_dict_reference(sequences, k, sqrt, max_len):
    encoder = KmerProfileEncoder(k=k, sqrt=sqrt, max_len=max_len)
    vectors = encoder.encode(sequences)
    assert vectors.shape == (len(sequences), 4**k) and vectors.dtype == np.float32
    for row, sequence in enumerate(sequences):
        np.testing.assert_allclose(vectors[row], reference_profile(sequence, k, sqrt, max_len), atol=1e-6)


@pytest.mark.parametrize("k", [None, 6])
def test_matches_reference_on_barcodes_across_batches(k):
    """The default k (5) and the novel-species k=6 on barcode-length sequences, split over batches."""
    rng = np.random.default_rng(1)
    sequences = [random_sequence(rng, int(n)) for n in rng.integers(300, 700, size=7)]
    encoder = KmerProfileEncoder() if k is None else KmerProfileEncoder(k=k)
    expected_k = 5 if k is None else k
    assert (encoder.k, encoder.dim) == (expected_k, 4**expected_k)
    vectors = encoder.encode(sequences, batch_size=3)
    assert vectors.shape == (len(sequences), 4**expected_k)
    for row, sequence in enumerate(sequences):
        np.testing.assert_allclose(vectors[row], reference_profile(sequence, expected_k), atol=1e-6)


def test_unit_norm_and_zero_for_nothing_countable():
    rng = np.random.default_rng(2)
    encoder = KmerProfileEncoder()
    assert encoder.k == 5
    vectors = encoder.encode([random_sequence(rng, 650), "ACGTA", "ACGT", "", "NNNNNNNNNN", "ACGNACGNACGN"])
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[:2], 1.0, rtol=1e-6)  # "ACGTA" is exactly one 5-mer
    assert (vectors[2:] == 0).all()  # shorter than k, empty, or every 5-mer holds an N


def test_kmers_with_n_are_ignored():
    encoder = KmerProfileEncoder(k=4)
    left, right = "ACGTTGCAAGGT", "CCATGATTACAG"
    joined = encoder.encode([left + "N" + right])[0]
    counts = np.zeros(4**4)
    for part in (left, right):
        for i in range(len(part) - 3):
            counts[int("".join(str("ACGT".index(c)) for c in part[i : i + 4]), 4)] += 1
    expected = np.sqrt(counts) / np.linalg.norm(np.sqrt(counts))
    np.testing.assert_allclose(joined, expected, atol=1e-6)
    # An N-only change in the middle costs exactly the k-mers it touches, not more.
    assert np.count_nonzero(joined) == np.count_nonzero(counts)


# Two unrelated random 658-bp barcodes share many k-mers by chance when there are only 4**k of them:
# their cosine is ~0.39-0.51 at k=5 (1,024 dimensions) and ~0.10-0.19 at k=6 (4,096) over 200 seeds.
@pytest.mark.parametrize(("k", "unrelated_below"), [(None, 0.5), (6, 0.3)])
def test_similarity_structure(k, unrelated_below):
    rng = np.random.default_rng(3)
    original = random_sequence(rng, 658)
    close = mutate(original, 0.01, rng)
    far = mutate(original, 0.20, rng)
    unrelated = random_sequence(rng, 658)
    encoder = KmerProfileEncoder() if k is None else KmerProfileEncoder(k=k)
    v = encoder.encode([original, original, close, far, unrelated])
    sims = v[1:] @ v[0]
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[0] > sims[1] > sims[2] > sims[3]
    assert sims[1] > 0.85
    assert sims[3] < unrelated_below
    assert sims[2] - sims[3] > 0.1  # 20 % divergence is still clearly closer than an unrelated barcode


def test_synthetic_reference_separates_ranks():
    specimens = make_reference(seed=11, orders=1, families=1, genera=2, species=2, specimens=2)
    v = KmerProfileEncoder().encode([s.sequence for s in specimens])
    sims = v @ v.T
    same_species = sims[0, 1]
    same_genus = sims[0, 2]
    other_genus = sims[0, 4]
    assert same_species > 0.9 > same_genus > other_genus


def test_identical_sequences_identical_vectors_regardless_of_batch_company():
    rng = np.random.default_rng(4)
    seq = random_sequence(rng, 500)
    encoder = KmerProfileEncoder()
    alone = encoder.encode([seq])[0]
    with_long_neighbour = encoder.encode([random_sequence(rng, 1500), seq])[1]
    np.testing.assert_array_equal(alone, with_long_neighbour)


def test_fingerprint_is_stable_and_depends_on_parameters():
    a, b = KmerProfileEncoder(), KmerProfileEncoder()
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16 and all(c in "0123456789abcdef" for c in a.fingerprint)
    assert a.fingerprint == fingerprint_of(a.describe())
    assert a.fingerprint == KmerProfileEncoder(k=5).fingerprint  # 5 is the default k
    others = {KmerProfileEncoder(k=6).fingerprint, KmerProfileEncoder(k=7).fingerprint,
              KmerProfileEncoder(sqrt=False).fingerprint, KmerProfileEncoder(max_len=1000).fingerprint}
    assert a.fingerprint not in others and len(others) == 4
    assert fingerprint_of({"x": 1, "y": 2}) == fingerprint_of({"y": 2, "x": 1})


def test_description_round_trip_and_protocol():
    encoder = KmerProfileEncoder(k=5, sqrt=False, max_len=900)
    rebuilt = encoder_from_description(encoder.describe())
    assert isinstance(rebuilt, KmerProfileEncoder) and isinstance(rebuilt, Encoder)
    assert rebuilt.fingerprint == encoder.fingerprint
    assert (rebuilt.k, rebuilt.sqrt, rebuilt.max_len, rebuilt.dim) == (5, False, 900, 1024)
    with pytest.raises(ValueError, match="unknown encoder"):
        encoder_from_description({"name": "clip"})


def test_defaults_only_for_measured_k():
    assert set(KmerProfileEncoder.MEASURED_DEFAULTS) == {5, 6}
    assert KmerProfileEncoder().default_thresholds == KmerProfileEncoder(k=5).default_thresholds
    for k in (5, 6):
        d = KmerProfileEncoder(k=k).default_thresholds
        assert set(d) == {"order", "family", "genus", "species"}
        assert d == KmerProfileEncoder.MEASURED_DEFAULTS[k]
        assert 0 < d["order"] <= d["family"] <= d["genus"] <= d["species"] < 1
    # A copy: changing one encoder's defaults must not change the measured table.
    KmerProfileEncoder().default_thresholds["species"] = 0.0
    assert KmerProfileEncoder().default_thresholds["species"] > 0
    for k in (4, 7):
        assert KmerProfileEncoder(k=k).default_thresholds == {}


@pytest.mark.parametrize("k", [1, 9])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must be"):
        KmerProfileEncoder(k=k)
