"""Routing Jacobians by sketch (`directions`): dY/d(pert_repr) along r random directions instead of
all H estimates the Jacobians' inner products without bias; the card states the jackknife standard
error of each statistic. Truth here is the exact computation, done independently with numpy."""

import numpy as np
import pytest
import torch

from probes.routing import (
    centered_cosine,
    compare_onehot_routing,
    compare_sketched_routing,
    direction_groups,
    encoder_jacobians,
    group_grams,
    jackknife_se,
    onehot_tangents,
    pert_jacobians,
    sketch_directions,
    streaming_gram,
)

from .helpers import ROOT, tiny_state_model


def _planted_jacobians(seed: int = 0, kds: int = 40, genes: int = 30, hidden: int = 96, programs: int = 4):
    """[K, G, H] Jacobians of KDs in `programs` groups: a shared component (what every KD's Jacobian
    has in a released model), a low-rank component per program and noise; and each KD's program."""
    rng = np.random.default_rng(seed)
    label = np.arange(kds) % programs
    shared = rng.standard_normal((genes, hidden))
    factors = [rng.standard_normal((genes, 3)) @ rng.standard_normal((3, hidden)) for _ in range(programs)]
    jac = np.stack([2.0 * shared + factors[label[k]] * rng.uniform(0.5, 1.5)
                    + 0.7 * rng.standard_normal((genes, hidden)) for k in range(kds)])
    return jac.astype(np.float32), label


def _pair_r(a: np.ndarray, b: np.ndarray) -> float:
    upper = np.triu_indices(len(a), 1)
    return float(np.corrcoef(a[upper], b[upper])[0, 1])


def test_directions_are_seeded_scaled_and_of_identity_covariance():
    v = sketch_directions(50, 20_000, seed=3).double().numpy()
    assert np.allclose(v, sketch_directions(50, 20_000, seed=3).double().numpy())
    assert not np.allclose(v[:5], sketch_directions(50, 20_000, seed=4).double().numpy()[:5])
    assert np.allclose(np.abs(v), 1 / np.sqrt(20_000))                          # Rademacher signs, scaled
    assert np.abs(v.T @ v - np.eye(50)).max() < 0.05                             # E[V^T V] = I
    g = sketch_directions(50, 20_000, seed=3, kind="gaussian").double().numpy()
    assert np.abs(g.T @ g - np.eye(50)).max() < 0.06


def test_sketched_gram_is_unbiased_and_its_jackknife_error_is_the_spread_across_sketches():
    jac, label = _planted_jacobians()
    exact = streaming_gram(jac)
    target = (label[:, None] == label[None, :]).astype(float)      # a planted 'ΔY similarity'
    r_exact = _pair_r(target, centered_cosine(exact))
    grams, rs, ses = [], [], []
    for seed in range(60):
        v = sketch_directions(jac.shape[2], 16, seed).numpy()
        rows = jac @ v.T
        gram = streaming_gram(rows)
        groups = direction_groups(16)
        parts = group_grams(rows, groups)
        assert np.allclose(parts.sum(axis=0), gram, rtol=1e-6, atol=1e-6)       # the groups add up
        grams.append(gram)
        rs.append(_pair_r(target, centered_cosine(gram)))
        ses.append(jackknife_se([_pair_r(target, centered_cosine(gram - part)) for part in parts]))
    grams = np.stack(grams)
    # unbiased: the mean of 60 sketches is the exact Gram within 4.5 standard errors of that mean, entry by
    # entry and in total (the entries share one fluctuation, the shared component's, so not averaged as if apart)
    z = (grams.mean(axis=0) - exact) / (grams.std(axis=0, ddof=1) / np.sqrt(len(grams)))
    totals = grams.sum(axis=(1, 2))
    assert np.abs(z).max() < 4.5
    assert abs(totals.mean() - exact.sum()) < 4 * totals.std(ddof=1) / np.sqrt(len(totals))
    spread = float(np.std(rs, ddof=1))
    assert 0.5 < np.median(ses) / spread < 2.0, (np.median(ses), spread)       # the stated error is the real one
    assert np.mean(np.abs(np.array(rs) - r_exact) < 3 * np.array(ses)) >= 0.9


def test_pert_jacobians_along_directions_are_the_full_jacobians_applied_to_them():
    model = tiny_state_model("GPT2")
    cells = torch.rand(8, 12)
    with torch.no_grad():
        reprs = model.pert_encoder(torch.eye(5)[[0, 2, 4]])
    orders = torch.arange(8)[None]
    full = pert_jacobians(model, cells, reprs, orders).astype(np.float64)       # [3, 12, 16]
    v = sketch_directions(16, 6, seed=1)
    along = pert_jacobians(model, cells, reprs, orders, directions=v, kd_chunk=2)
    assert along.shape == (3, 12, 6)
    assert np.abs(along - full @ v.double().numpy().T).max() < 1e-5
    per_kd = torch.randn(3, 4, 16)                                               # each KD its own tangents
    own = pert_jacobians(model, cells, reprs, orders, directions=per_kd)
    assert np.abs(own - np.einsum("kgh,krh->kgr", full, per_kd.double().numpy())).max() < 1e-5


def test_onehot_tangents_are_the_encoder_jacobian_applied_to_one_hot_directions():
    model = tiny_state_model("GPT2")
    onehots = torch.eye(5)[[1, 3]]
    u = torch.randn(7, 5)
    tangents = onehot_tangents(model, onehots, u)
    enc = encoder_jacobians(model, onehots)                                      # [2, H, 5]
    assert torch.allclose(tangents, torch.einsum("khp,rp->krh", enc, u), atol=1e-5)


