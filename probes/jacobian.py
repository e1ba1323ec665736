"""Sensitivity of predicted outputs to input genes: dY[target] / dX[regulator].

set_jacobian is the notebooks' "set" mode (NB03): d(mean over cells of Y[:, target]) /
dX[:, regulator], averaged over the cells of the set. It mixes cross-cell attention terms;
for order-sensitive models it is averaged over orderings of the cell set.
"""

from __future__ import annotations

import numpy as np
import torch

from .forward import forward_sets


def set_jacobian(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor, regulators: list[int],
                 targets: list[int], orderings: torch.Tensor | None = None) -> np.ndarray:
    """[len(regulators), len(targets)] set-mode Jacobian, averaged over `orderings` [N, S]."""
    orders = orderings if orderings is not None else torch.arange(cells.shape[0])[None]
    total = np.zeros((len(regulators), len(targets)))
    for order in orders:
        inputs = cells[order.to(cells.device)].detach().clone().requires_grad_(True)
        mean_y = forward_sets(module, inputs, pert_repr[None])[0].mean(dim=0)
        for column, target in enumerate(targets):
            (grad,) = torch.autograd.grad(mean_y[target], inputs, retain_graph=True)
            total[:, column] += grad[:, regulators].mean(dim=0).double().cpu().numpy()
    return total / len(orders)
