"""The suite's statistics: exact values, and calibration under nulls and power on planted signal."""

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from suite import stats

ALPHA = 0.05


def test_exact_permutation_p_counts_ties_and_the_observed():
    assert stats.exact_p(np.array([1.0, 2.0, 3.0]), 2.0) == pytest.approx(3 / 4)
    assert stats.exact_p(np.array([1.0, 2.0, 3.0]), 9.0) == pytest.approx(1 / 4)
    assert stats.exact_p(np.array([1.0, 2.0, 3.0]), 0.0) == pytest.approx(1.0)


def test_mean_pairwise_skips_self_pairs_of_duplicated_members():
    sim = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert stats.mean_pairwise(sim, [0, 1, 2]) == pytest.approx(0.4)
    assert stats.mean_pairwise(sim, [0, 0, 1]) == pytest.approx(0.2)   # the (0, 0) pair is not a pair


def test_nn_hit_rate_and_neighbour_agreement_on_a_known_geometry():
    points = np.array([[1, 0.0], [0.99, 0.1], [0.98, -0.1], [0, 1.0], [0.1, 0.99], [-0.1, 0.98]])
    sim = stats.cosine_similarity_matrix(points)
    assert stats.nn_hit_rate(sim, [0, 1, 2], range(6)) == 1.0
    assert stats.nn_hit_rate(sim, [0, 3], range(6)) == 0.0
    nn = stats.knn_table(sim, 2)
    assert sorted(nn[0]) == [1, 2] and stats.neighbour_agreement(nn, nn, [0, 1]) == 1.0
    moved = points.copy()
    moved[0] = [0.05, 1.0]                 # point 0 joins the other cluster in model B
    assert stats.neighbour_agreement(nn, stats.knn_table(stats.cosine_similarity_matrix(moved), 2), [0]) == 0.0


def test_relabeling_is_undone_exactly():
    """Model B = model A with its KDs listed in another order: reading B through the inverse
    order recovers A's neighbourhoods exactly."""
    rng = np.random.default_rng(9)
    sim_a = stats.cosine_similarity_matrix(rng.normal(size=(30, 5)))
    order = rng.permutation(30)                      # B's item j is A's item order[j]
    nn_a, nn_b = stats.knn_table(sim_a, 4), stats.knn_table(sim_a[np.ix_(order, order)], 4)
    assert stats.neighbour_agreement(nn_a, nn_b, range(30), relabel=np.argsort(order)) == 1.0
    assert stats.neighbour_agreement(nn_a, nn_b, range(30)) < 0.5
    perms = stats.permutations_within(rng, [np.arange(0, 10), np.arange(10, 30)], 30, 50)
    assert all(set(p[:10]) == set(range(10)) and sorted(p) == list(range(30)) for p in perms)


def test_benjamini_hochberg_matches_scipy_and_keeps_untested_cases_empty():
    p = [0.01, None, 0.04, 0.03, float("nan"), 0.2]
    q = stats.benjamini_hochberg(p)
    expected = false_discovery_control([0.01, 0.04, 0.03, 0.2], method="bh")
    assert q[1] is None and q[4] is None
    assert [q[0], q[2], q[3], q[5]] == pytest.approx(list(expected))
    assert q[0] == pytest.approx(0.04)  # 0.01 * 4 / 1


def test_null_set_samplers_draw_valid_sets():
    rng = np.random.default_rng(0)
    sets = stats.random_sets(rng, np.arange(10, 30), 5, 200)
    assert sets.shape == (200, 5) and sets.min() >= 10 and sets.max() < 30
    assert all(len(set(row)) == 5 for row in sets)
    magnitude = np.linspace(1, 0, 40)                   # KD 39 is the weakest
    strata = stats.magnitude_strata(magnitude, np.arange(40), stratum_size=10)
    assert [sorted(s)[:2] for s in strata] == [[30, 31], [20, 21], [10, 11], [0, 1]]
    members = np.array([39, 35, 5])
    drawn = stats.stratified_sets(rng, strata, members, 500)
    assert all(len(set(row)) == 3 for row in drawn)
    weakest = set(range(30, 40))
    assert all(len(weakest & set(row)) == 2 and len(set(range(0, 10)) & set(row)) == 1 for row in drawn)
    assert np.isin(drawn, members).any()                # members stay in the draw: a true permutation


