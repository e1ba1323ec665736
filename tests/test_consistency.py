"""Cross-model consistency (pert_embedding_consistency, representation_consistency): a shared
homogeneous program passes, a decoy of one KD from each program does not.

Inside a block of near-identical KDs, which KD is whose nearest neighbour is noise: the first
version (the Jaccard overlap of each member's 5 nearest KDs) failed a 30-KD program planted
identically in both models, while the profile statistic (each member's Spearman r between its
similarities to every other KD in the two models) asks whether the block is the same block."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from suite import stats
from suite.panels import Panel

from .planted import CaseFor, run, world

N_KDS, BLOCK = 90, 30


def test_profile_correlations_are_each_rows_spearman_r_without_itself():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    sim_a, sim_b = stats.cosine_similarity_matrix(a), stats.cosine_similarity_matrix(a + 0.5 * b)
    found = stats.profile_correlations(sim_a, sim_b)
    for i in range(12):
        others = np.arange(12) != i
        assert found[i] == pytest.approx(spearmanr(sim_a[i, others], sim_b[i, others])[0])


def _shared_block(seed: int):
    """Two models (agreement 0.8) whose KDs fall in 6 clusters, plus a 30-KD program planted in both."""
    kds = [f"g{i:02d}" if i < 40 else f"k{i - 40:02d}" for i in range(N_KDS)]
    w = world(seed, n_kds=N_KDS, n_genes=40, weak_share=0.1, plant={"kds": kds[:BLOCK], "size": 3.0})
    for name in w.names:        # the control embedding where KDs without an effect sit (as in a trained model)
        w.ctx.outputs[name].embeddings[0] = 0.0
    block = Panel("block", tuple(kds[:BLOCK]), ())
    outside = [i for i in range(BLOCK, N_KDS) if w.magnitude[i] > np.median(w.magnitude)]
    picked = [next(i for i in outside if w.cluster[i] == c) for c in sorted(set(w.cluster[outside]))]
    decoy = Panel("decoy", tuple(w.kds[i] for i in picked), ())
    return w, block, decoy


PAIR = {"model_pair": ("model_a", "model_b")}
CHECKS = [("pert_embedding_consistency", {}), ("representation_consistency", {"n_bootstrap": 0})]


@pytest.mark.parametrize(("probe", "params"), CHECKS, ids=[c[0] for c in CHECKS])
@pytest.mark.parametrize("seed", range(3))
def test_a_program_shared_by_both_models_passes_and_a_decoy_does_not(probe, params, seed):
    from suite.verdicts import decide

    w, block, decoy = _shared_block(seed)
    verdicts = {}
    for panel in (block, decoy):
        case = CaseFor(probe, {"n_permutations": 999, **params})(panel, PAIR | {"pathway": panel.name})
        verdicts[panel.name] = decide(run(case, w.ctx), case.spec.pass_rule)[0]
    assert verdicts == {"block": "pass", "decoy": "fail"}


@pytest.mark.parametrize("seed", range(3))
def test_the_nearest_neighbour_overlap_misses_the_shared_block(seed):
    """Why the default changed: on the same planted pair the overlap of the 5 nearest KDs says the
    block is no more consistent than random learned KDs."""
    w, block, _ = _shared_block(seed)
    case = CaseFor("pert_embedding_consistency", {"n_permutations": 999, "statistic": "neighbour_overlap"})(
        block, PAIR | {"pathway": "block"})
    assert run(case, w.ctx).p > 0.05
