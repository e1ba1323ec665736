"""Mantel and group-contrast tests: agreement with scikit-bio, false-positive rate at alpha, power."""

import numpy as np
import pytest

from suite.matrix_tests import auroc, group_contrast, mantel
from suite.stats import binomial_interval

ALPHA = 0.05
N_PERM = 199
# An exact permutation p = (1 + #null >= observed) / (1 + n) is below alpha for at most
# ceil(alpha (n + 1)) - 1 of the n + 1 equally likely ranks: 9 / 200 = 0.045 here. The rate over
# 1000 null draws must fall in the central 99% binomial interval (a fixed seed; a 95% band fails one seed in 20).
SIZE = (np.ceil(ALPHA * (N_PERM + 1)) - 1) / (N_PERM + 1)


def _cosine(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, 1.0)        # exactly, so 1 - sim is a hollow distance matrix
    return sim


def _clustered(rng, n, n_groups, strength):
    labels = np.arange(n) % n_groups
    centres = rng.normal(size=(n_groups, 20))
    return _cosine(rng.normal(size=(n, 20)) + strength * centres[labels]), labels


def test_mantel_agrees_with_scikit_bio():
    from skbio.stats.distance import mantel as skbio_mantel

    rng = np.random.default_rng(0)
    for strength in (0.0, 0.4, 1.0):
        base = rng.normal(size=(25, 8))
        x = _cosine(base)
        y = _cosine(base + rng.normal(size=(25, 8)) / max(strength, 1e-3))
        ours = mantel(x, y, 999, np.random.default_rng(1))
        r, p, n = skbio_mantel(1 - x, 1 - y, method="pearson", permutations=999, alternative="greater", seed=1)
        assert ours.observed == pytest.approx(r, abs=1e-10)
        assert n == 25 and ours.n_pairs == 25 * 24 // 2
        assert abs(ours.p - p) < 0.04                  # two Monte Carlo estimates of one p


def test_spearman_mantel_agrees_with_scikit_bio():
    from skbio.stats.distance import mantel as skbio_mantel

    rng = np.random.default_rng(2)
    for strength in (0.0, 0.5, 1.5):
        base = rng.normal(size=(22, 6))
        x = _cosine(base) ** 3                                 # a monotone bend Pearson and Spearman read apart
        y = _cosine(base + rng.normal(size=(22, 6)) / max(strength, 1e-3))
        ours = mantel(x, y, 999, np.random.default_rng(1), method="spearman")
        r, p, _ = skbio_mantel(1 - x, 1 - y, method="spearman", permutations=999, alternative="greater", seed=1)
        assert ours.observed == pytest.approx(r, abs=1e-10)
        assert abs(ours.p - p) < 0.04


def test_the_spearman_jackknife_on_ranks_taken_once_is_close_to_reranking_each_time():
    """mantel_ci ranks the entries once; re-ranking after each KD left out is the exact jackknife."""
    from scipy.stats import spearmanr

    from suite.matrix_tests import mantel_ci

    rng = np.random.default_rng(4)
    for strength in (0.3, 1.0):
        base = rng.normal(size=(30, 6))
        x, y = _cosine(base), _cosine(base + rng.normal(size=(30, 6)) / strength)
        low, high = mantel_ci(x, y, method="spearman")
        n = len(x)
        left_out = []
        for i in range(n):
            keep = np.delete(np.arange(n), i)
            upper = np.triu_indices(n - 1, 1)
            left_out.append(spearmanr(x[np.ix_(keep, keep)][upper], y[np.ix_(keep, keep)][upper]).statistic)
        left_out = np.array(left_out)
        exact_se = np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2))
        assert (high - low) / (2 * 1.959964) == pytest.approx(exact_se, rel=0.1)
        upper = np.triu_indices(n, 1)
        assert (low + high) / 2 == pytest.approx(spearmanr(x[upper], y[upper]).statistic, abs=1e-9)


def test_mantel_false_positive_rate_under_independent_matrices():
    rng = np.random.default_rng(2)
    n_draws = 1000
    hits = sum(mantel(_cosine(rng.normal(size=(20, 6))), _cosine(rng.normal(size=(20, 6))), N_PERM, rng).p < ALPHA
               for _ in range(n_draws))
    low, high = binomial_interval(n_draws, SIZE, level=0.99)
    assert low <= hits <= high, f"{hits}/{n_draws} false positives, expected {low}-{high}"


def test_mantel_power_on_planted_shared_structure():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(50):
        x, labels = _clustered(rng, 30, 3, 0.8)
        y = _cosine(rng.normal(size=(30, 20)) + 0.8 * rng.normal(size=(3, 20))[labels])
        hits += mantel(x, y, 199, rng).p < ALPHA
    assert hits >= 45


def test_group_contrast_false_positive_rate_and_power():
    rng = np.random.default_rng(4)
    n_draws = 1000
    null_hits = sum(group_contrast(_cosine(rng.normal(size=(30, 10))), np.arange(30) % 4, N_PERM, rng).p < ALPHA
                    for _ in range(n_draws))
    low, high = binomial_interval(n_draws, SIZE, level=0.99)
    assert low <= null_hits <= high
    power = sum(group_contrast(*_clustered(rng, 30, 4, 0.6), 199, rng).p < ALPHA for _ in range(50))
    assert power >= 45


def test_auroc_matches_its_definition():
    scores = np.array([0.1, 0.9, 0.4, 0.8, 0.3])
    members = np.array([False, True, False, True, True])
    pairs = [(a, b) for a in scores[members] for b in scores[~members]]
    assert auroc(scores, members) == pytest.approx(np.mean([a > b for a, b in pairs]))


def test_label_test_enumerates_small_designs_like_an_exact_mann_whitney():
    from scipy.stats import mannwhitneyu

    from suite.matrix_tests import label_test

    rng = np.random.default_rng(3)
    scores, members = rng.normal(size=11), np.array([True] * 5 + [False] * 6)
    scores[:5] += 0.8
    result = label_test(scores, members, 999, rng)
    reference = mannwhitneyu(scores[members], scores[~members], alternative="greater", method="exact")
    assert result.exact and len(result.null) == 462                 # C(11, 5)
    assert result.p == pytest.approx(reference.pvalue)
    assert result.auroc == pytest.approx(reference.statistic / 30)
    assert result.smallest_p == pytest.approx(1 / 462)


def test_label_test_cannot_go_below_one_over_the_relabelings():
    """3 pathway KDs vs 3 unrelated KDs, perfectly separated: p is 1/20, never below 0.05."""
    from suite.matrix_tests import label_test

    result = label_test(np.array([5.0, 6, 7, 1, 2, 3]), np.array([True] * 3 + [False] * 3), 999,
                        np.random.default_rng(0))
    assert result.p == pytest.approx(1 / 20) and result.smallest_p == pytest.approx(1 / 20)
