"""SAE feature patching (probes/patching.py) on real arc-state models: an empty intervention is the
model itself bit for bit, ablating every feature is the layer replaced by the SAE's error term, and
steering adds the decoder directions; each against a hook of the test's own."""

import pytest
import torch

from core.errors import ModelLoadError, ProbeError
from probes.forward import forward_sets
from probes.patching import Intervention, patched_outputs
from probes.representations import backbone_blocks
from probes.sae import SparseAutoencoder

from .helpers import tiny_state_model

HIDDEN, FEATURES = 16, 40


def _sae(seed: int = 0, activation: str = "topk", k: int | None = 6, decoder: bool = True) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder(torch.randn(HIDDEN, FEATURES, generator=g) / 4, torch.randn(FEATURES, generator=g) / 4,
                             torch.randn(HIDDEN, generator=g) / 4, activation, k, True, "test SAE",
                             torch.randn(FEATURES, HIDDEN, generator=g) / 4 if decoder else None)


def _inputs(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(8, 12, generator=g)
    reprs = model.pert_encoder(torch.eye(5))
    return cells, reprs


def _with_block_output(model, layer, replace):
    """The model's output with block `layer`'s hidden state h replaced by replace(h): the oracle."""
    def hook(_m, _i, output):
        hidden = output[0] if isinstance(output, tuple) else output
        return (replace(hidden), *output[1:]) if isinstance(output, tuple) else replace(hidden)

    handle = backbone_blocks(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return forward_sets(model, *_inputs(model))
    finally:
        handle.remove()


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
def test_an_empty_intervention_gives_the_models_own_output_exactly(backbone):
    model = tiny_state_model(backbone, hidden=HIDDEN)
    with torch.no_grad():
        own = forward_sets(model, *_inputs(model))
    for layer in (0, 1):
        patched = patched_outputs(model, *_inputs(model), _sae(), layer, Intervention(()))
        assert torch.equal(patched, own)


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_ablating_every_feature_replaces_the_layer_by_the_sae_error_term(backbone, activation):
    model = tiny_state_model(backbone, hidden=HIDDEN)
    sae = _sae(activation=activation, k=6 if activation == "topk" else None)
    expected = _with_block_output(model, 1, lambda h: sae.b_dec + (h - (sae.encode(h) @ sae.W_dec + sae.b_dec)))
    patched = patched_outputs(model, *_inputs(model), sae, 1, Intervention(tuple(range(FEATURES))))
    assert torch.allclose(patched, expected, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(patched, forward_sets(model, *_inputs(model)), atol=1e-3)   # it did something


def test_ablating_some_features_removes_exactly_their_decoded_part():
    model, sae = tiny_state_model("GPT2", hidden=HIDDEN), _sae()
    chosen = (3, 7, 11, 20)

    def without(h):
        f = sae.encode(h)
        kept = f.clone()
        kept[..., list(chosen)] = 0
        return h - sae.decode(f) + sae.decode(kept)

    patched = patched_outputs(model, *_inputs(model), sae, 0, Intervention(chosen))
    assert torch.allclose(patched, _with_block_output(model, 0, without), atol=1e-5)


def test_steering_adds_each_features_decoder_direction_times_the_scale():
    model, sae = tiny_state_model("llama", hidden=HIDDEN), _sae()
    patched = patched_outputs(model, *_inputs(model), sae, 0, Intervention((2, 5), "steer", 1.5))
    expected = _with_block_output(model, 0, lambda h: h + 1.5 * (sae.W_dec[2] + sae.W_dec[5]))
    assert torch.allclose(patched, expected, atol=1e-5)


def test_an_sae_without_a_decoder_is_read_but_not_patched():
    model = tiny_state_model("GPT2", hidden=HIDDEN)
    with pytest.raises(ProbeError, match="has no decoder"):
        patched_outputs(model, *_inputs(model), _sae(decoder=False), 0, Intervention((1,)))


def test_the_decoder_is_loaded_and_checked(tmp_path):
    from fixtures.sae import load_sae

    from .test_representations import _weights

    weights = _weights()
    torch.save(weights, tmp_path / "sae.pt")
    sae = load_sae(tmp_path / "sae.pt", "topk", 4)
    assert torch.equal(sae.W_dec, weights["W_dec"]) and torch.allclose(sae.decode(torch.eye(24)[:1]),
                                                                       weights["W_dec"][0] + weights["b_dec"])
    torch.save({**weights, "W_dec": weights["W_dec"][:, :5]}, tmp_path / "narrow.pt")
    with pytest.raises(ModelLoadError, match=r"W_dec \(24, 5\)"):
        load_sae(tmp_path / "narrow.pt", "topk", 4)
    torch.save({**weights, "W_dec": weights["W_dec"].clone().fill_(float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(ModelLoadError, match="W_dec hold NaN"):
        load_sae(tmp_path / "nan.pt", "topk", 4)


@pytest.mark.parametrize("mode, scale", [("ablate", 0.0), ("steer", 0.7)])
def test_batched_masks_give_each_masks_own_patched_prediction(mode, scale):
    """masked_effects patches a different feature set in each batch element; each must equal the
    one-intervention forward pass of patched_outputs."""
    from probes.patching import feature_masks, masked_effects

    model, sae = tiny_state_model("GPT2", hidden=HIDDEN), _sae(activation="relu", k=None)
    cells, reprs = _inputs(model)
    sets = torch.stack([cells, cells.flip(0)])
    orders = torch.stack([torch.arange(8), torch.arange(8).flip(0)])
    chosen = [(), (1, 4, 9), (0,), tuple(range(0, FEATURES, 3))]
    effects = masked_effects(model, sets, reprs[:3], sae, 1, feature_masks(chosen, FEATURES), orders, mode, scale,
                             chunk=3)
    assert effects.shape == (4, 3, 12)
    with torch.no_grad():
        for n, features in enumerate(chosen):
            direct = sum((patched_outputs(model, s[o], reprs[:3], sae, 1, Intervention(features, mode, scale))
                          - forward_sets(model, s[o], reprs[:3])).mean(dim=1) for s in sets for o in orders) / 4
            assert torch.allclose(torch.from_numpy(effects[n]).float(), direct, atol=1e-5)
    assert (effects[0] == 0).all() and abs(effects[1:]).max() > 1e-4


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("mode, scale", [("ablate", 0.0), ("steer", 0.7)])
def test_the_shared_prefix_pass_gives_the_full_passes_effects(monkeypatch, backbone, layer, mode, scale):
    """Blocks up to the patched one run once per set and are widened to the masks; the effects are
    each mask's own full forward pass's, and the shared pass is the one taken (GPT2 and Llama both
    broadcast a batch of one)."""
    from probes import patching
    from probes.patching import feature_masks, masked_effects

    model, sae = tiny_state_model(backbone, hidden=HIDDEN), _sae(activation="relu", k=None)
    cells, reprs = _inputs(model)
    checks = []
    same = patching._same
    monkeypatch.setattr(patching, "_same", lambda a, b: checks.append(same(a, b)) or checks[-1])
    chosen = [(1, 4, 9), (0,), tuple(range(0, FEATURES, 3)), (2, 3)]
    effects = masked_effects(model, cells[None], reprs[:2], sae, layer, feature_masks(chosen, FEATURES),
                             torch.arange(8)[None], mode, scale, chunk=3)
    assert checks == [True]
    with torch.no_grad():
        for n, features in enumerate(chosen):
            direct = (patched_outputs(model, cells, reprs[:2], sae, layer, Intervention(features, mode, scale))
                      - forward_sets(model, cells, reprs[:2])).mean(dim=1)
            assert torch.allclose(torch.from_numpy(effects[n]).float(), direct, atol=1e-5)
    assert abs(effects).max() > 1e-4


def test_feature_activity_counts_mean_frequency_and_magnitude_from_the_captured_layer():
    from probes.patching import feature_activity

    model, sae = tiny_state_model("GPT2", hidden=HIDDEN), _sae()
    cells, reprs = _inputs(model)
    captured = []
    handle = backbone_blocks(model)[0].register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    with torch.no_grad():
        forward_sets(model, cells, reprs)
    handle.remove()
    f = sae.encode(captured[0]).double()                                    # [K, S, F]
    found = feature_activity(model, cells[None], reprs, sae, 0, torch.arange(8)[None])
    active = (f > 0).double()
    assert torch.allclose(torch.from_numpy(found["mean"]), f.mean(dim=1))
    assert torch.allclose(torch.from_numpy(found["frequency"]), active.mean(dim=1))
    expected = torch.where(active.sum(1) > 0, f.sum(1) / active.sum(1).clamp(min=1), torch.zeros(()).double())
    assert torch.allclose(torch.from_numpy(found["magnitude"]), expected)
    assert (found["frequency"].sum(axis=1) == 6).all()                      # TopK keeps k = 6 per cell
