"""Per-KD measurements of a model: perturbation embeddings and output shifts.

pert_embeddings: the pert_encoder output for every perturbation in the model's
pert_onehot_map (NB02's "meaning" of each KD, before any cell is seen).

output_shifts: ΔY_k = mean_c Y(cells, k) − mean_c Y(cells, control), the predicted
shift of the mean expression under each KD on one sampled set of control cells,
computed for many KDs per forward pass; for order-sensitive (causal) models, averaged
over several orderings of the cell set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.errors import Inconclusive

from .forward import check_supported, forward_sets, output_width, pert_representations


@torch.no_grad()
def pert_embeddings(module: torch.nn.Module, onehots: torch.Tensor) -> np.ndarray:
    """[n_perts, H] pert_encoder outputs, in the order of `onehots`."""
    return pert_representations(module, onehots).double().cpu().numpy()


def _enough_cells(cells: torch.Tensor, size: int) -> None:
    """A hypothesis may ask for more cells than a registry's file has: that test cannot be run as asked."""
    if size > cells.shape[0]:
        raise Inconclusive(f"asked for {size} control cells but the model's cells file has {cells.shape[0]}; "
                           f"set 'cell_set_size' to at most {cells.shape[0]} or supply more control cells")


def sample_cells(cells: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """`size` control cells drawn without replacement with a seeded generator."""
    _enough_cells(cells, size)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(cells.shape[0], generator=generator)[:size]
    return cells[order.to(cells.device)]


CELL_SAMPLINGS = ("random", "stratified", "top_magnitude")


def select_cells(cells: torch.Tensor, size: int, seed: int, sampling: str = "random") -> torch.Tensor:
    """`size` control cells chosen the NB09 ways: `random` (seeded, without replacement), `stratified`
    (one seeded cell from each of `size` equal bins of total expression) or `top_magnitude` (the
    cells of largest total expression)."""
    if sampling == "random":
        return sample_cells(cells, size, seed)
    _enough_cells(cells, size)
    by_total = torch.argsort(cells.sum(dim=1).cpu(), descending=True)
    if sampling == "top_magnitude":
        return cells[by_total[:size].to(cells.device)]
    if sampling != "stratified":
        raise ValueError(f"sampling must be one of {', '.join(CELL_SAMPLINGS)}, not {sampling!r}")
    generator = torch.Generator().manual_seed(seed)
    picks = [b[torch.randint(len(b), (1,), generator=generator)] for b in torch.tensor_split(by_total, size)]
    return cells[torch.cat(picks).to(cells.device)]


@torch.no_grad()
def output_shifts(module: torch.nn.Module, onehots: torch.Tensor, control_index: int,
                  cell_set: torch.Tensor, chunk_size: int = 64, orderings: torch.Tensor | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[n_perts, G] mean predicted shift of each perturbation relative to the control.

    `orderings` [N, S]: average over these orderings of the cell set (default: as given). `progress`
    gets (perturbations done, total) summed over the orderings.
    """
    check_supported(module)
    reprs = pert_representations(module, onehots)
    orders = orderings if orderings is not None else torch.arange(cell_set.shape[0])[None]
    total = torch.zeros(reprs.shape[0], output_width(module), dtype=torch.float64, device=cell_set.device)
    for n, order in enumerate(orders):
        cells = cell_set[order.to(cell_set.device)]
        for start in range(0, reprs.shape[0], chunk_size):
            block = reprs[start:start + chunk_size]
            total[start:start + chunk_size] += forward_sets(module, cells, block).mean(dim=1).double()
            if progress:
                progress(n * len(reprs) + start + len(block), len(orders) * len(reprs))
    mean_y = total / len(orders)
    return (mean_y - mean_y[control_index]).cpu().numpy()
