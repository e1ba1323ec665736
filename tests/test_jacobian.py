"""Targeted Jacobians: both modes against torch.autograd.functional.jacobian, and the panel tests."""

import numpy as np
import pytest
import torch

from probes.forward import forward_sets
from probes.jacobian import (
    _one_pass_is_exact,
    forward_mode_backbone,
    set_jacobian,
    targeted_jacobians,
    targeted_jacobians_reference,
)
from suite.verdicts import Evidence, PassRule, decide

from .helpers import tiny_state_model

IDENTITY = torch.arange(8)[None]


def _reference(model, cells, pert_repr):
    """Full Jacobian [S, G, S, G] of the set's predictions with respect to its inputs."""
    return torch.autograd.functional.jacobian(lambda x: forward_sets(model, x, pert_repr[None])[0], cells)


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
def test_both_modes_agree_with_autograd_functional_jacobian(backbone):
    model = tiny_state_model(backbone)
    cells = torch.rand(8, 12)
    with torch.no_grad():
        reprs = model.pert_encoder(torch.eye(5)[[1, 3]])
    regulators = [2, 7]
    per_cell = targeted_jacobians(model, cells, reprs, regulators, "per_cell", IDENTITY)
    set_mode = targeted_jacobians(model, cells, reprs, regulators, "set", IDENTITY)
    for k in range(2):
        full = _reference(model, cells, reprs[k])                       # [c, j, d, i]
        diagonal = full[torch.arange(8), :, torch.arange(8), :]         # [c, j, i]: dY_c[j] / dX_c[i]
        expected_cell = diagonal.mean(0)[:, regulators].T.numpy()        # [R, G]
        expected_set = full.mean(dim=(0, 2))[:, regulators].T.numpy()
        assert np.allclose(per_cell[k], expected_cell, atol=1e-4)
        assert np.allclose(set_mode[k], expected_set, atol=1e-4)


def test_per_cell_differs_from_set_only_where_cells_attend_to_each_other():
    """Without cross-cell terms the set mode is the per-cell mode divided by the set size."""
    cells = torch.rand(8, 12)
    model = tiny_state_model("llama")                                    # bidirectional
    with torch.no_grad():
        reprs = model.pert_encoder(torch.eye(5)[[2]])
    per_cell = targeted_jacobians(model, cells, reprs, [4], "per_cell", IDENTITY)
    set_mode = targeted_jacobians(model, cells, reprs, [4], "set", IDENTITY)
    assert not np.allclose(per_cell, 8 * set_mode, atol=1e-5)
    for block in model.transformer_backbone.layers:                      # cut every cross-cell path
        torch.nn.init.zeros_(block.self_attn.o_proj.weight)
    per_cell = targeted_jacobians(model, cells, reprs, [4], "per_cell", IDENTITY)
    set_mode = targeted_jacobians(model, cells, reprs, [4], "set", IDENTITY)
    assert np.allclose(per_cell, 8 * set_mode, atol=1e-6)


def test_forward_mode_set_jacobian_equals_the_reverse_mode_loop():
    model = tiny_state_model("GPT2", seed=2)
    cells = torch.rand(8, 12)
    with torch.no_grad():
        rep = model.pert_encoder(torch.eye(5)[[4]])
    forward = targeted_jacobians(model, cells, rep, [1, 5], "set", IDENTITY)[0]
    reverse = set_jacobian(model, cells, rep[0], [1, 5], list(range(12)))
    assert np.allclose(forward, reverse, atol=1e-6)


@pytest.mark.parametrize("mode", ["per_cell", "set"])
@pytest.mark.parametrize("budget", [1, 3000, None])
def test_the_batched_pass_equals_the_one_kd_one_ordering_reference(mode, budget):
    """KDs and orderings batched into one vmapped pass, in blocks of every size from one KD to all
    of them (budget 1: one KD a pass; 3000 floats: uneven blocks), give the old loop's numbers."""
    model = tiny_state_model("GPT2", seed=3)
    cells = torch.rand(8, 12)
    with torch.no_grad():
        reprs = model.pert_encoder(torch.eye(5)[[0, 1, 2, 4]])
    orderings = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    batched = targeted_jacobians(model, cells, reprs, [2, 9, 11], mode, orderings, budget=budget)
    reference = targeted_jacobians_reference(model, cells, reprs, [2, 9, 11], mode, orderings)
    assert batched.shape == (4, 3, 12)
    assert np.abs(batched).max() > 1e-3
    np.testing.assert_allclose(batched, reference, rtol=1e-5, atol=1e-7)


def _diagonal_reference(model, cells, pert_repr, regulators):
    full = _reference(model, cells, pert_repr)                          # [c, j, d, i]
    return full[torch.arange(8), :, torch.arange(8), :].mean(0)[:, regulators].T.numpy()


