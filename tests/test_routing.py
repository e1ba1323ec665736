"""dY/d(pert_repr) Jacobians, their Gram, axes and one-hot comparisons (probes/routing.py)."""

import numpy as np
import pytest
import torch

from probes.forward import arc_state_forward, forward_sets
from probes.routing import (
    centered_cosine,
    compare_onehot_routing,
    encoder_jacobians,
    pert_jacobians,
    streaming_gram,
    svd_axes,
)

from .helpers import ROOT, tiny_state_model

ORDERINGS = torch.stack([torch.arange(8), torch.arange(8).flip(0)])


def _seed_style(model, cells, pert_repr, orderings):
    """The seed's way: autograd.functional.jacobian of the mean prediction, per KD and ordering."""
    total = 0
    for order in orderings:
        total = total + torch.autograd.functional.jacobian(
            lambda p, c=cells[order]: forward_sets(model, c, p[None]).mean(dim=1)[0], pert_repr)
    return (total / len(orderings)).numpy()


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
@pytest.mark.parametrize("kd_chunk", [1, 3])
def test_pert_jacobians_agree_with_autograd_functional_jacobian(backbone, kd_chunk):
    model = tiny_state_model(backbone)
    cells = torch.rand(8, 12)
    with torch.no_grad():
        reprs = model.pert_encoder(torch.eye(5)[[0, 2, 4]])
    jac = pert_jacobians(model, cells, reprs, ORDERINGS, kd_chunk=kd_chunk, direction_chunk=5)
    assert jac.shape == (3, 12, 16)
    for k in range(3):
        expected = _seed_style(model, cells, reprs[k], ORDERINGS)
        assert np.abs(jac[k] - expected).max() < 1e-4
        assert np.abs(expected).max() > 1e-3          # not trivially zero


def test_one_hot_jacobian_is_the_chain_rule_through_arc_states_own_forward():
    model = tiny_state_model("GPT2")
    cells = torch.rand(8, 12)
    onehots = torch.eye(5)[[1, 3]]
    with torch.no_grad():
        reprs = model.pert_encoder(onehots)
    jac = pert_jacobians(model, cells, reprs, torch.arange(8)[None])
    enc = encoder_jacobians(model, onehots)
    for k in range(2):
        direct = torch.autograd.functional.jacobian(
            lambda o: arc_state_forward(model, cells, o[None]).mean(dim=0), onehots[k]).numpy()
        assert np.abs(jac[k].astype(np.float64) @ enc[k].double().numpy() - direct).max() < 1e-4


def test_streaming_gram_and_centering_equal_the_direct_computation():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(23, 4, 5)) + 10.0       # a large shared component, as released Jacobians have
    gram = streaming_gram(rows, chunk=5)
    flat = rows.reshape(23, -1)
    assert np.allclose(gram, flat @ flat.T)
    centred = flat - flat.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1)
    assert np.allclose(centered_cosine(gram), centred @ centred.T / np.outer(norms, norms))
    raw_cos = gram / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    assert raw_cos.min() > 0.98 and centered_cosine(gram)[~np.eye(23, dtype=bool)].max() < 0.9


def test_svd_axes_equal_numpy_svd_of_the_centred_stack():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(30, 6, 4))
    rows[:10, 2] += 3.0                               # ten KDs share a direction loading on gene 2
    axes = svd_axes(streaming_gram(rows, chunk=7), rows, n_axes=3, chunk=7)
    centred = (rows - rows.mean(axis=0)).reshape(30, -1)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    for a in range(3):
        sign = np.sign(u[:, a] @ axes.scores[:, a])
        assert np.allclose(axes.scores[:, a], sign * u[:, a] * s[a], atol=1e-8)
        loading = (vt[a].reshape(6, 4) ** 2).sum(axis=1)
        assert np.allclose(axes.gene_loadings[a], loading / loading.sum(), atol=1e-8)
    assert np.allclose(axes.variance_share, s[:3] ** 2 / (s ** 2).sum())
    assert axes.gene_loadings[0].argmax() == 2


def test_onehot_comparison_separates_shared_from_different_routing():
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(4, 6, 3))
    enc = torch.tensor(rng.normal(size=(4, 3, 5)))
    other = jac.copy()
    other[2:] = rng.normal(size=(2, 6, 3))
    cmp = compare_onehot_routing(jac, enc, other, enc, list(range(6)), list(range(6)), list(range(5)), list(range(5)))
    assert np.allclose(cmp.correlation[:2], 1.0) and np.allclose(cmp.divergence[:2], 0.0)
    assert np.all(np.abs(cmp.correlation[2:]) < 0.9) and np.all(cmp.divergence[2:] > 0.5)
    # a scaled copy keeps r = 1; reordered genes, aligned by index, still match
    flipped = compare_onehot_routing(jac, enc, 2 * jac[:, ::-1], enc, list(range(6)), list(range(6))[::-1],
                                     list(range(5)), list(range(5)))
    assert np.allclose(flipped.correlation, 1.0)