def _coherence_p(emb: np.ndarray, members: np.ndarray, rng, null: str, magnitude=None, n_perm=199) -> float:
    sim = stats.cosine_similarity_matrix(emb)
    if null == "label":
        sets = stats.random_sets(rng, np.arange(len(emb)), len(members), n_perm)
    else:
        strata = stats.magnitude_strata(magnitude, np.arange(len(emb)), stratum_size=10)
        sets = stats.stratified_sets(rng, strata, members, n_perm)
    return stats.set_permutation_test(lambda s: stats.mean_pairwise(sim, s), members, sets).p


def _rate(p_values) -> float:
    return float(np.mean(np.array(p_values) < ALPHA))


N_DRAWS = 300


def test_label_permutation_is_calibrated_on_random_embeddings():
    """300 random embeddings, a random 'pathway' each: p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(N_DRAWS):
        emb = rng.normal(size=(60, 16))
        ps.append(_coherence_p(emb, rng.choice(60, 6, replace=False), rng, "label"))
    low, high = stats.binomial_interval(N_DRAWS, ALPHA)
    assert low <= sum(p < ALPHA for p in ps) <= high


def test_label_permutation_power_on_planted_clusters():
    """Planted: 6 members share a direction as large as their own noise (cosine ~0.5 among them)."""
    rng = np.random.default_rng(2)
    ps = []
    for _ in range(100):
        emb = rng.normal(size=(60, 16))
        members = rng.choice(60, 6, replace=False)
        emb[members] += rng.normal(size=16) * 1.0
        ps.append(_coherence_p(emb, members, rng, "label"))
    assert _rate(ps) >= 0.9


def _collapsing_screen(rng, n=80, d=16, shared=0.0):
    """Weak KDs collapse onto a common point; a 'pathway' of 6 weak KDs (plus optional shared signal)."""
    magnitude = rng.uniform(0.05, 1.0, n)
    emb = np.ones(d) + magnitude[:, None] * rng.normal(size=(n, d)) * 2
    weak = np.argsort(magnitude)[:30]
    members = rng.choice(weak, 6, replace=False)
    emb[members] += shared * rng.normal(size=d)
    return emb, members, magnitude


def test_weak_kds_fool_label_permutation_but_not_the_magnitude_stratified_null():
    """The trap the demo's decoy sets: weak KDs look coherent together under a plain null."""
    rng = np.random.default_rng(3)
    label, matched = [], []
    for _ in range(N_DRAWS):
        emb, members, magnitude = _collapsing_screen(rng)
        label.append(_coherence_p(emb, members, rng, "label"))
        matched.append(_coherence_p(emb, members, rng, "matched", magnitude))
    low, high = stats.binomial_interval(N_DRAWS, ALPHA)
    assert _rate(label) > 0.5                       # plain permutation: mostly false positives
    assert low <= sum(p < ALPHA for p in matched) <= high


def test_magnitude_stratified_null_power_on_planted_weak_pathway():
    """Planted: a shared offset of norm ~4 (the weak KDs' own spread is ~0.5-4) on 6 weak KDs."""
    rng = np.random.default_rng(4)
    ps = []
    for _ in range(100):
        emb, members, magnitude = _collapsing_screen(rng, shared=1.0)
        ps.append(_coherence_p(emb, members, rng, "matched", magnitude))
    assert _rate(ps) >= 0.8


def _agreement_p(emb_a, emb_b, members, rng, strata=None, k=5, n_perm=199) -> float:
    nn_a, nn_b = (stats.knn_table(stats.cosine_similarity_matrix(e), k) for e in (emb_a, emb_b))
    strata = strata or [np.arange(len(emb_a))]
    perms = stats.permutations_within(rng, strata, len(emb_a), n_perm)
    observed = stats.neighbour_agreement(nn_a, nn_b, members)
    return stats.exact_p(np.array([stats.neighbour_agreement(nn_a, nn_b, members, p) for p in perms]), observed)


