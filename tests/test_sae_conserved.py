"""The conserved SAE-feature checks (suite/checks/conserved.py): matching recovers a planted
permutation of features, the numbers match a computation of the test's own (scipy's Spearman per
pair), the whole-model null holds its level over 400 independent model pairs, and the drivers test
finds a planted pathway. The drivers test's false-positive rate is in tests/test_check_calibration.py."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.stats import binom, spearmanr

from suite.checks.conserved import conserved_count, driver_scores, match_features, profile_ranks, spearman_matrix
from suite.panels import Panel

from .planted import CaseFor, run, world

PAIR = ("model_a", "model_b")


def test_matching_recovers_a_planted_permutation_of_the_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 60))
    permutation = rng.permutation(60)
    b = a[:, permutation] + 0.3 * rng.normal(size=(40, 60))       # b's feature j is a's permutation[j]
    rows, cols = match_features(spearman_matrix(profile_ranks(a), profile_ranks(b)), "hungarian")
    assert (permutation[cols] == rows).all()
    rows, cols = match_features(spearman_matrix(profile_ranks(a), profile_ranks(b)), "best")
    assert (permutation[cols] == rows).mean() > 0.95
    assert conserved_count(profile_ranks(a), profile_ranks(b), 0.5, "hungarian") == 60
    assert conserved_count(profile_ranks(a), profile_ranks(b[rng.permutation(40)]), 0.5, "hungarian") < 5


def test_spearman_matrix_is_scipys_spearman_for_every_pair_and_undefined_features_match_nothing():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(15, 6)), rng.normal(size=(15, 5))
    a[:, 2] = 1.0                                                   # constant over the KDs
    b[3, :] = b[4, :]                                               # ties
    r = spearman_matrix(profile_ranks(a), profile_ranks(b))
    for i in range(6):
        for j in range(5):
            expected = -1.0 if i == 2 else spearmanr(a[:, i], b[:, j]).statistic
            assert r[i, j] == pytest.approx(expected)


def test_driver_scores_are_each_kds_share_of_the_conserved_pairs_shifts():
    a = np.array([[5.0, 0.0], [-4.0, 1.0], [0.0, 9.0], [1.0, -8.0]])
    b = np.array([[6.0, 1.0], [3.0, 0.0], [1.0, 7.0], [0.0, 2.0]])
    found = driver_scores(a, b, np.array([[0, 0], [1, 1]]))
    share = lambda x, k: abs(x[k]) / np.abs(x).sum()  # noqa: E731
    expected = [(share(a[:, 0], k) + share(b[:, 0], k) + share(a[:, 1], k) + share(b[:, 1], k)) / 4 for k in range(4)]
    assert found == pytest.approx(expected) and found.sum() == pytest.approx(1.0)


def test_whole_model_numbers_match_a_direct_computation():
    w = world(3, n_kds=30, n_genes=24)
    case = CaseFor("sae_conserved_features", {"reinit_copies": 0, "n_permutations": 99})(Panel("p", (), ()),
                                                                                           {"model_pair": PAIR})
    evidence = run(case, w.ctx)
    a, b = (w.ctx.outputs[n].per_set[:8].mean(axis=0)[1:] for n in PAIR)    # KD rows (control first)
    r = np.array([[spearmanr(a[:, i], b[:, j]).statistic for j in range(24)] for i in range(24)])
    rows, cols = linear_sum_assignment(-r)
    assert evidence.value == (r[rows, cols] > 0.5).sum() > 5
    assert evidence.details["pairs"][0]["r"] == pytest.approx(r[rows, cols].max())
    assert evidence.p == pytest.approx(0.01) and evidence.effect == pytest.approx(
        evidence.value - evidence.details["null_mean"])
    low, high = evidence.ci
    assert low < evidence.effect < high


def test_whole_model_null_holds_its_level_over_400_independent_model_pairs():
    ps = []
    for draw in range(400):
        w = world(3000 + draw, n_kds=24, n_genes=16, n_sets=2, agreement=0.0)   # the two models share nothing
        case = CaseFor("sae_conserved_features", {"reinit_copies": 0, "n_permutations": 99, "seed": draw,
                                                  "threshold": 0.3})(Panel("p", (), ()), {"model_pair": PAIR})
        ps.append(run(case, w.ctx).p)
    hits = sum(p < 0.05 for p in ps)
    # level (ceil(0.05 * 100) - 1) / 100 = 0.04; counts are tie-prone (conservative), so bounded above only
    assert hits <= binom.ppf(0.999, 400, 0.04), hits


def _plant_conserved(w, pathway: list[int], rng: np.random.Generator, n_features: int = 30) -> None:
    """Both models' SAE profiles over the world's KDs: features 0-9 conserved (model_b's = model_a's
    plus noise), the rest independent, every KD's shifts scaled by its own strength (the same in both
    models); the `pathway` KDs move the conserved features 3 times more and the others half as much."""
    n_kds = len(w.kds)
    strength = np.exp(rng.normal(0, 0.7, n_kds))[:, None]
    a = rng.normal(size=(n_kds, n_features)) * strength
    b = rng.normal(size=(n_kds, n_features)) * strength
    b[:, :10] = a[:, :10] + 0.3 * rng.normal(size=(n_kds, 10)) * strength
    for x in (a, b):
        x[pathway, :10] *= 3.0
        x[pathway, 10:] *= 0.5
    for name, x in zip(PAIR, (a, b), strict=True):
        w.ctx.outputs[name].per_set = np.repeat(np.vstack([np.zeros((1, n_features)), x])[None], 8, axis=0)


def test_a_pathway_that_drives_the_conserved_features_passes_and_a_random_panel_does_not():
    passes = {"planted": 0, "random": 0}
    for seed in range(10):
        w = world(400 + seed, n_kds=40, n_genes=30)
        rng = np.random.default_rng(seed)
        order = rng.permutation(40)
        _plant_conserved(w, order[:8].tolist(), rng)
        for which, rows in (("planted", order[:8]), ("random", order[8:16])):
            kds = tuple(w.kds[i] for i in rows)
            case = CaseFor("sae_conserved_drivers", {"n_permutations": 199, "seed": seed})(
                Panel("p", kds, kds), {"model_pair": PAIR, "pathway": "p"})
            evidence = run(case, w.ctx)
            passes[which] += evidence.p < 0.05 and evidence.effect > 0
    assert passes["planted"] >= 8 and passes["random"] <= 2, passes
