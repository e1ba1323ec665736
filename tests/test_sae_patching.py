"""The SAE feature-patching check (suite/checks/patching.py): its numbers against computations of the
test's own, its power on a planted circuit, and its refusal of features that are active but not
specific (NB07's feature 1069). Its false-positive rate is in tests/test_check_calibration.py; the
probe (patching a real model's forward pass) in tests/test_patching.py."""

from __future__ import annotations

import numpy as np
import pytest

from suite import stats
from suite.checks.patching import activity_strata, matched_feature_sets, select_features, specificity
from suite.panels import Panel

from .planted import CaseFor, run, world

CASE = CaseFor("sae_feature_patching", {"n_cell_sets": 2, "reinit_copies": 0, "n_permutations": 199})
ONE = {"model": "model_a", "pathway": "p"}


def test_specificity_is_the_mean_effect_on_the_response_genes_over_that_on_all_judged_genes():
    rng = np.random.default_rng(0)
    effects = rng.normal(size=(5, 3, 12))
    effects[2, 1] = 0.0
    response = rng.random((3, 12)) < 0.4
    judged = np.ones((3, 12), bool)
    judged[:, 0] = False
    response &= judged
    found = specificity(effects, response, judged)
    for n in range(5):
        for k in range(3):
            size = [abs(effects[n, k, g]) for g in range(12)]
            on = [size[g] for g in range(12) if response[k, g]]
            everywhere = [size[g] for g in range(12) if judged[k, g]]
            if n == 2 and k == 1:
                assert np.isnan(found[n, k])       # no effect at all: undefined, never a number
            else:
                assert found[n, k] == pytest.approx(sum(on) / len(on) / (sum(everywhere) / len(everywhere)))


def test_selection_takes_the_features_most_raised_under_the_pathway_and_only_raised_ones():
    mean = np.array([[1.0, 0.0, 2.0, 0.5], [3.0, 0.0, 2.0, 0.4], [0.0, 1.0, 2.0, 0.1], [0.0, 3.0, 2.0, 0.2]])
    pathway = np.array([True, True, False, False])
    features, contrast = select_features(mean, pathway, 3)
    assert contrast.tolist() == pytest.approx([2.0, -2.0, 0.0, 0.3])
    assert features.tolist() == [0, 3]         # feature 2 is no more active under the pathway: not taken


