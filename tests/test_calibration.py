"""Calibration of the statistics beneath the checks, on their own: Benjamini-Hochberg across a run,
the KD-label test, the per-gene Spearman mean and the cluster enrichment. Over 200 null draws the
false-positive rate at alpha = 0.05 lies in the binomial 95% interval (or below its top, for tests that
are conservative by construction), and on planted signal of a stated size the power reaches a stated
level. Every check function, with its default null, is calibrated end to end, from both sides, in
test_check_calibration.py."""

import numpy as np

from suite import stats
from suite.checks.knockout import per_gene_spearman
from suite.matrix_tests import label_test

ALPHA, DRAWS = 0.05, 200
LOW, HIGH = stats.binomial_interval(DRAWS, ALPHA)


def test_benjamini_hochberg_controls_false_discoveries_and_finds_strong_signal():
    rng = np.random.default_rng(1)
    any_false = sum(min(stats.benjamini_hochberg(rng.uniform(size=50))) < ALPHA for _ in range(DRAWS))
    assert LOW <= any_false <= HIGH        # complete null: P(any discovery) = alpha for independent p
    found = []
    for _ in range(DRAWS):
        p = np.concatenate([rng.uniform(0, 1e-4, 10), rng.uniform(size=40)])
        found.append(sum(q < ALPHA for q in stats.benjamini_hochberg(p)[:10]) / 10)
    assert np.mean(found) >= 0.95          # 10 planted p < 1e-4 among 50


def test_kd_label_test_is_calibrated_and_has_power():
    """The targeted-Jacobian tests: per-KD scores of 8 pathway vs 10 unrelated KDs, KD labels permuted
    (every one of the 43,758 relabelings): exact, so at most alpha under the null; power on a shift
    of 1.5 SD of the per-KD score."""
    rng = np.random.default_rng(2)
    labels = np.array([True] * 8 + [False] * 10)
    null = sum(label_test(rng.normal(size=18), labels, 999, rng).p < ALPHA for _ in range(DRAWS))
    assert LOW <= null <= HIGH
    power = np.mean([label_test(rng.normal(size=18) + 1.5 * labels, labels, 999, rng).p < ALPHA
                     for _ in range(DRAWS)])
    assert power >= 0.8


def _cross_line_p(a: np.ndarray, b: np.ndarray, members: np.ndarray, rng: np.random.Generator) -> float:
    """The knockout_cross_line statistic and its random-gene-set null (label permutation form)."""
    r = per_gene_spearman(a, b, [-1] * len(a))
    null = np.array([np.nanmean(r[s]) for s in stats.random_sets(rng, np.arange(len(r)), len(members), 199)])
    return stats.exact_p(null, float(np.nanmean(r[members])))


def test_spearman_cross_line_mean_is_calibrated_and_has_power():
    rng = np.random.default_rng(3)
    members = np.arange(8)
    shared = rng.normal(size=(60, 40))          # both lines share profiles: every gene agrees somewhat
    draws = [_cross_line_p(shared + rng.normal(size=shared.shape), shared + rng.normal(size=shared.shape),
                           members, rng) for _ in range(DRAWS)]
    assert LOW <= sum(p < ALPHA for p in draws) <= HIGH
    planted = []
    for _ in range(DRAWS):
        a, b = shared + rng.normal(size=shared.shape), shared + rng.normal(size=shared.shape)
        common = rng.normal(size=(8, 40)) * 1.5  # the pathway's genes agree more across lines
        a[:8] += common
        b[:8] += common
        planted.append(_cross_line_p(a, b, members, rng) < ALPHA)
    assert np.mean(planted) >= 0.8


def test_cluster_enrichment_is_not_anticonservative_and_finds_a_planted_cluster():
    rng = np.random.default_rng(4)

    def best_q(x: np.ndarray, members: np.ndarray) -> float:
        return stats.cluster_enrichment(stats.average_linkage_clusters(x, 8), members)[0]["q"]

    members = np.arange(8)
    null = sum(best_q(rng.normal(size=(60, 20)), members) < ALPHA for _ in range(DRAWS))
    assert null <= HIGH                     # min over BH-adjusted clusters: at most alpha
    planted = []
    for _ in range(DRAWS):
        x = rng.normal(size=(60, 20))
        x[:8] += rng.normal(size=20) * 2.5      # the pathway's KDs share a direction
        planted.append(best_q(x, members) < ALPHA)
    assert np.mean(planted) >= 0.9