def test_a_causal_gpt2_gets_every_cells_own_sensitivity_in_one_pass():
    model = tiny_state_model("GPT2", seed=5)
    cells = torch.rand(8, 12)
    rep = model.pert_encoder(torch.eye(5)[[2]]).detach()
    with forward_mode_backbone(model, cells, rep[0]):
        assert _one_pass_is_exact(model, cells, rep[0])
    ours = targeted_jacobians(model, cells, rep, [0, 6], "per_cell", IDENTITY)[0]
    np.testing.assert_allclose(ours, _diagonal_reference(model, cells, rep[0], [0, 6]), atol=1e-6)


def test_a_gpt2_whose_attention_is_bidirectional_falls_back_to_one_tangent_per_cell(monkeypatch):
    """arc-state's GPT2BidirectionalModel means to lift the causal mask; where it does, the one-pass
    shortcut would miss the paths from a cell to the others and back: the probe must notice."""
    from transformers.models.gpt2 import modeling_gpt2

    model = tiny_state_model("GPT2", seed=5)
    for block in model.transformer_backbone.h:
        block.attn.bias.fill_(True)
        block.attn.c_attn.weight.data *= 4                              # sharper attention: larger cross-cell paths
    monkeypatch.setattr(modeling_gpt2, "create_causal_mask", lambda **_: None)
    model.transformer_backbone.config._attn_implementation = "eager"    # SDPA would take a missing mask as causal
    cells = torch.rand(8, 12)
    rep = model.pert_encoder(torch.eye(5)[[2]]).detach()
    moved = cells.clone()
    moved[7] += 1
    assert not torch.allclose(forward_sets(model, cells, rep)[0, 0], forward_sets(model, moved, rep)[0, 0])
    with forward_mode_backbone(model, cells, rep[0]):
        assert not _one_pass_is_exact(model, cells, rep[0])
    ours = targeted_jacobians(model, cells, rep, [0, 6], "per_cell", IDENTITY)[0]
    np.testing.assert_allclose(ours, _diagonal_reference(model, cells, rep[0], [0, 6]), atol=1e-6)


def test_the_forward_mode_backbone_swaps_gelu_for_the_same_function_and_restores_it():
    model = tiny_state_model("GPT2", seed=4)
    act = model.transformer_backbone.h[0].mlp.act
    cells, rep = torch.rand(8, 12), model.pert_encoder(torch.eye(5)[[1]]).detach()
    x = torch.linspace(-4, 4, 101)
    with forward_mode_backbone(model, cells, rep[0]):
        assert "forward" in vars(act)                                   # the fused kernel is in place
        fused = act(x)
    assert "forward" not in vars(act)                                   # and gone afterwards
    np.testing.assert_allclose(fused.numpy(), act(x).numpy(), atol=1e-6)


def test_a_failed_specificity_condition_fails_the_verdict():
    evidence = Evidence("r", 0.9, 0.9, None, 0.01, {}, "null", 0, conditions=((False, "specificity: p = 0.01"),))
    verdict, reason = decide(evidence, PassRule())
    assert verdict == "fail" and "specificity: p = 0.01" in reason
    held = Evidence("r", 0.9, 0.9, None, 0.01, {}, "null", 0, conditions=((True, "specificity ok"),))
    assert decide(held, PassRule())[0] == "pass"


# ---- the KD is the unit of replication ---------------------------------------------------------

GENES = tuple(f"G{i}" for i in range(12))


class _Jacobians:
    """A run context of one model whose targeted Jacobians are given: J[kd][regulator] -> [G]."""

    programs = ()                 # the run's panels: none besides the tested one

    def background_sample(self, names):     # every KD: no background sample
        return None

    def __init__(self, kds: list[str], jac: dict):
        from types import SimpleNamespace

        self.jac = jac
        cells = torch.arange(1.0, 13.0).repeat(4, 1)
        self.m = SimpleNamespace(name="m", gene_names=GENES, input_genes=GENES, kd_names=tuple(kds),
                                 gene_universe=frozenset(GENES + tuple(kds)), cells=cells, cell_set_len=4,
                                 output_expression=cells.mean(dim=0).double().numpy(), pert_index=list(kds).index)

    def model(self, name):
        return self.m

    def n_orderings(self, name, requested):
        return 1

    def output_shifts(self, name, size, seed, n_orderings, sampling="random"):
        return np.ones((len(self.m.kd_names), len(GENES)))

    def learnedness(self, name):
        from suite.learnedness import from_checkpoint

        return from_checkpoint(self.m.kd_names, np.zeros(len(self.m.kd_names), dtype=bool), "every KD trained")

    def stored(self, kind, name, compute, *, disk=True, **parts):
        assert kind == "targeted_jacobian", kind
        return np.stack([[self.jac[k][r] for r in parts["regulators"]] for k in parts["kds"]])