def test_matched_random_feature_sets_keep_the_chosen_features_count_in_each_activity_stratum():
    rng = np.random.default_rng(3)
    frequency, magnitude = rng.random(80), rng.random(80) * 5
    chosen = np.array([4, 17, 33, 50])
    strata = activity_strata(frequency, magnitude, 10)
    assert sorted(np.concatenate(strata).tolist()) == list(range(80)) and all(8 <= len(s) <= 12 for s in strata)
    for stratum in strata:      # alike in frequency (one quantile bin) and, within it, in magnitude
        assert len({int(np.searchsorted(np.sort(frequency), frequency[f]) * 3 // 80) for f in stratum}) == 1
    where = {int(f): i for i, s in enumerate(strata) for f in s}
    draws = matched_feature_sets(chosen, frequency, magnitude, 10, 400, np.random.default_rng(0))
    wanted = sorted(where[f] for f in chosen)
    assert all(sorted(where[int(f)] for f in row) == wanted and len(set(row)) == len(row) for row in draws)
    # the chosen features are drawn like any other of their stratum: a permutation of which were chosen
    chosen_in = {i: sum(where[f] == i for f in chosen) for i in set(where[f] for f in chosen)}
    share = np.isin(draws, chosen).mean()
    assert share == pytest.approx(np.mean([chosen_in[where[f]] / len(strata[where[f]]) for f in chosen]), abs=0.02)


def _panel(w, size: int = 8) -> Panel:
    return Panel("p", kds=w.kds[:size], genes=w.genes[20:28])


def _plant_circuit(w, panel: Panel, specific: bool, strength: float = 3.0) -> None:
    """Features 0-5 of model_a active under the panel's KDs only, as often and as strongly as active
    features are (so they fall in several activity strata). Their ablation effects are those of other
    features (the genes any feature moves, as much as any feature moves them: active but not
    specific), and with `specific` the panel's genes move `strength` times more."""
    out, model = w.ctx.outputs["model_a"], w.ctx.planted["model_a"]
    rows = [model.pert_index(k) for k in panel.kds]
    others = [i for i in range(len(model.pert_names)) if i not in rows]
    genes = [model.gene_names.index(g) for g in panel.genes]
    rng = np.random.default_rng(11)
    for f in range(6):
        frequency, magnitude = rng.uniform(0.3, 1.0), np.exp(rng.normal(0, 0.5))
        out.sae_activity[:, rows, f] = [[frequency * magnitude], [frequency], [magnitude]]
        out.sae_activity[:, others, f] = 0.0
        out.sae_effects[f][rows] = out.sae_effects[40 + f][rows]
        if specific:
            out.sae_effects[f][np.ix_(rows, genes)] *= strength


def test_numbers_match_a_direct_computation_on_planted_outputs():
    w = world(5, n_kds=40, n_genes=30)
    panel = _panel(w)
    _plant_circuit(w, panel, specific=True)
    evidence = run(CASE(panel, ONE), w.ctx)
    out, model = w.ctx.outputs["model_a"], w.ctx.planted["model_a"]
    rows = [model.pert_index(k) for k in panel.kds]
    others = [model.pert_index(k) for k in model.kd_names if k not in panel.kds]
    contrast = out.sae_activity[0, rows].mean(0) - out.sae_activity[0, others].mean(0)
    chosen = [f for f in np.argsort(-contrast, kind="stable")[:8] if contrast[f] > 0]
    assert [f["feature"] for f in evidence.details["features"]] == chosen

    def per_kd(features) -> np.ndarray:
        effect = out.sae_effects[list(features)][:, rows].sum(axis=0)                       # [K, G]
        values = []
        for k, kd in enumerate(panel.kds):
            keep = [g for g in range(30) if model.gene_names[g] != kd]
            on = [g for g in keep if model.gene_names[g] in panel.genes]
            values.append(np.abs(effect[k, on]).mean() / np.abs(effect[k, keep]).mean())
        return np.array(values)

    observed = per_kd(chosen)
    assert evidence.value == pytest.approx(observed.mean())
    table = evidence.details["table"]
    assert [row["specificity"] for row in table] == pytest.approx(observed)
    # the null: the draws of the tested sampler (above), each draw's specificity computed here
    every = rows + others          # strata of activity over every KD the test reads
    pool = np.setdiff1d(np.arange(len(contrast)), np.argsort(-contrast, kind="stable")[:4 * len(chosen)])
    draws = matched_feature_sets(np.array(chosen), out.sae_activity[1, every].mean(0),
                                 out.sae_activity[2, every].mean(0), 64, 199, np.random.default_rng(0), pool)
    assert not np.isin(draws, np.argsort(-contrast)[:32]).any()
    null = np.array([per_kd(d) for d in draws])
    assert [row["null_mean"] for row in table] == pytest.approx(null.mean(axis=0))
    excess = observed - null.mean(axis=0)
    assert evidence.effect == pytest.approx(excess.mean()) and evidence.effect > 0.2
    assert evidence.ci == pytest.approx(stats.mean_ci(excess))
    assert evidence.p == pytest.approx((1 + (null.mean(axis=1) >= observed.mean()).sum()) / 200)
    assert evidence.p < 0.05 and evidence.n["null_draws"] == 199


@pytest.mark.parametrize("specific", [True, False])
def test_a_planted_circuit_passes_and_active_but_unspecific_features_do_not(specific):
    """Power on a planted circuit; and NB07's trap: features the pathway switches on whose ablation
    moves every gene alike ("sec_specific ~ 0 after normalization") must not pass."""
    passes = 0
    for seed in range(10):
        w = world(200 + seed, n_kds=40, n_genes=30)
        panel = _panel(w)
        _plant_circuit(w, panel, specific)
        evidence = run(CASE(panel, ONE, seed=seed), w.ctx)
        passes += evidence.p < 0.05 and evidence.effect > 0
    assert passes >= 9 if specific else passes <= 2
