"""Per-rank calls and statuses from hand-built neighbour lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clibd_cli.assign import DISSENT_PENALTY, STATUSES, assign, assign_batch, lineage_codes, rank_calls
from clibd_cli.sequences import RANKS

T = {"order": 0.5, "family": 0.6, "genus": 0.75, "species": 0.9}

A1 = ("Diptera", "Culicidae", "Aedes", "Aedes aegypti")
A2 = ("Diptera", "Culicidae", "Aedes", "Aedes vexans")
C1 = ("Diptera", "Culicidae", "Culex", "Culex pipiens")
L1 = ("Lepidoptera", "Saturniidae", "Eacles", "Eacles ormondei")


def hits(*lineages) -> dict[str, list[str]]:
    return {rank: [lineage[i] for lineage in lineages] for i, rank in enumerate(RANKS)}


def run(sims, *lineages, thresholds=T):
    return assign(np.array(sims, dtype=np.float32), hits(*lineages), thresholds)


def test_assigned_when_close_hits_agree():
    result = run([0.98, 0.97, 0.80], A1, A1, C1)
    assert result.status == "assigned" and result.rank == "species"
    assert result.labels == dict(zip(RANKS, A1, strict=True))
    assert result.support == 2
    assert result.top_hit == 0 and result.top_similarity == pytest.approx(0.98)
    # Agreement: the score equals the best cosine (the Culex hit has a negligible weight).
    assert result.scores["species"] == pytest.approx(0.98, abs=1e-4)
    assert result.scores["order"] == pytest.approx(0.98, abs=1e-6)
    assert result.calls["species"].best_hit == 0


def test_score_equals_cosine_when_all_hits_agree():
    result = run([0.95, 0.91, 0.85, 0.6], A1, A1, A1, A1)
    for rank in RANKS:
        assert result.scores[rank] == pytest.approx(0.95, abs=1e-6)
    assert result.support == 4


def test_rolled_up_when_species_ambiguous_among_close_references():
    result = run([0.97, 0.97], A1, A2)
    assert result.status == "rolled_up" and result.rank == "genus"
    assert result.labels == {"order": "Diptera", "family": "Culicidae", "genus": "Aedes", "species": ""}
    # Half the vote dissents: the best cosine loses half the dissent penalty.
    assert result.scores["species"] == pytest.approx(0.97 - DISSENT_PENALTY / 2, abs=1e-6)
    assert result.scores["genus"] == pytest.approx(0.97, abs=1e-6)
    assert result.support == 2


def test_novel_candidate_at_genus():
    result = run([0.80, 0.79], A1, A1)
    assert result.status == "novel_candidate" and result.rank == "genus"
    assert result.labels["genus"] == "Aedes" and result.labels["species"] == ""
    assert result.scores["species"] == pytest.approx(0.80, abs=1e-6)  # passes nothing but species' own bar


def test_no_novelty_claim_when_the_species_threshold_is_unreachable():
    """A species threshold calibration could not set (above any cosine) is no evidence of a new species."""
    thresholds = {"order": 0.5, "family": 0.6, "genus": 0.75, "species": 1.01}
    result = run([0.99, 0.98], A1, A1, thresholds=thresholds)
    assert result.status == "rolled_up" and result.rank == "genus"


def test_novel_candidate_at_family():
    result = run([0.65, 0.64], A1, C1)
    assert result.status == "novel_candidate" and result.rank == "family"
    assert result.labels == {"order": "Diptera", "family": "Culicidae", "genus": "", "species": ""}


def test_order_only_is_rolled_up():
    result = run([0.55], A1)
    assert result.status == "rolled_up" and result.rank == "order"
    assert result.labels == {"order": "Diptera", "family": "", "genus": "", "species": ""}


def test_no_match():
    result = run([0.30, 0.29], A1, L1)
    assert result.status == "no_match" and result.rank == ""
    assert result.labels == dict.fromkeys(RANKS, "")
    assert result.support == 0
    assert result.top_hit == 0 and result.top_similarity == pytest.approx(0.30)


def test_no_hits_at_all():
    result = run([-np.inf, -np.inf], A1, A1)
    assert result.status == "no_match"
    assert result.top_hit == -1 and math.isnan(result.top_similarity)
    assert all(score == 0.0 for score in result.scores.values())


def test_padding_hits_are_ignored():
    result = run([0.96, -np.inf, -np.inf], A1, ("", "", "", ""), ("", "", "", ""))
    assert result.status == "assigned" and result.labels["species"] == "Aedes aegypti"
    assert result.support == 1


def test_missing_threshold_means_never_called():
    result = run([0.99, 0.99], A1, A1, thresholds={"order": 0.5})
    assert result.status == "rolled_up" and result.rank == "order"
    assert run([0.99], A1, thresholds={}).status == "no_match"


def test_unknown_labels_abstain():
    unnamed = ("Diptera", "Culicidae", "Aedes", "")
    result = run([0.99, 0.95], unnamed, A2)
    # At species only the second hit votes, so it wins alone with its own cosine.
    assert result.calls["species"].label == "Aedes vexans"
    assert result.calls["species"].score == pytest.approx(0.95, abs=1e-6)
    assert result.calls["species"].best_hit == 1
    assert result.status == "assigned" and result.top_hit == 0
    assert result.calls["genus"].support == 2


def test_homonym_genera_in_two_families_do_not_pool():
    # 'Aus' is a genus name in two families (homonyms); the votes must not be added up.
    f1 = ("Coleoptera", "Carabidae", "Aus", "Aus alpha")
    f2 = ("Coleoptera", "Staphylinidae", "Aus", "Aus beta")
    result = run([0.9, 0.9], f1, f2, thresholds={**T, "family": 0.85, "genus": 0.85})
    genus = result.calls["genus"]
    assert genus.score == pytest.approx(0.9 - DISSENT_PENALTY / 2, abs=1e-6)
    assert genus.support == 1
    assert result.rank == "order" and result.status == "rolled_up"
    assert result.labels["genus"] == ""
    # Control: the same hits in one family do pool and call the genus.
    same = run([0.9, 0.9], f1, ("Coleoptera", "Carabidae", "Aus", "Aus beta"))
    assert same.calls["genus"].score == pytest.approx(0.9, abs=1e-6)
    assert same.rank == "genus" and same.labels["family"] == "Carabidae"


def test_close_first_hit_outvotes_many_distant_ones():
    sims = [0.99] + [0.90] * 9
    result = run(sims, A1, *[A2] * 9)
    assert result.calls["species"].label == "Aedes aegypti"
    share = 1 / (1 + 9 * math.exp(-0.09 / 0.02))
    assert result.calls["species"].score == pytest.approx(0.99 - DISSENT_PENALTY * (1 - share), rel=1e-4)
    assert result.calls["genus"].score == pytest.approx(0.99, abs=1e-6)


def test_many_close_hits_outvote_one_slightly_closer():
    result = run([0.960, 0.959, 0.958, 0.957], A1, A2, A2, A2)
    assert result.calls["species"].label == "Aedes vexans"
    assert result.calls["species"].best_hit == 1
    assert result.calls["species"].support == 3


def test_tau_controls_how_fast_weights_fall():
    sims = np.array([0.95, 0.90, 0.90], dtype=np.float32)
    taxonomy = hits(A1, A2, A2)
    sharp = rank_calls(sims, taxonomy, tau=0.005)["species"]
    flat = rank_calls(sims, taxonomy, tau=10.0)["species"]
    assert sharp.label == "Aedes aegypti"
    assert flat.label == "Aedes vexans"


def test_assign_batch_equals_row_by_row():
    sims = np.array([[0.98, 0.97], [0.97, 0.97], [0.3, 0.2]], dtype=np.float32)
    taxonomy = {rank: np.array([[A1[i], A1[i]], [A1[i], A2[i]], [L1[i], A1[i]]], dtype=object)
                for i, rank in enumerate(RANKS)}
    batch = assign_batch(sims, taxonomy, T)
    assert [a.status for a in batch] == ["assigned", "rolled_up", "no_match"]
    for i, result in enumerate(batch):
        single = assign(sims[i], {rank: list(taxonomy[rank][i]) for rank in RANKS}, T)
        assert (single.status, single.rank, single.labels, single.scores) == \
            (result.status, result.rank, result.labels, result.scores)


POOL = [A1, A2, C1, L1, ("Diptera", "Culicidae", "Aedes", ""), ("Diptera", "Culicidae", "", ""),
        ("Coleoptera", "Carabidae", "Aus", "Aus alpha"), ("Coleoptera", "Staphylinidae", "Aus", "Aus beta")]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_invariants(data):
    n = data.draw(st.integers(1, 12))
    sims = sorted(data.draw(st.lists(st.floats(-0.2, 1.0), min_size=n, max_size=n)), reverse=True)
    lineages = data.draw(st.lists(st.sampled_from(POOL), min_size=n, max_size=n))
    cuts = sorted(data.draw(st.lists(st.floats(0.0, 1.01), min_size=4, max_size=4)))
    thresholds = dict(zip(RANKS, cuts, strict=True))
    result = run(sims, *lineages, thresholds=thresholds)
    assert result.status in STATUSES
    assert result.top_similarity == pytest.approx(sims[0], abs=1e-6)
    for rank in RANKS:
        assert result.scores[rank] <= max(sims[0], 0.0) + 1e-6
    if result.status == "no_match":
        assert result.rank == "" and not any(result.labels.values())
        assert not any(result.calls[r].label and result.calls[r].score >= thresholds[r] for r in RANKS)
        return
    depth = RANKS.index(result.rank)
    # The called rank passed its threshold and no lower rank did.
    assert result.scores[result.rank] >= thresholds[result.rank]
    for lower in RANKS[depth + 1 :]:
        call = result.calls[lower]
        assert not (call.label and call.score >= thresholds[lower])
    # Labels form one lineage that some hit actually has, down to the called rank and no further.
    called = tuple(result.labels[r] for r in RANKS[: depth + 1])
    assert all(called) and not any(result.labels[r] for r in RANKS[depth + 1 :])
    assert any(lineage[: depth + 1] == called for lineage in lineages)
    assert (result.status == "assigned") == (result.rank == "species")
    if result.status == "novel_candidate":
        assert result.rank in ("genus", "family") and result.top_similarity < thresholds["species"]


NAMES = st.sampled_from(["", "Ab", "Ab c", "Abc", "B", "b", "Ä"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(NAMES, NAMES, NAMES, NAMES), min_size=1, max_size=30), st.booleans())
def test_lineage_codes_number_lineages_in_the_order_of_their_label_tuples(lineages, as_matrix):
    """Codes are the rank of the lineage's label tuple among the distinct ones (homonyms under different
    parents apart, "" sorting first), -1 where the rank's own label is unknown; a [n, k] matrix keeps its shape."""
    n = len(lineages)
    shape = (n, 1) if as_matrix else (n,)
    taxonomy = {rank: np.array([lin[i] for lin in lineages], dtype=object).reshape(shape)
                for i, rank in enumerate(RANKS)}
    codes = lineage_codes(taxonomy)
    for depth, rank in enumerate(RANKS, start=1):
        prefixes = sorted({lin[:depth] for lin in lineages})
        expected = [-1 if lin[depth - 1] == "" else prefixes.index(lin[:depth]) for lin in lineages]
        assert codes[rank].shape == shape
        assert codes[rank].ravel().tolist() == expected
