"""Representation probes: ΔY, layer activations and SAE features, checked against plain calls."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelLoadError, ProbeError
from fixtures.sae import load_sae
from probes.audit import random_orderings
from probes.forward import arc_state_forward
from probes.representations import Readout, cell_sets, check_layer, per_set_shifts
from probes.sae import SparseAutoencoder
from suite import stats
from suite.session import RunContext

from .helpers import DEMO, tiny_state_model

IDENTITY = torch.arange(32)[None]


def test_output_shift_of_one_kd_equals_an_unbatched_forward_pass(demo_run):
    model = demo_run.model("hepg2_fewshot")
    sets = cell_sets(model.cells, 3, 32, seed=2)
    control = model.pert_index(model.control_pert)
    shifts = per_set_shifts(model.module, model.pert_onehots, control, sets, Readout("output"), IDENTITY, chunk_size=5)
    kd = model.pert_index("PSMA1")
    with torch.no_grad():
        plain = (arc_state_forward(model.module, sets[1], model.pert_onehots[kd]).mean(0)
                 - arc_state_forward(model.module, sets[1], model.pert_onehots[control]).mean(0))
    assert shifts.shape == (3, 125, 234)
    assert np.allclose(shifts[1, kd], plain.double().numpy(), atol=1e-5)


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
def test_layer_readout_equals_the_backbone_hidden_states(backbone):
    """The hook on block 0 sees what the backbone reports as hidden_states[1]."""
    model = tiny_state_model(backbone)
    cells = torch.rand(1, 8, 12)
    onehots = torch.eye(5)
    shifts = per_set_shifts(model, onehots, 0, cells, Readout("layer", 0), torch.arange(8)[None])
    with torch.no_grad():
        reprs = model.pert_encoder(onehots)
        embeds = model.basal_encoder(cells[0])[None] + reprs[:, None, :]
        hidden = model.transformer_backbone(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1]
    means = hidden.mean(dim=1).double()
    assert np.allclose(shifts[0], (means - means[0]).numpy(), atol=1e-5)


def test_layer_beyond_the_backbone_is_a_clear_error():
    model = tiny_state_model("GPT2")
    with pytest.raises(ProbeError, match="layer 2 does not exist: this model's backbone has 2 layers, numbered 0 to 1"):
        check_layer(model, 2)


def _write_saelens(folder, weights, cfg):
    folder.mkdir()
    save_file(weights, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _weights(d_in=6, d_sae=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g),
            "b_dec": torch.randn(d_in, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g)}


def test_sae_formats_agree_and_encode_like_saelens(tmp_path):
    weights = _weights()
    _write_saelens(tmp_path / "v6", weights, {"architecture": "topk", "d_in": 6, "d_sae": 24, "k": 4})
    _write_saelens(tmp_path / "v5", weights, {"architecture": "standard", "d_in": 6, "d_sae": 24,
                                               "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}})
    torch.save(weights, tmp_path / "sae.pt")
    x = torch.randn(10, 6)
    codes = [load_sae(tmp_path / "v6").encode(x), load_sae(tmp_path / "v5").encode(x),
             load_sae(tmp_path / "sae.pt", activation="topk", k=4).encode(x)]
    assert all(torch.equal(codes[0], c) for c in codes[1:])
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    top = pre.topk(4, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert torch.allclose(codes[0], expected) and int((codes[0] > 0).sum(dim=1).max()) <= 4
    relu = load_sae(tmp_path / "sae.pt", activation="relu").encode(x)
    assert torch.allclose(relu, torch.relu(pre))


def test_sae_problems_are_explained(tmp_path):
    _write_saelens(tmp_path / "jump", _weights(), {"architecture": "jumprelu", "d_in": 6, "d_sae": 24})
    with pytest.raises(ModelLoadError, match="architecture 'jumprelu' is not supported"):
        load_sae(tmp_path / "jump")
    torch.save({"W_enc": torch.zeros(6, 24)}, tmp_path / "half.pt")
    with pytest.raises(ModelLoadError, match="lacks b_enc, b_dec"):
        load_sae(tmp_path / "half.pt", activation="relu")
    with pytest.raises(ModelLoadError, match="needs 'activation: topk' with 'k: N'"):
        load_sae(tmp_path / "half.pt")
    with pytest.raises(ModelLoadError, match="SAE not found"):
        load_sae(tmp_path / "nowhere")


def test_sae_of_the_wrong_width_is_refused(demo_registry, tmp_path):
    _write_saelens(tmp_path / "wide", _weights(d_in=128, d_sae=256), {"architecture": "topk", "d_in": 128,
                                                                      "d_sae": 256, "k": 8})
    entry = demo_registry["hepg2_fewshot"]
    registry = {"m": replace(entry, name="m", sae=replace(entry.sae, path=str(tmp_path / "wide")))}
    with pytest.raises(ModelLoadError, match="reads 128 features but layer 0 of model 'm' has 64"):
        RunContext(registry, torch.device("cpu")).sae("m")


def test_demo_sae_reads_the_demo_layer(demo_run):
    sae, layer = demo_run.sae("hepg2_fewshot")
    assert isinstance(sae, SparseAutoencoder) and layer == 0
    assert (sae.d_in, sae.d_sae, sae.k) == (64, 512, 32)
    assert (DEMO / "saes" / "hepg2_fewshot" / "cfg.json").exists()


def test_missing_control_perturbation_is_a_clear_error(demo_registry):
    from fixtures.arc_state import load_model

    entry = replace(demo_registry["hepg2_fewshot"], control_pert="non_targeting")
    with pytest.raises(ModelLoadError, match="'non_targeting' \\(the registry's 'control_pert'\\) is not in "
                                             "pert_onehot_map.pt .*did you mean 'non-targeting'"):
        load_model(entry, torch.device("cpu"))


def test_within_and_background_match_the_pairwise_definitions():
    x = np.random.default_rng(0).normal(size=(30, 7))
    sim = stats.cosine_similarity_matrix(x)
    within, background = stats.within_and_background(x, [2, 5, 9, 11])
    assert within == pytest.approx(stats.mean_pairwise(sim, [2, 5, 9, 11]))
    assert background == pytest.approx(stats.mean_pairwise(sim, range(30)))


def test_average_linkage_recovers_planted_groups_and_enrichment_is_hypergeometric():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 10)) * 5
    x = np.repeat(centres, 8, axis=0) + rng.normal(size=(24, 10))
    labels = stats.average_linkage_clusters(x, 3)
    assert len(set(labels[:8])) == len(set(labels[8:16])) == len(set(labels[16:])) == 1
    table = stats.cluster_enrichment(labels, list(range(8)))
    best = table[0]
    assert (best["size"], best["overlap"], best["fold"]) == (8, 8, 3.0)
    from scipy.stats import hypergeom
    assert best["p"] == pytest.approx(hypergeom.sf(7, 24, 8, 8)) and best["q"] == pytest.approx(best["p"] * 3)


def test_orderings_change_a_causal_models_layer_readout_but_averaging_is_stable(demo_run):
    model = demo_run.model("jurkat_fewshot")
    sets = cell_sets(model.cells, 1, 32, seed=0)
    readout = Readout("layer", 1)
    one = per_set_shifts(model.module, model.pert_onehots[:6], 0, sets, readout, IDENTITY)
    flipped = per_set_shifts(model.module, model.pert_onehots[:6], 0, sets, readout, torch.arange(31, -1, -1)[None])
    assert not np.allclose(one, flipped, atol=1e-4)          # causal: the order matters
    avg_a = per_set_shifts(model.module, model.pert_onehots[:6], 0, sets, readout, random_orderings(32, 16, 1))
    avg_b = per_set_shifts(model.module, model.pert_onehots[:6], 0, sets, readout, random_orderings(32, 16, 2))
    assert np.abs(avg_a - avg_b).mean() < np.abs(one - flipped).mean()
