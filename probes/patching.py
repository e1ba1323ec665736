"""Activation patching of SAE features: the model's prediction when chosen features of the sparse
autoencoder on block `layer` are ablated or steered during the forward pass.

The hidden state h after block `layer` is replaced by

    h + (f' - f) @ W_dec,      f = sae.encode(h), f' = the intervened features

so the SAE's reconstruction error, h - decode(f), stays in place. That has two consequences:
  * an empty intervention adds exactly zero, so it gives the model's own output bit for bit;
  * ablating every feature leaves decode(0) + error = b_dec + (h - decode(f)), which is the layer
    replaced by the SAE's error term (plus the decoder bias).

  ablate  f'[features] = 0
  steer   f'[features] = f[features] + scale, i.e. `scale` times each feature's decoder direction added
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from core.errors import ProbeError

from .forward import cell_positions, check_supported, forward_sets, output_width
from .representations import backbone_blocks, check_layer
from .sae import SparseAutoencoder


@dataclass(frozen=True)
class Intervention:
    features: tuple[int, ...]                 # SAE feature indices; empty: no intervention
    mode: Literal["ablate", "steer"] = "ablate"
    scale: float = 0.0                        # steer: added to each feature's activation


def patch_delta(sae: SparseAutoencoder, hidden: torch.Tensor, intervention: Intervention) -> torch.Tensor:
    """[..., d_in] what the intervention adds to the hidden state: (f' - f) @ W_dec."""
    if not intervention.features:
        return torch.zeros_like(hidden)
    mask = feature_masks([intervention.features], sae.d_sae, hidden.device)[0]
    return masked_delta(sae, hidden, mask, intervention.mode, intervention.scale)


def feature_masks(feature_sets: Sequence[Sequence[int]], d_sae: int, device: torch.device | None = None
                  ) -> torch.Tensor:
    """[N, d_sae] 0/1 masks, one per set of feature indices."""
    masks = torch.zeros(len(feature_sets), d_sae, device=device)
    for row, features in enumerate(feature_sets):
        masks[row, list(features)] = 1.0
    return masks


def masked_delta(sae: SparseAutoencoder, hidden: torch.Tensor, masks: torch.Tensor, mode: str = "ablate",
                 scale: float = 0.0) -> torch.Tensor:
    """[B, S, d_in] (or [..., d_in] with one [d_sae] mask) what patching the masked features adds to the
    hidden state; masks [B, d_sae] give each batch element its own feature set."""
    if sae.W_dec is None:
        raise ProbeError(f"the SAE {sae.source} has no decoder (W_dec), so its features cannot be patched; "
                         "export it with its decoder weights")
    if masks.dim() == 2:
        masks = masks[:, None, :]               # [B, 1, d_sae] over the set's positions
    if mode == "ablate":       # a hidden state of one set and B masks broadcast to [B, S, d_in]
        return -((sae.encode(hidden) * masks) @ sae.W_dec)
    return scale * masks @ sae.W_dec + torch.zeros_like(hidden)


@torch.no_grad()
def patched_outputs(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor, sae: SparseAutoencoder,
                    layer: int, intervention: Intervention) -> torch.Tensor:
    """[B, S, G] predicted expression (as probes/forward.forward_sets) with the intervention applied
    to block `layer`'s output."""
    check_layer(module, layer)

    def patch(_module, _inputs, output):
        return _patched(module, output, cells.shape[-2], lambda hidden: patch_delta(sae, hidden, intervention))

    hook = backbone_blocks(module)[layer].register_forward_hook(patch)
    try:
        return forward_sets(module, cells, pert_repr)
    finally:
        hook.remove()


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


def _patched(module: torch.nn.Module, output, n_cells: int, delta: Callable[[torch.Tensor], torch.Tensor]):
    """A block's output with `delta` of the cells' hidden states added at the cells' positions only
    (the SAE read cells; a batch or confidence token is left as the model computed it)."""
    hidden = _hidden_of(output)
    where = cell_positions(module, n_cells)
    patched = hidden.clone()
    patched[:, where] = hidden[:, where] + delta(hidden[:, where])
    return (patched, *output[1:]) if isinstance(output, tuple) else patched


@torch.no_grad()
def feature_activity(module: torch.nn.Module, sets: torch.Tensor, reprs: torch.Tensor, sae: SparseAutoencoder,
                     layer: int, orderings: torch.Tensor) -> dict[str, np.ndarray]:
    """Per perturbation [K, d_sae], over the cells of `sets` [n, S, G] and `orderings`: each SAE
    feature's mean activation ("mean"), the share of cells where it is active ("frequency") and its
    mean activation where active ("magnitude"), on block `layer`'s output."""
    check_supported(module)
    check_layer(module, layer)
    captured: list[torch.Tensor] = []
    hook = backbone_blocks(module)[layer].register_forward_hook(lambda _m, _i, out: captured.append(_hidden_of(out)))
    total = active = count = 0.0
    try:
        for cells in sets:
            for order in orderings:
                captured.clear()
                forward_sets(module, cells[order.to(cells.device)], reprs)
                features = sae.encode(captured[0][:, cell_positions(module, cells.shape[0]), :]).double()  # [K, S, F]
                total = total + features.sum(dim=1)
                active = active + (features > 0).double().sum(dim=1)
                count += features.shape[1]
    finally:
        hook.remove()
    magnitude = torch.where(active > 0, total / active.clamp(min=1), torch.zeros_like(total))
    return {"mean": (total / count).cpu().numpy(), "frequency": (active / count).cpu().numpy(),
            "magnitude": magnitude.cpu().numpy()}


@torch.no_grad()
def masked_effects(module: torch.nn.Module, sets: torch.Tensor, reprs: torch.Tensor, sae: SparseAutoencoder,
                   layer: int, masks: torch.Tensor, orderings: torch.Tensor, mode: str = "ablate", scale: float = 0.0,
                   chunk: int = 64, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[N, K, G] for each of the N feature masks [N, d_sae] and each of the K perturbation
    representations [K, H]: the mean over the cells of `sets` [n, S, G] and `orderings` of the
    patched prediction minus the model's own. One forward pass patches `chunk` masks at once.

    Everything up to block `layer` is the same for every mask, so a pass runs it once, for one set,
    and widens the block's output to the `chunk` masks (`_shared_prefix_patch`): on the demo's
    2-layer model, layer 0, about half of each pass. Whether the backbone allows that (its later
    blocks broadcast a batch of one's attention mask and position terms) is checked on the first
    pass against the full batched pass; where it does not, every pass runs whole."""
    check_supported(module)
    check_layer(module, layer)
    batch: list[torch.Tensor] = []       # the masks of the pass under way, one per batch element
    block_of = backbone_blocks(module)[layer]

    def patch(_module, _inputs, output):
        return _patched(module, output, sets.shape[-2], lambda hidden: masked_delta(sae, hidden, batch[0], mode, scale))

    def widened(_module, _inputs, output):     # the SAE encodes the one set's hidden state once
        hidden = _hidden_of(output)
        where = cell_positions(module, sets.shape[-2])
        wide = hidden.expand(len(batch[0]), *hidden.shape[1:]).clone()
        wide[:, where] = hidden[:, where] + masked_delta(sae, hidden[:, where], batch[0], mode, scale)
        return (wide, *output[1:]) if isinstance(output, tuple) else wide

    def run(ordered: torch.Tensor, rep: torch.Tensor, block: torch.Tensor, shared: bool) -> torch.Tensor:
        batch[:] = [block]
        hook = block_of.register_forward_hook(widened if shared else patch)
        try:
            pert = rep[None] if shared else rep.expand(len(block), -1)
            return forward_sets(module, ordered, pert).mean(dim=1).double()
        finally:
            hook.remove()

    out = torch.zeros(len(masks), len(reprs), output_width(module), dtype=torch.float64, device=sets.device)
    steps, done, shared = len(reprs) * len(sets) * len(orderings), 0, None
    for k, rep in enumerate(reprs):
        for cells in sets:
            for order in orderings:
                ordered = cells[order.to(cells.device)]
                own = forward_sets(module, ordered, rep[None]).mean(dim=1).double()       # [1, G]
                for start in range(0, len(masks), chunk):
                    block = masks[start:start + chunk]
                    if shared is None:
                        full = run(ordered, rep, block, shared=False)
                        try:
                            shared = _same(run(ordered, rep, block, shared=True), full)
                        except RuntimeError:        # a backbone that does not broadcast a batch of one
                            shared = False
                        patched = full
                    else:
                        patched = run(ordered, rep, block, shared)
                    out[start:start + len(block), k] += patched - own
                done += 1
                if progress:
                    progress(done, steps)
    return (out / (len(sets) * len(orderings))).cpu().numpy()


def _same(widened: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether the shared-prefix pass gave the full pass's outputs, shape and values."""
    return widened.shape == full.shape and bool(torch.allclose(widened, full, rtol=1e-4, atol=1e-6))
