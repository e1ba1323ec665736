"""Per-KD representations of what the model computes (Options 1 and 5.1 of the notes).

For every perturbation and every cell set s, the mean over the set's cells of
  output  the predicted expression Y                               (ΔY, gene space)
  layer   the backbone's hidden state after block `layer`          (NB01 used layer 4)
  sae     the features of that hidden state under a sparse autoencoder
minus the same mean under the control perturbation. Hidden states are taken with a forward
hook on the arc-state backbone's blocks (GPT2 `h`, Llama `layers`). Results keep the
cell-set axis, so statistics can bootstrap over cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import ProbeError

from .forward import cell_positions, check_supported, forward_sets, pert_representations
from .sae import SparseAutoencoder


@dataclass(frozen=True)
class Readout:
    kind: str                                # "output" | "layer" | "sae"
    layer: int | None = None
    sae: SparseAutoencoder | None = None


def backbone_blocks(module: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of an arc-state backbone (GPT2 or Llama, LoRA-wrapped or not)."""
    backbone = module.transformer_backbone
    backbone = getattr(getattr(backbone, "base_model", None), "model", backbone)  # PEFT wrapper
    for name in ("h", "layers"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise ProbeError(f"cannot find the transformer blocks of a {type(backbone).__name__} backbone")


def check_layer(module: torch.nn.Module, layer: int) -> None:
    count = len(backbone_blocks(module))
    if not 0 <= layer < count:
        raise ProbeError(f"layer {layer} does not exist: this model's backbone has {count} layers, "
                         f"numbered 0 to {count - 1}; set 'layer' in the hypothesis params to one of them")


def cell_sets(cells: torch.Tensor, n_sets: int, size: int, seed: int) -> torch.Tensor:
    """[n_sets, size, G] seeded cell sets; disjoint when there are enough cells."""
    if size > cells.shape[0]:
        raise ProbeError(f"asked for sets of {size} cells but only {cells.shape[0]} control cells are available")
    generator = torch.Generator().manual_seed(seed)
    if n_sets * size <= cells.shape[0]:
        order = torch.randperm(cells.shape[0], generator=generator)[: n_sets * size]
        return cells[order.to(cells.device)].reshape(n_sets, size, -1)
    picks = [torch.randperm(cells.shape[0], generator=generator)[:size] for _ in range(n_sets)]
    return torch.stack([cells[p.to(cells.device)] for p in picks])


@torch.no_grad()
def per_set_shifts(module: torch.nn.Module, onehots: torch.Tensor, control_index: int, sets: torch.Tensor,
                   readout: Readout, orderings: torch.Tensor, chunk_size: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[n_sets, n_perts, D]: each set's mean readout under each perturbation minus under the control,
    averaged over `orderings` [N, S] of the cells within each set; `progress` gets (set orderings
    done, total)."""
    check_supported(module)
    if readout.kind != "output":
        check_layer(module, readout.layer)
    reprs = pert_representations(module, onehots)
    out = []
    for i, cells in enumerate(sets):
        total = 0.0
        for n, order in enumerate(orderings):
            total = total + torch.cat([_mean_readout(module, cells[order.to(cells.device)], block, readout)
                                       for block in reprs.split(chunk_size)])
            if progress:
                progress(i * len(orderings) + n + 1, len(sets) * len(orderings))
        means = (total / len(orderings)).double()
        out.append((means - means[control_index]).cpu().numpy())
    return np.stack(out)


def _mean_readout(module: torch.nn.Module, cells: torch.Tensor, reprs: torch.Tensor, readout: Readout) -> torch.Tensor:
    """[B, D] mean over the set's cells of the readout, for B perturbation representations."""
    if readout.kind == "output":
        return forward_sets(module, cells, reprs).mean(dim=1)
    captured: list[torch.Tensor] = []
    hook = backbone_blocks(module)[readout.layer].register_forward_hook(
        lambda _module, _inputs, output: captured.append(output[0] if isinstance(output, tuple) else output))
    try:
        forward_sets(module, cells, reprs)
    finally:
        hook.remove()
    hidden = captured[0][:, cell_positions(module, cells.shape[0]), :]     # without the special tokens
    features = readout.sae.encode(hidden) if readout.kind == "sae" else hidden
    return features.mean(dim=1)


@torch.no_grad()
def hidden_width(module: torch.nn.Module, layer: int, cells: torch.Tensor) -> int:
    """The width of block `layer`'s hidden state (what an SAE on it must read)."""
    check_layer(module, layer)
    control = torch.zeros(1, module.hidden_dim, device=cells.device)
    captured: list[torch.Tensor] = []
    hook = backbone_blocks(module)[layer].register_forward_hook(
        lambda _m, _i, output: captured.append(output[0] if isinstance(output, tuple) else output))
    try:
        forward_sets(module, cells[:2], control)
    finally:
        hook.remove()
    return int(captured[0].shape[-1])
