"""Targeted Jacobians: both modes against torch.autograd.functional.jacobian, and the panel tests."""

import numpy as np
import pytest
import torch

from probes.forward import forward_sets
from probes.jacobian import set_jacobian, targeted_jacobians
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


def test_a_failed_specificity_condition_fails_the_verdict():
    evidence = Evidence("r", 0.9, 0.9, None, 0.01, {}, "null", 0, conditions=((False, "specificity: p = 0.01"),))
    verdict, reason = decide(evidence, PassRule())
    assert verdict == "fail" and "specificity: p = 0.01" in reason
    held = Evidence("r", 0.9, 0.9, None, 0.01, {}, "null", 0, conditions=((True, "specificity ok"),))
    assert decide(held, PassRule())[0] == "pass"
