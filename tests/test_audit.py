"""The model audit: attention direction, order dependence, coupling, and order-averaging."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers

from probes import audit
from probes.forward import arc_state_forward, backbone
from probes.jacobian import set_jacobian
from probes.model_audit import dimension_mismatches, dimensions

from .helpers import tiny_state_model


def _direct_direction(model, cells, onehot) -> str:
    """Change the last cell, then the first, and look at the first and last outputs (arc-state's own forward)."""
    with torch.no_grad():
        base = arc_state_forward(model, cells, onehot)
        last = cells.clone()
        last[-1] = torch.rand(cells.shape[1])
        first = cells.clone()
        first[0] = torch.rand(cells.shape[1])
        back = (arc_state_forward(model, last, onehot)[0] - base[0]).abs().max() > 0
        forward = (arc_state_forward(model, first, onehot)[-1] - base[-1]).abs().max() > 0
    return {(True, True): "bidirectional", (False, True): "causal", (True, False): "anti-causal",
            (False, False): "none"}[(bool(back), bool(forward))]


def _hidden_fn(model, onehot):
    with torch.no_grad():
        pert = model.pert_encoder(onehot[None])
    return lambda c: backbone(model, model.basal_encoder(c)[None] + pert[:, None, :])[0]


@pytest.mark.parametrize("backbone_key", ["GPT2", "llama"])
def test_audit_direction_matches_a_direct_one_cell_perturbation(backbone_key):
    model = tiny_state_model(backbone_key)
    cells, onehot = torch.rand(8, 12), torch.eye(5)[0]
    measured = audit.attention_direction(_hidden_fn(model, onehot), cells, torch.rand(12)).label
    assert measured == _direct_direction(model, cells, onehot)
    # what the installed transformers does today (its GPT2 attention is causal, whatever arc-state declares)
    if backbone_key == "llama":
        assert measured == "bidirectional"
    elif (4, 54) <= tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 0):
        assert measured == "causal"


def _toy_attention(mask: torch.Tensor, seed: int = 0):
    """One attention layer over a set of cells with an explicit additive mask."""
    generator = torch.Generator().manual_seed(seed)
    wq, wk, wv = (torch.randn(6, 6, generator=generator) for _ in range(3))

    def set_fn(cells):
        q, k, v = cells @ wq, cells @ wk, cells @ wv
        return torch.softmax(q @ k.T / 6 ** 0.5 + mask, dim=-1) @ v + cells

    return set_fn


@pytest.mark.parametrize("name, mask", [
    ("causal", torch.full((7, 7), float("-inf")).triu(1)),
    ("anti-causal", torch.full((7, 7), float("-inf")).tril(-1)),
    ("bidirectional", torch.zeros(7, 7)),
    ("none", torch.full((7, 7), float("-inf")).fill_diagonal_(0.0)),
])
def test_hand_made_masks_are_classified(name, mask):
    cells = torch.randn(7, 6)
    assert audit.attention_direction(_toy_attention(mask), cells, torch.randn(6)).label == name


def test_order_change_is_zero_for_a_set_function_and_not_for_a_causal_one():
    cells = torch.randn(7, 6)
    bidirectional = _toy_attention(torch.zeros(7, 7))
    causal = _toy_attention(torch.full((7, 7), float("-inf")).triu(1))
    assert audit.order_change(bidirectional, cells, 8, seed=0) < 1e-5
    assert audit.order_change(causal, cells, 8, seed=0) > 1e-2


def test_coupling_estimate_agrees_with_the_exact_jacobian():
    cells = torch.randn(5, 6)
    set_fn = _toy_attention(torch.zeros(5, 5))
    full = torch.autograd.functional.jacobian(set_fn, cells)          # [5, 6, 5, 6]
    blocks = full.permute(0, 2, 1, 3).reshape(5, 5, -1).norm(dim=2)    # ||dY_c/dX_d||_F
    off = blocks[~torch.eye(5, dtype=bool)].mean() / blocks.diagonal().mean()
    estimate = audit.cross_cell_coupling(set_fn, cells, n_cells=5, n_vectors=400, seed=1)
    assert estimate.mean_ratio == pytest.approx(float(off), rel=0.15)
    none = audit.cross_cell_coupling(_toy_attention(torch.full((5, 5), float("-inf")).fill_diagonal_(0.0)),
                                     cells, n_cells=3, n_vectors=4, seed=1)
    assert none.mean_ratio == 0.0