def test_neighbour_agreement_is_calibrated_on_unrelated_models_and_has_power():
    rng = np.random.default_rng(6)
    null_ps, planted_ps = [], []
    for i in range(N_DRAWS):
        emb_a, emb_b = rng.normal(size=(60, 16)), rng.normal(size=(60, 16))
        members = rng.choice(60, 6, replace=False)
        null_ps.append(_agreement_p(emb_a, emb_b, members, rng))
        if i < 100:   # planted: the members form one cluster in both models
            emb_a[members] += rng.normal(size=16) * 1.5
            emb_b[members] += rng.normal(size=16) * 1.5
            planted_ps.append(_agreement_p(emb_a, emb_b, members, rng))
    low, high = stats.binomial_interval(N_DRAWS, ALPHA)
    assert low <= sum(p < ALPHA for p in null_ps) <= high
    assert _rate(planted_ps) >= 0.9


def test_weak_kds_fool_neighbour_agreement_on_raw_embeddings_not_on_displacements():
    """In raw cosine every KD's nearest neighbours are the most collapsed (weakest) KDs, in any
    two models alike, so weak sets 'agree' even under magnitude-stratified relabeling. Their
    displacements from the control carry no such ordering: that is what the suite compares."""
    rng = np.random.default_rng(7)
    raw, centred = [], []
    control = np.ones(16)                            # where weak KDs collapse to
    for _ in range(N_DRAWS):
        emb_a, members, magnitude = _collapsing_screen(rng)
        emb_b = control + magnitude[:, None] * rng.normal(size=(80, 16)) * 2   # same KDs, independent model
        strata = stats.magnitude_strata(magnitude, np.arange(80), 10)
        raw.append(_agreement_p(emb_a, emb_b, members, rng, strata))
        centred.append(_agreement_p(emb_a - control, emb_b - control, members, rng, strata))
    _, high = stats.binomial_interval(N_DRAWS, ALPHA)
    assert _rate(raw) > 0.15
    # at most alpha: overlaps of unrelated neighbourhoods are mostly exactly 0, and the exact
    # permutation p counts those ties, so the test is conservative here
    assert sum(p < ALPHA for p in centred) <= high


def test_bootstrap_ci_covers_the_statistic_and_shrinks_with_agreement():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(40, 8))
    emb[:8] += rng.normal(size=8) * 3
    sim = stats.cosine_similarity_matrix(emb)
    observed = stats.mean_pairwise(sim, np.arange(8))
    low, high = stats.bootstrap_ci(lambda s: stats.mean_pairwise(sim, s), np.arange(8), rng, 500)
    assert low <= observed <= high
    wide_low, wide_high = stats.bootstrap_ci(lambda s: stats.mean_pairwise(sim, s), np.arange(20, 28), rng, 500)
    assert (high - low) < (wide_high - wide_low)


def test_best_cluster_p_is_the_smallest_hypergeometric_p_of_the_enrichment_table():
    rng = np.random.default_rng(4)
    labels = rng.integers(1, 6, 60)
    sets = np.stack([rng.choice(60, 7, replace=False) for _ in range(20)])
    expected = [min(row["p"] for row in stats.cluster_enrichment(labels, s) if row["overlap"] > 0) for s in sets]
    assert stats.best_cluster_p(labels, sets) == pytest.approx(expected)


def _set_null_agreement_p(emb_a, emb_b, members, rng, k=5, n_perm=499) -> float:
    """The consistency checks' null: both models kept, random KD sets in place of the pathway."""
    from types import SimpleNamespace

    from suite.checks.common import null_sets

    nn_a, nn_b = (stats.knn_table(stats.cosine_similarity_matrix(e), k) for e in (emb_a, emb_b))
    params = SimpleNamespace(null_model="label_permutation", seed=int(rng.integers(1 << 30)), n_permutations=n_perm,
                             stratum_size=10)
    null = np.array([stats.neighbour_agreement(nn_a, nn_b, s) for s in null_sets(params, members, len(emb_a), None)])
    return stats.exact_p(null, stats.neighbour_agreement(nn_a, nn_b, members))


