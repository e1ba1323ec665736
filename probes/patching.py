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

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from core.errors import ProbeError

from .forward import check_supported, forward_sets, pert_representations
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
    if sae.W_dec is None:
        raise ProbeError(f"the SAE {sae.source} has no decoder (W_dec), so its features cannot be patched; "
                         "export it with its decoder weights")
    index = torch.as_tensor(intervention.features, device=hidden.device)
    directions = sae.W_dec[index]                                          # [n, d_in]
    if intervention.mode == "ablate":
        return -(sae.encode(hidden)[..., index] @ directions)
    return (intervention.scale * directions.sum(dim=0)).expand_as(hidden)


@torch.no_grad()
def patched_outputs(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor, sae: SparseAutoencoder,
                    layer: int, intervention: Intervention) -> torch.Tensor:
    """[B, S, G] predicted expression (as probes/forward.forward_sets) with the intervention applied
    to block `layer`'s output."""
    check_layer(module, layer)

    def patch(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        patched = hidden + patch_delta(sae, hidden, intervention)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    hook = backbone_blocks(module)[layer].register_forward_hook(patch)
    try:
        return forward_sets(module, cells, pert_repr)
    finally:
        hook.remove()


@torch.no_grad()
def patching_effects(module: torch.nn.Module, onehots: torch.Tensor, cells: torch.Tensor, sae: SparseAutoencoder,
                     layer: int, intervention: Intervention, orderings: torch.Tensor) -> np.ndarray:
    """[n_perts, G] mean over the cells and `orderings` [N, S] of the patched prediction minus the
    model's own, under each perturbation."""
    check_supported(module)
    reprs = pert_representations(module, onehots)
    total = 0.0
    for order in orderings:
        ordered = cells[order.to(cells.device)]
        own = forward_sets(module, ordered, reprs)
        total = total + (patched_outputs(module, ordered, reprs, sae, layer, intervention) - own).mean(dim=1)
    return (total / len(orderings)).double().cpu().numpy()