def test_dropout_and_nondeterminism_are_reported():
    model = tiny_state_model("GPT2").train()
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.5
    cells, onehot = torch.rand(8, 12), torch.eye(5)[0]
    assert audit.active_dropout(model)
    with torch.no_grad():
        pert = model.pert_encoder(onehot[None])
    assert audit.repeat_difference(lambda c: model.project_out(model.basal_encoder(c) + pert), cells) > 0
    assert not audit.active_dropout(model.eval())


def test_order_averaging_shrinks_the_spread_of_a_jacobian_statistic():
    """On a causal model, the set-mode Jacobian depends on the cells' order; averaging over 16
    random orderings makes it nearly the same whatever order the cells came in."""
    model = tiny_state_model("GPT2", seed=3)
    cells = torch.rand(8, 12)
    with torch.no_grad():
        pert = model.pert_encoder(torch.eye(5)[1][None])[0]
    starts = [torch.randperm(8, generator=torch.Generator().manual_seed(s)) for s in range(12)]
    plain = [set_jacobian(model, cells[o], pert, [0, 1], [2, 3]) for o in starts]
    averaged = [set_jacobian(model, cells[o], pert, [0, 1], [2, 3], orderings=audit.random_orderings(8, 16, seed=i))
                for i, o in enumerate(starts)]
    spread_plain, spread_averaged = np.std(plain, axis=0).mean(), np.std(averaged, axis=0).mean()
    assert spread_plain > 0
    assert spread_averaged < 0.5 * spread_plain


def test_set_jacobian_matches_autograd_functional(demo_run):
    model = demo_run.model("hepg2_fewshot")
    cells = model.cells[:8]
    with torch.no_grad():
        pert = model.module.pert_encoder(model.pert_onehots[model.pert_index("RPL3")][None])[0]
    ours = set_jacobian(model.module, cells, pert, [3, 5], [7])
    full = torch.autograd.functional.jacobian(
        lambda x: arc_state_forward(model.module, x, model.pert_onehots[model.pert_index("RPL3")]).mean(0)[7], cells)
    assert np.allclose(ours[:, 0], full[:, [3, 5]].mean(0).numpy(), atol=1e-6)


def test_demo_audit_reads_the_environment(demo_run):
    result = demo_run.audit("hepg2_fewshot")
    assert result.attention == "causal" and result.later_on_earlier == 0.0 and result.order_sensitive
    assert result.order_dependence > 0.01 and result.repeat_difference == 0.0 and result.eval_mode
    assert result.dimension_mismatches == [] and result.dimensions["n_genes"]["checkpoint"] == 234
    assert any("causal attention" in w and "8 random orderings" in w for w in result.warnings)
    assert demo_run.n_orderings("hepg2_fewshot", None) == 8 and demo_run.n_orderings("hepg2_fewshot", 3) == 3


def test_a_re_initialised_copy_is_probed_on_its_models_orderings_without_an_audit_of_its_own(demo_run, monkeypatch):
    from suite.session import reinitialised_name

    copy = reinitialised_name("jurkat_fewshot", 0)
    audited = []
    original = demo_run.audit
    monkeypatch.setattr(demo_run, "audit", lambda name: audited.append(name) or original(name))
    assert demo_run.n_orderings(copy, None) == 8 and demo_run.n_orderings(copy, 3) == 3
    assert audited == ["jurkat_fewshot", "jurkat_fewshot"]


def test_dimension_mismatch_is_listed(demo_run):
    model = demo_run.model("hepg2_fewshot")
    broken = replace(model, var_dims={**model.var_dims, "pert_dim": 99})
    width = model.pert_onehots.shape[1]
    assert dimension_mismatches(dimensions(broken)) == [f"pert_dim: checkpoint {width}, pert_onehot_map {width}, "
                                                         "var_dims 99"]