def _case(write, pathway_kds, unrelated_kds, probe="targeted_jacobian"):
    from suite.cases import ModelInfo, expand
    from suite.spec import load_spec_file

    panels = write("panels.yaml", f"""
        schema_version: 1
        pathways:
          p: {{kds: [{", ".join(pathway_kds)}], genes: [G0, G1, G2, G3], regulators: [G0, G1], targets: [G2, G3, G4],
              unrelated_kds: [{", ".join(unrelated_kds)}]}}
          other: {{kds: [G5], genes: [G5, G6, G7, G8, G9, G10, G11]}}
        """)
    spec = load_spec_file(write("h.yaml", f"""
        schema_version: 1
        panels: [{panels}]
        hypotheses:
          - {{id: h, claim: c, probe: {probe}, axes: {{model: all, pathway: [p]}}, params: {{n_permutations: 999}}}}
        """))[0]
    return expand(spec, [ModelInfo("m", "x", "fewshot")])[0]


def _sensitivities(pathway_kds, unrelated_kds, elevated, seed=0):
    """|J| of 1 +- noise on every (regulator, output gene); 3 on the panel's targets under `elevated` KDs."""
    rng = np.random.default_rng(seed)
    jac = {}
    for kd in pathway_kds + unrelated_kds:
        jac[kd] = {r: 1 + 0.05 * rng.random(12) for r in GENES}
        if kd in elevated:
            for r in ("G0", "G1"):
                jac[kd][r][[2, 3, 4]] += 2.0
    return jac


def _evaluate(case, ctx):
    """(verdict, reason, evidence) of the case's check, as suite/verdicts.py decides it."""
    from core.errors import Inconclusive
    from suite.families import CHECKS

    try:
        evidence = CHECKS[case.spec.probe].run(case, ctx)
    except Inconclusive as exc:
        return "inconclusive", exc.reason, None
    return (*decide(evidence, case.spec.pass_rule), evidence)


def test_a_panel_of_three_against_three_kds_is_inconclusive(write):
    """Every pair of 3 pathway vs 3 unrelated KDs elevated: a signed-rank test over the 6 pairs gave
    p = 1/64, but the pairs share their KDs; 20 relabelings of the KDs cannot reach p < 0.05."""
    path, other = ["A1", "A2", "A3"], ["B1", "B2", "B3"]
    ctx = _Jacobians(path + other, _sensitivities(path, other, set(path)))
    for probe in ("targeted_jacobian", "jacobian_routing_score"):
        verdict, reason, _ = _evaluate(_case(write, path, other, probe), ctx)
        assert verdict == "inconclusive" and "20 relabelings" in reason, (probe, reason)


def test_one_kd_elevating_every_pair_is_not_a_pathway_effect(write):
    """One of 8 pathway KDs raises the sensitivity of every (regulator, target) pair: pair-level means
    are all above the unrelated KDs' (a pair-level test passes), but the KDs as a group are not."""
    path, other = [f"A{i}" for i in range(8)], [f"B{i}" for i in range(8)]
    ctx = _Jacobians(path + other, _sensitivities(path, other, {"A0"}))
    verdict, reason, evidence = _evaluate(_case(write, path, other), ctx)
    assert verdict == "fail" and evidence.p > 0.1, reason
    ctx = _Jacobians(path + other, _sensitivities(path, other, set(path[:6])))
    verdict, reason, evidence = _evaluate(_case(write, path, other), ctx)
    assert verdict == "pass" and evidence.p < 0.05 and evidence.n["pathway_kds"] == 8, reason


def test_unrelated_kds_are_matched_in_magnitude_to_the_pathway_kds():
    from types import SimpleNamespace

    from suite.checks.jacobian import _magnitude_matched

    names = [f"K{i}" for i in range(20)]
    model = SimpleNamespace(kd_names=tuple(names))
    magnitude = np.arange(20.0)                       # K0 weakest ... K19 strongest
    chosen, matched_to = _magnitude_matched(names[:16], ["K17", "K18", "K19"], magnitude, model, 6)
    assert chosen == ["K10", "K11", "K12", "K13", "K14", "K15"]     # the strongest of the pool
    # in turn from the weakest pathway KD: each KD's group is its nearest free matches
    assert matched_to == {"K15": "K17", "K14": "K18", "K13": "K19", "K12": "K17", "K11": "K18", "K10": "K19"}
    weak, _ = _magnitude_matched(names[5:], ["K0", "K1"], magnitude, model, 2)
    assert weak == ["K5", "K6"]