def test_array_cache_reuses_by_key_and_never_leaves_partial_files(tmp_path):
    from suite.cache import ArrayCache, cache_key

    cache = ArrayCache(tmp_path)
    calls = []

    def fill(out):
        calls.append(1)
        out[:] = 7.0

    key = cache_key("pert_jacobians", fingerprint="abc", size=32)
    first = cache.filled(key, (2, 3), fill)
    again = ArrayCache(tmp_path).filled(key, (2, 3), fill)
    assert len(calls) == 1 and np.array_equal(first, again) and float(again[1, 2]) == 7.0
    assert cache_key("pert_jacobians", fingerprint="abd", size=32) != key      # another checkpoint, another entry

    def broken(out):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.filled(cache_key("x", n=1), (2,), broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.npy"]
    assert np.array_equal(ArrayCache(None).array("k", lambda: np.arange(3)), np.arange(3))


def test_cell_samplings_choose_what_they_say():
    from probes.embeddings import select_cells

    cells = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)       # cell i has total 3i
    top = select_cells(cells, 5, 0, "top_magnitude")
    assert sorted(top[:, 0].tolist()) == [35, 36, 37, 38, 39]
    strata = select_cells(cells, 4, 0, "stratified")[:, 0].tolist()
    assert sorted(int(v) // 10 for v in strata) == [0, 1, 2, 3]                 # one cell per quarter of totals
    assert len(set(select_cells(cells, 10, 1, "random")[:, 0].tolist())) == 10
    with pytest.raises(ValueError, match="sampling must be one of"):
        select_cells(cells, 4, 0, "largest")


def _whole_model_case(write, probe: str):
    """The demo's own settings (hypotheses/routing.yaml: 4 cell orderings) with 2 re-initialised copies."""
    from suite.cases import ModelInfo, expand
    from suite.spec import load_spec_file

    spec = load_spec_file(write("h.yaml", f"""
        schema_version: 1
        panels: [{ROOT / "hypotheses/panels/demo_pathways.yaml"}]
        hypotheses:
          - {{id: h, claim: c, probe: {probe}, axes: {{model: all}},
              params: {{n_permutations: 199, cell_orderings: 4, reinit_copies: 2}}}}
        """))[0]
    return expand(spec, [ModelInfo("hepg2_fewshot~reinit0", "hepg2", "fewshot")])[0]


@pytest.fixture(scope="module")
def demo_run_cached(demo_registry, demo_report):
    """The demo models with the demo run's probe cache (its Jacobians of re-initialised copies)."""
    from suite.cache import ArrayCache
    from suite.runinfo import versions
    from suite.session import RunContext

    return RunContext(demo_registry, torch.device("cpu"), cache=ArrayCache(demo_report.parent.parent / "cache",
                                                                           salt=versions()))


@pytest.mark.parametrize("probe", ["routing_output_correlation", "routing_cluster_sharing"])
def test_a_re_initialised_model_does_not_pass_a_whole_model_routing_check(write, demo_run_cached, probe):
    """An untrained copy of a demo model clears the seeds' rule (r > 0.3, Mantel p < 0.05) as the
    trained model does; what it cannot do is beat its own re-initialised copies more than by chance,
    and here it does not: the selectivity condition fails it."""
    from suite.families import CHECKS
    from suite.verdicts import decide

    case = _whole_model_case(write, probe)
    evidence = CHECKS[probe].run(case, demo_run_cached)
    verdict, reason = decide(evidence, case.spec.pass_rule)
    assert evidence.p < 0.05 and evidence.effect > 0, reason                    # the rule without selectivity ...
    assert probe != "routing_output_correlation" or evidence.value > 0.3, reason  # ... holds
    assert verdict == "fail" and "selectivity" in reason and evidence.details["selectivity"]["margin"] <= 0, reason
    copies = evidence.details["selectivity"]["reinitialised"]
    assert 1 <= len(copies) <= 2 and copies[-1] >= round(evidence.value, 4)     # stopped at the copy that matched
    assert all(c < round(evidence.value, 4) for c in copies[:-1])


def test_copies_are_drawn_until_one_matches_the_trained_model():
    from suite.checks.common import copies_until_matched

    drawn = []

    def copies(values):
        for v in values:
            drawn.append(v)
            yield v

    assert copies_until_matched(0.6, copies([0.5, 0.9, 0.1])) == [0.5, 0.9] and drawn == [0.5, 0.9]
    assert copies_until_matched(1.0, copies([0.5, 0.9, 0.1])) == [0.5, 0.9, 0.1]   # a pass sees every copy
    assert copies_until_matched(0.6, [0.6, 0.1]) == [0.6]                              # a tie is no win
    assert copies_until_matched(0.6, [float("nan"), 0.1])[0] != 0.1                    # undefined stops too