def _clustered_models(rng, shared_rest: bool, n=80, d=16):
    """Two models of 8 clusters of 10 KDs; the pathway (cluster 0) has the same neighbourhood in both;
    the other clusters are the same in both models (`shared_rest`) or arranged independently."""
    labels = np.arange(n) // 10
    emb_a = (rng.normal(size=(8, d)) * 3)[labels] + rng.normal(size=(n, d))
    emb_b = emb_a + 0.3 * rng.normal(size=(n, d))        # the same model, up to noise
    if not shared_rest:     # outside the pathway, model B's KDs sit where other KDs sit in model A
        rest = np.arange(10, n)
        emb_b[rest] = emb_b[rng.permutation(rest)]
    return emb_a, emb_b, np.arange(10)


def test_the_set_null_of_consistency_singles_out_the_pathway():
    """When two models agree on every KD's neighbourhood, a pathway's agreement is nothing special
    (a relabeling null would pass it); when they agree on the pathway only, it passes."""
    rng = np.random.default_rng(8)
    everywhere = [_set_null_agreement_p(*_clustered_models(rng, True), rng) for _ in range(40)]
    pathway_only = [_set_null_agreement_p(*_clustered_models(rng, False), rng) for _ in range(40)]
    assert _rate(everywhere) <= 0.15
    assert _rate(pathway_only) >= 0.9


def test_vectorised_set_statistics_equal_the_one_set_versions():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 7))
    x[3] = 0.0                                   # a zero row: cosine 0 with everything
    sim = stats.cosine_similarity_matrix(x)
    sets = np.array([rng.choice(40, 6, replace=False) for _ in range(300)])
    sets[0] = [1, 1, 2, 3, 4, 5]                 # a repeated position: its self-pair is left out
    assert stats.mean_pairwise_many(sim, sets, chunk=64) == pytest.approx([stats.mean_pairwise(sim, s) for s in sets])
    assert stats.within_many(x, sets[1:], chunk=64) == pytest.approx(
        [stats.within_and_background(x, s)[0] for s in sets[1:]])
    tied = np.round(sim, 1)                      # ties: both take the first maximum
    assert stats.nn_hit_rate_many(tied, sets[1:], np.arange(40)) == pytest.approx(
        [stats.nn_hit_rate(tied, s, np.arange(40)) for s in sets[1:]])


def test_pairs_that_share_another_panel_leave_every_mean():
    """The masked means against a loop over the pairs (members with a repeat, as a bootstrap draws them)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(25, 6))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    related = stats.related_pairs(25, [[0, 1, 2, 3, 4], [3, 10, 11], [20, 21]])
    assert related[0, 4] and related[3, 11] and not related[4, 11] and not related[2, 2]
    assert related.sum() == 2 * (10 + 3 + 1)

    def loop(members):
        values = [sim[a, b] for i, a in enumerate(members) for b in members[i + 1:]
                  if a != b and not ({a, b} <= {0, 1, 2, 3, 4} or {a, b} <= {3, 10, 11} or {a, b} <= {20, 21})]
        return np.mean(values) if values else np.nan

    sets = np.array([[0, 1, 2, 5, 6], [3, 10, 11, 20, 21], [0, 1, 2, 3, 4], [5, 5, 6, 7, 0]])
    assert stats.mean_pairwise(sim, [0, 1, 2, 5, 6], related) == pytest.approx(loop([0, 1, 2, 5, 6]))
    assert np.isnan(stats.mean_pairwise(sim, [0, 1, 2, 3, 4], related))
    many = stats.mean_pairwise_many(sim, sets, related)
    assert np.isnan(many[2])
    assert many[[0, 1, 3]] == pytest.approx([loop(list(s)) for s in sets[[0, 1, 3]]])
    assert stats.within_many(x, sets, related)[[0, 1, 3]] == pytest.approx(many[[0, 1, 3]])
    within, background = stats.within_and_background(x, [5, 5, 6, 7, 0], related)
    assert within == pytest.approx(loop([5, 5, 6, 7, 0]))
    assert background == pytest.approx(loop(list(range(25))))
