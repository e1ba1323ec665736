"""Every check's numbers against an independent computation.

Each test calls the check function as a pytest run does (tests/planted.py supplies the probe outputs
of a world with a planted pathway) and recomputes what its card prints, straight from the planted
arrays with numpy and scipy: no code of the suite's statistics module is used for the expected
values. Permutation p-values are compared with an independent Monte Carlo of the same null, within
four standard errors of the two estimates.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from scipy.stats import hypergeom, mannwhitneyu, pearsonr, rankdata, spearmanr
from scipy.stats import t as student_t

from core.errors import Inconclusive
from suite.panels import Panel

from .planted import CaseFor, run, world

ONE, PAIR = {"model": "model_a", "pathway": "p"}, {"model_pair": ("model_a", "model_b"), "pathway": "p"}
MEMBERS = ("g03", "g07", "g11", "g19", "g23", "g29", "g31", "g37")
LABEL = {"null_model": "label_permutation"}


@pytest.fixture(scope="module")
def planted():
    w = world(7, plant={"kds": MEMBERS, "genes": MEMBERS, "size": 1.2})
    panel = Panel("p", kds=MEMBERS, genes=MEMBERS, regulators=MEMBERS[:3], targets=MEMBERS[3:])
    return w, panel


def _cosine(x: np.ndarray) -> np.ndarray:
    return 1.0 - squareform(pdist(x, "cosine"))


def _within_minus_all(sim: np.ndarray, members: list[int]) -> float:
    upper = np.triu_indices(len(sim), 1)
    block = sim[np.ix_(members, members)][np.triu_indices(len(members), 1)]
    return float(block.mean() - sim[upper].mean())


def _mc_p(statistic, n: int, size: int, observed: float, draws: int = 4000, seed: int = 99) -> float:
    rng = np.random.default_rng(seed)
    null = np.array([statistic(rng.choice(n, size, replace=False)) for _ in range(draws)])
    return (1 + np.sum(null >= observed - 1e-12)) / (1 + draws)


def _close_p(p: float, reference: float, n_suite: int, n_reference: int = 4000) -> bool:
    se = np.sqrt(reference * (1 - reference) * (1 / n_suite + 1 / n_reference)) + 1 / n_suite
    return abs(p - reference) <= 4 * se


def _rows(w, name="model_a"):
    return w.ctx.outputs[name], [w.kds.index(k) for k in MEMBERS]


def _jaccard_of_knn(sim_a, sim_b, members, k):
    def knn(sim):
        s = sim.copy()
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in s]
    a, b = knn(sim_a), knn(sim_b)
    return float(np.mean([len(a[i] & b[i]) / len(a[i] | b[i]) for i in members]))


def test_pert_embedding_coherence(planted):
    w, panel = planted
    out, members = _rows(w)
    evidence = run(CaseFor("pert_embedding_coherence", LABEL)(panel, ONE), w.ctx)
    sim = _cosine(out.embeddings[1:])
    assert evidence.effect == pytest.approx(_within_minus_all(sim, members), abs=1e-9)
    assert evidence.ci[0] <= evidence.effect <= evidence.ci[1]
    reference = _mc_p(lambda s: _within_minus_all(sim, list(s)), len(sim), len(members), evidence.effect)
    assert _close_p(evidence.p, reference, 2000)


OTHER = ("g00", "g01", "g03", "g07", "g11", "g13")      # another panel of the run: 3 members


def _within_minus_unrelated(sim: np.ndarray, members: list[int], other: set[int]) -> float:
    """Both means over the pairs that do not both lie in the other panel."""
    def mean(items):
        return np.mean([sim[a, b] for a, b in itertools.combinations(items, 2) if not {a, b} <= other])
    return float(mean(members) - mean(range(len(sim))))


@pytest.mark.parametrize("probe", ["pert_embedding_coherence", "representation_coherence"])
def test_coherence_leaves_out_the_pairs_another_panel_shares(planted, probe):
    w, panel = planted
    out, members = _rows(w)
    other = {w.kds.index(k) for k in OTHER}
    w.ctx.programs = (MEMBERS, OTHER)
    try:
        evidence = run(CaseFor(probe, LABEL)(panel, ONE), w.ctx)
    finally:
        w.ctx.programs = ()
    sim = _cosine(out.embeddings[1:] if probe == "pert_embedding_coherence" else out.per_set[:8, 1:].mean(axis=0))
    expected = _within_minus_unrelated(sim, members, other)
    assert evidence.value == pytest.approx(expected, abs=1e-9)
    assert expected != pytest.approx(_within_minus_all(sim, members), abs=1e-3)
    assert "15 pairs of KDs that share another panel" in evidence.null
    reference = _mc_p(lambda s: _within_minus_unrelated(sim, list(s), other), len(sim), len(members), expected,
                      draws=1000)
    assert _close_p(evidence.p, reference, 2000, 1000)


def test_pert_embedding_nn_hit_rate(planted):
    w, panel = planted
    out, members = _rows(w)
    evidence = run(CaseFor("pert_embedding_coherence", {"statistic": "nn_hit_rate"})(panel, ONE), w.ctx)
    sim = _cosine(out.embeddings[1:])
    np.fill_diagonal(sim, -np.inf)
    hits = sum(int(np.argmax(sim[i])) in members for i in members)
    assert evidence.value == pytest.approx(hits / len(members))
    assert evidence.details["hits"] == hits


def _profile_r(sim_a, sim_b, i):
    others = np.arange(len(sim_a)) != i
    return spearmanr(sim_a[i, others], sim_b[i, others])[0]


@pytest.mark.parametrize("statistic", ["profile_correlation", "neighbour_overlap"])
def test_pert_embedding_consistency(planted, statistic):
    w, panel = planted
    (a, members), (b, _) = _rows(w), _rows(w, "model_b")
    evidence = run(CaseFor("pert_embedding_consistency", {"statistic": statistic})(panel, PAIR), w.ctx)
    sims = [_cosine(o.embeddings[1:] - o.embeddings[0]) for o in (a, b)]     # displacements from the control
    if statistic == "neighbour_overlap":
        per_kd = np.array([_jaccard_of_knn(*sims, [i], 5) for i in members])
    else:
        per_kd = np.array([_profile_r(*sims, i) for i in members])
    assert evidence.value == pytest.approx(per_kd.mean(), abs=1e-12)
    assert evidence.ci == pytest.approx(_t_interval(per_kd - evidence.details["null_mean"]))
    everyone = np.array([_profile_r(*sims, i) if statistic == "profile_correlation" else
                         _jaccard_of_knn(*sims, [i], 5) for i in range(len(sims[0]))])
    reference = _mc_p(lambda s: everyone[s].mean(), len(everyone), len(members), evidence.value)
    label = run(CaseFor("pert_embedding_consistency", {"statistic": statistic, **LABEL})(panel, PAIR), w.ctx)
    assert _close_p(label.p, reference, 2000)


def test_representation_coherence(planted):
    w, panel = planted
    out, members = _rows(w)
    evidence = run(CaseFor("representation_coherence", LABEL)(panel, ONE), w.ctx)
    x = out.per_set[:8, 1:].mean(axis=0)
    sim = _cosine(x)
    raw = _within_minus_all(sim, members)
    assert evidence.value == pytest.approx(raw, abs=1e-9)
    # the effect is the estimate less the bias its bootstrap over cell sets shows (stats.bias_corrected_interval)
    assert evidence.effect == pytest.approx(raw - evidence.details["cell_set_bias"], abs=1e-12)
    assert evidence.ci[0] <= evidence.effect <= evidence.ci[1]
    reference = _mc_p(lambda s: _within_minus_all(sim, list(s)), len(sim), len(members), raw)
    assert _close_p(evidence.p, reference, 2000)


def test_representation_clusters(planted):
    w, panel = planted
    out, members = _rows(w)
    evidence = run(CaseFor("representation_clusters")(panel, ONE), w.ctx)
    x = out.per_set[:8, 1:].mean(axis=0)
    labels = fcluster(linkage(pdist(x, "cosine"), "average"), t=8, criterion="maxclust")
    n, m = len(labels), len(members)
    rows = []
    for c in np.unique(labels):
        size, overlap = int((labels == c).sum()), int((labels[members] == c).sum())
        rows.append((hypergeom.sf(overlap - 1, n, size, m), -overlap, (overlap / m) / (size / n)))
    best = min(rows)
    assert evidence.value == pytest.approx(best[2])
    assert evidence.details["best_hypergeometric_p"] == pytest.approx(best[0])


def test_representation_consistency(planted):
    w, panel = planted
    (a, members), (b, _) = _rows(w), _rows(w, "model_b")
    evidence = run(CaseFor("representation_consistency")(panel, PAIR), w.ctx)
    sims = [_cosine(o.per_set[:8, 1:].mean(axis=0)) for o in (a, b)]
    assert evidence.value == pytest.approx(np.mean([_profile_r(*sims, i) for i in members]), abs=1e-12)
    overlap = run(CaseFor("representation_consistency", {"statistic": "neighbour_overlap"})(panel, PAIR), w.ctx)
    assert overlap.value == pytest.approx(_jaccard_of_knn(*sims, members, 5), abs=1e-12)


def test_knockout_coherence(planted):
    w, panel = planted
    out, members = _rows(w)          # KO genes: every gene (fewer than n_genes), in gene order
    evidence = run(CaseFor("knockout_coherence", LABEL)(panel, ONE), w.ctx)
    profiles = out.knockouts.copy()
    np.fill_diagonal(profiles, 0.0)  # each KO gene's own output left out
    sim = _cosine(profiles)
    assert evidence.effect == pytest.approx(_within_minus_all(sim, members), abs=1e-9)
    reference = _mc_p(lambda s: _within_minus_all(sim, list(s)), len(sim), len(members), evidence.effect)
    assert _close_p(evidence.p, reference, 2000)


def test_knockout_cross_line(planted):
    w, panel = planted
    (a, members), (b, _) = _rows(w), _rows(w, "model_b")
    evidence = run(CaseFor("knockout_cross_line", LABEL)(panel, PAIR), w.ctx)
    r = np.array([spearmanr(np.delete(a.knockouts[i], i), np.delete(b.knockouts[i], i)).statistic
                  for i in range(len(w.genes))])
    assert evidence.value == pytest.approx(r[members].mean(), abs=1e-9)
    assert evidence.effect == pytest.approx(r[members].mean() - r.mean(), abs=1e-9)
    reference = _mc_p(lambda s: r[s].mean(), len(r), len(members), evidence.value)
    assert _close_p(evidence.p, reference, 2000)


def _abs_block(w, out, kds, regulators, targets) -> np.ndarray:
    """[K, R, T] |dY[target]/dX[regulator]| under each KD, from the planted array."""
    j = out.targeted[[1 + w.kds.index(k) for k in kds]]
    return np.abs(j[:, [w.genes.index(g) for g in regulators]][:, :, [w.genes.index(g) for g in targets]])


def _jacobian_design(evidence):
    d = evidence.details
    return d["pathway_kds"], d["unrelated_kds"], d["regulators"], d["targets"]


def test_targeted_jacobian(planted):
    w, panel = planted
    out = w.ctx.outputs["model_a"]
    evidence = run(CaseFor("targeted_jacobian")(panel, ONE), w.ctx)
    pathway, unrelated, regulators, targets = _jacobian_design(evidence)
    kds = pathway + unrelated
    block = _abs_block(w, out, kds, regulators, targets).reshape(len(kds), -1)
    scores = (block / block.mean(axis=0)).mean(axis=1)
    assert [evidence.details["scores"][k] for k in kds] == pytest.approx(scores.tolist())
    assert evidence.details["raw_ratio"] == pytest.approx(block[:len(pathway)].mean() / block[len(pathway):].mean())
    u = mannwhitneyu(scores[:len(pathway)], scores[len(pathway):]).statistic
    assert evidence.effect == pytest.approx(2 * u / (len(pathway) * len(unrelated)) - 1)
    # the null: every relabeling within the groups the magnitude matching made (each pathway KD and the
    # unrelated KDs matched to it), enumerated here; matches are each other's nearest in ΔY norm
    matched_to = evidence.details["matched_to"]
    shifts = np.linalg.norm(out.shifts[1:], axis=1)
    spread = [abs(shifts[w.kds.index(k)] - shifts[w.kds.index(q)]) for k, q in matched_to.items()]
    assert sorted(matched_to) == sorted(unrelated) and np.median(spread) < np.std(shifts) / 4
    groups = [[q, *[k for k in unrelated if matched_to[k] == q]] for q in pathway]
    ranks = dict(zip(kds, rankdata(scores), strict=True))           # the statistic is the rank-biserial r
    observed = sum(ranks[k] for k in pathway)
    null = [sum(ranks[k] for k in choice) for choice in itertools.product(*groups)]
    assert evidence.p == pytest.approx(np.mean(np.array(null) >= observed - 1e-12))


def test_jacobian_routing_score(planted):
    w, panel = planted
    out = w.ctx.outputs["model_a"]
    evidence = run(CaseFor("jacobian_routing_score")(panel, ONE), w.ctx)
    pathway, unrelated, regulators, targets = _jacobian_design(evidence)
    kds = pathway + unrelated
    null_regulators, null_targets = evidence.details["null_regulators"], evidence.details["null_targets"]

    scores = (_abs_block(w, out, kds, regulators, targets).mean(axis=(1, 2))
              / _abs_block(w, out, kds, null_regulators, null_targets).mean(axis=(1, 2)))
    assert [evidence.details["scores"][k] for k in kds] == pytest.approx(scores.tolist())
    u = mannwhitneyu(scores[:len(pathway)], scores[len(pathway):]).statistic
    assert evidence.value == pytest.approx(u / (len(pathway) * len(unrelated)))


def _centred_svd(out):
    flat = out.routing.reshape(len(out.routing), -1).astype(np.float64)
    return np.linalg.svd(flat - flat.mean(axis=0), full_matrices=False)


def test_routing_axes_kd_scores(planted):
    w, panel = planted
    out, members = _rows(w)
    evidence = run(CaseFor("routing_axes")(panel, ONE), w.ctx)
    u, s, _ = _centred_svd(out)
    mask = np.isin(np.arange(len(w.kds)), members)
    best = 0.0
    for axis in range(5):
        score = u[:, axis] * s[axis]
        a = mannwhitneyu(score[mask], score[~mask]).statistic / (mask.sum() * (~mask).sum())
        best = max(best, a, 1 - a)
    assert evidence.value == pytest.approx(best)


def test_routing_axes_gene_loadings(planted):
    w, panel = planted
    out, _ = _rows(w)
    evidence = run(CaseFor("routing_axes", {"by": "gene_loadings"})(panel, ONE), w.ctx)
    _, _, vt = _centred_svd(out)
    genes = [w.genes.index(g) for g in MEMBERS]
    share = (vt[:5].reshape(5, len(w.genes), -1) ** 2).sum(axis=2)
    share /= share.sum(axis=1, keepdims=True)
    fold = share[:, genes].sum(axis=1) * len(w.genes) / len(genes)
    assert evidence.value == pytest.approx(fold.max())
    assert evidence.ci == pytest.approx(_t_interval(share[np.argmax(fold), genes] * len(w.genes) - 1))


def _onehot(out, k):
    return out.routing[k].astype(np.float64) @ out.encoder[k].astype(np.float64)


def test_routing_divergence_and_consistency(planted):
    w, panel = planted
    (a, members), (b, _) = _rows(w), _rows(w, "model_b")
    divergence = np.array([np.linalg.norm(_onehot(a, k) - _onehot(b, k))
                           / ((np.linalg.norm(_onehot(a, k)) + np.linalg.norm(_onehot(b, k))) / 2)
                           for k in range(len(w.kds))])
    r = np.array([pearsonr(_onehot(a, k).ravel(), _onehot(b, k).ravel()).statistic for k in range(len(w.kds))])
    evidence = run(CaseFor("routing_divergence")(panel, PAIR), w.ctx)
    assert evidence.value == pytest.approx(divergence[members].mean())
    assert evidence.effect == pytest.approx(divergence[members].mean() - divergence.mean())
    assert evidence.ci == pytest.approx(_t_interval(divergence[members] - divergence.mean()))
    evidence = run(CaseFor("routing_consistency")(panel, PAIR), w.ctx)
    assert evidence.value == pytest.approx(r[members].mean())
    assert evidence.effect == pytest.approx(r[members].mean() - r.mean())
    assert evidence.ci == pytest.approx(_t_interval(r[members] - r.mean()))


def test_routing_divergence_runs_over_the_kds_either_model_learned():
    """KDs neither model learned (untrained in both: planted `learned` masks) leave the divergence test,
    statistic and null; a pathway made of them is inconclusive, however much they diverge."""
    w = world(7, plant={"kds": MEMBERS, "genes": MEMBERS, "size": 1.2})
    panel = Panel("p", kds=MEMBERS, genes=MEMBERS)
    a, b = w.ctx.outputs["model_a"], w.ctx.outputs["model_b"]
    only_a = np.ones(len(w.kds), bool)
    only_a[40:50] = False                  # learned by model_b only: still judged
    neither = np.arange(50, 60)
    a.learned, b.learned = only_a.copy(), np.ones(len(w.kds), bool)      # a world of its own: nothing to restore
    a.learned[neither], b.learned[neither] = False, False
    evidence = run(CaseFor("routing_divergence")(panel, PAIR), w.ctx)
    kept = [k for k in range(len(w.kds)) if k not in set(neither)]
    divergence = np.array([np.linalg.norm(_onehot(a, k) - _onehot(b, k))
                           / ((np.linalg.norm(_onehot(a, k)) + np.linalg.norm(_onehot(b, k))) / 2) for k in kept])
    members = [kept.index(w.kds.index(k)) for k in MEMBERS]
    assert evidence.n["kds"] == 50 and evidence.n["kds_judged"] == 60
    assert evidence.effect == pytest.approx(divergence[members].mean() - divergence.mean())
    with pytest.raises(Inconclusive, match="neither model learned diverge by noise"):
        run(CaseFor("routing_divergence")(Panel("p", kds=tuple(w.kds[50:58]), genes=()), PAIR), w.ctx)


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    half = student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def _routing_cosine(out):
    flat = out.routing.reshape(len(out.routing), -1).astype(np.float64)
    return _cosine(flat - flat.mean(axis=0))


def test_routing_output_correlation(planted):
    w, _ = planted
    out = w.ctx.outputs["model_a"]
    case = CaseFor("routing_output_correlation", {"reinit_copies": 0})(Panel("p", (), ()), {"model": "model_a"})
    evidence = run(case, w.ctx)
    upper = np.triu_indices(len(w.kds), 1)
    dy, jac = _cosine(out.shifts[1:]), _routing_cosine(out)
    assert evidence.value == pytest.approx(pearsonr(dy[upper], jac[upper]).statistic)
    rng = np.random.default_rng(5)
    null = []
    for _ in range(2000):
        order = rng.permutation(len(dy))
        null.append(pearsonr(dy[np.ix_(order, order)][upper], jac[upper]).statistic)
    reference = (1 + np.sum(np.array(null) >= evidence.value)) / 2001
    assert _close_p(evidence.p, reference, 999, 2000)


def test_routing_output_correlation_by_spearman(planted):
    w, _ = planted
    out = w.ctx.outputs["model_a"]
    case = CaseFor("routing_output_correlation", {"reinit_copies": 0, "method": "spearman"})(Panel("p", (), ()),
                                                                                             {"model": "model_a"})
    evidence = run(case, w.ctx)
    upper = np.triu_indices(len(w.kds), 1)
    dy, jac = _cosine(out.shifts[1:]), _routing_cosine(out)
    assert evidence.value == pytest.approx(spearmanr(dy[upper], jac[upper]).statistic)
    assert evidence.details["pearson_r"] == pytest.approx(pearsonr(dy[upper], jac[upper]).statistic)
    assert evidence.statistic.startswith("Spearman r")
    rng = np.random.default_rng(5)
    null = [spearmanr(dy[np.ix_(o, o)][upper], jac[upper]).statistic
            for o in (rng.permutation(len(dy)) for _ in range(1000))]
    assert _close_p(evidence.p, (1 + np.sum(np.array(null) >= evidence.value)) / 1001, 999, 1000)


def test_routing_cluster_sharing(planted):
    w, _ = planted
    out = w.ctx.outputs["model_a"]
    evidence = run(CaseFor("routing_cluster_sharing", {"reinit_copies": 0})(Panel("p", (), ()), {"model": "model_a"}),
                   w.ctx)
    labels = fcluster(linkage(pdist(out.shifts[1:], "cosine"), "average"), t=8, criterion="maxclust")
    jac = _routing_cosine(out)
    i, j = np.triu_indices(len(labels), 1)
    same = labels[i] == labels[j]
    assert evidence.value == pytest.approx(jac[i, j][same].mean() - jac[i, j][~same].mean())