def _onehot_pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    k, g, vocab = 25, 15, 60
    shared = rng.standard_normal((g, vocab)) + 3.0                               # a large common mean entry
    a = np.stack([shared + rng.standard_normal((g, vocab)) for _ in range(k)])
    b = np.stack([shared * (1 + (i % 3)) + rng.standard_normal((g, vocab)) * (1 + i % 4) for i in range(k)])
    return a, b


def _sketch_rows(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.concatenate([a @ u.T, a.sum(axis=2, keepdims=True)], axis=2)


def test_sketched_one_hot_comparison_is_exact_on_unit_directions_and_within_its_error_on_a_sketch():
    a, b = _onehot_pair()
    k, g, vocab = a.shape
    eye = torch.eye(vocab)
    # as compare_onehot_routing sees them: J = A itself, the encoder the identity
    exact = compare_onehot_routing(a, eye.expand(k, -1, -1), b, eye.expand(k, -1, -1), list(range(g)),
                                   list(range(g)), list(range(vocab)), list(range(vocab)))
    unit = compare_sketched_routing(_sketch_rows(a, np.eye(vocab)), _sketch_rows(b, np.eye(vocab)), list(range(g)),
                                    list(range(g)), np.ones(vocab), vocab, [np.arange(vocab)]).estimate
    assert np.allclose(unit.correlation, exact.correlation, atol=1e-9)
    assert np.allclose(unit.divergence, exact.divergence, atol=1e-9)
    inside = []
    for seed in range(20):
        u = sketch_directions(vocab, 24, seed).double().numpy()
        found = compare_sketched_routing(_sketch_rows(a, u), _sketch_rows(b, u), list(range(g)), list(range(g)),
                                         u.sum(axis=1), vocab, direction_groups(24))
        for field in ("correlation", "divergence"):
            estimate = float(getattr(found.estimate, field).mean())
            se = jackknife_se([float(getattr(c, field).mean()) for c in found.leave_one_out])
            inside.append(abs(estimate - float(getattr(exact, field).mean())) < 3 * se)
    assert np.mean(inside) >= 0.9


def test_directions_take_a_number_or_all_and_say_so_otherwise(write):
    from core.errors import SpecError
    from suite.spec import load_spec_file

    def spec(value):
        return load_spec_file(write("h.yaml", f"""
            schema_version: 1
            panels: [{ROOT / "hypotheses/panels/demo_pathways.yaml"}]
            hypotheses:
              - {{id: h, claim: c, probe: routing_output_correlation, axes: {{model: all}},
                  params: {{directions: {value}}}}}
            """))[0].params.directions

    assert spec(32) == 32 and spec("all") == "all"
    with pytest.raises(SpecError, match=r"directions.*expected a whole number or 'all', got text \('every'\)"):
        spec("every")
    with pytest.raises(SpecError, match=r"out of range"):
        spec(1)


CASES = [
    ("routing_output_correlation", "{model: all}", "reinit_copies: 0"),
    ("routing_cluster_sharing", "{model: all}", "reinit_copies: 0"),
    ("routing_axes", "{model: all, pathway: all}", "by: kd_scores"),
    ("routing_axes", "{model: all, pathway: all}", "by: gene_loadings"),
    ("routing_divergence", "{model_pair: cross_line, pathway: all}", "null_model: magnitude_stratified"),
    ("routing_consistency", "{model_pair: same_line, pathway: all}", "null_model: magnitude_stratified"),
]


@pytest.mark.parametrize(("probe", "axes", "extra"), CASES, ids=[f"{c[0]}-{c[2].split(': ')[1]}" for c in CASES])
def test_a_sketch_of_the_demo_jacobians_agrees_with_the_exact_ones_within_its_stated_error(
        write, demo_run, probe, axes, extra):
    """The demo's models (H 64) sketched along 24 directions: every statistic within 4 stated standard
    errors of the exact one (plus float slack), the same verdict where the exact one is not near its
    threshold, and the card saying what was reduced."""
    from core.errors import Inconclusive
    from suite.cases import ModelInfo, expand
    from suite.families import CHECKS
    from suite.spec import load_spec_file
    from suite.verdicts import decide

    def cases(directions):
        spec = load_spec_file(write("h.yaml", f"""
            schema_version: 1
            panels: [{ROOT / "hypotheses/panels/demo_pathways.yaml"}]
            hypotheses:
              - {{id: h, claim: c, probe: {probe}, axes: {axes},
                  params: {{n_permutations: 199, cell_orderings: 4, directions: {directions}, {extra}}}}}
            """))[0]
        infos = [ModelInfo(e.name, e.cell_line, e.split) for e in demo_run.registry.values()]
        return [c for c in expand(spec, infos)
                if c.axes.get("model", "hepg2_fewshot") == "hepg2_fewshot"
                and c.axes.get("model_pair", ("hepg2_fewshot",))[0] == "hepg2_fewshot"]

    compared = 0
    for exact_case, sketched_case in zip(cases("all"), cases(24), strict=True):
        try:
            exact = CHECKS[probe].run(exact_case, demo_run)
        except Inconclusive:
            continue
        sketched = CHECKS[probe].run(sketched_case, demo_run)
        note = sketched.details["sketch"]
        assert note["directions"] == 24 and note["width"] in (64, 125) and "sketch" not in exact.details
        assert sketched.n["directions"] == 24 and any("24 random" in t for t in sketched.details["reduced"])
        assert abs(sketched.value - exact.value) <= 4 * note["se"] + 0.02, (exact_case.case_id, note)
        if exact.p is not None and (exact.p < 0.01 or exact.p > 0.2):
            rule = exact_case.spec.pass_rule
            assert decide(sketched, rule)[0] == decide(exact, rule)[0], exact_case.case_id
        compared += 1
    assert compared >= 1
