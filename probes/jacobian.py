"""Sensitivity of predicted outputs to input genes: J(i, j | k) = dY[j] / dX[i] under KD k (NB03).

Two modes (the mode is recorded with every result):
  per_cell  dY_c[j] / dX_c[i] for each cell c with the other cells of the set held fixed,
            averaged over cells: the diagonal of the cross-cell Jacobian (the note's best practice)
  set       d(mean_c Y_c[j]) / dX[:, i], averaged over the cells d: the notebook's version,
            which mixes in cross-cell attention terms

Forward mode (torch.func.jvp, vmapped over tangents): one batched pass per (KD, regulator set)
gives the sensitivity of *every* output gene, so panels of targets cost nothing extra. SDPA
attention has no forward-mode derivative on CPU, so the backbone runs its eager attention inside
`eager_attention`, after checking that both give the same outputs on these cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.func import jvp, vmap

from suite.errors import ProbeError

from .forward import forward_sets


@contextmanager
def eager_attention(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor,
                    tolerance: float = 1e-4) -> Iterator[None]:
    """Run the backbone with eager attention, if it computes what the configured one does."""
    backbone = module.transformer_backbone
    config = getattr(getattr(backbone, "base_model", None), "model", backbone).config
    before = config._attn_implementation
    with torch.no_grad():
        reference = forward_sets(module, cells, pert_repr[None])
    config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            eager = forward_sets(module, cells, pert_repr[None])
        gap = float((eager - reference).abs().max())
        if gap > tolerance * (1 + float(reference.abs().max())):
            raise ProbeError(f"this model's eager attention differs from its '{before}' attention (max difference "
                             f"{gap:.2g}), so forward-mode Jacobians would describe another function")
        yield
    finally:
        config._attn_implementation = before


def targeted_jacobians(module: torch.nn.Module, cells: torch.Tensor, pert_reprs: torch.Tensor,
                       regulators: list[int], mode: str, orderings: torch.Tensor,
                       chunk_size: int | None = None) -> np.ndarray:
    """[K, R, G]: sensitivity of every output gene to input gene regulators[r] under pert_reprs[k],
    averaged over cells and over `orderings` [N, S] of the cell set."""
    if mode not in ("per_cell", "set"):
        raise ValueError(f"mode must be per_cell or set, not {mode!r}")
    size = cells.shape[0]
    tangents = _tangents(cells, regulators, mode)
    total = np.zeros((len(pert_reprs), len(regulators), cells.shape[1]))
    with eager_attention(module, cells, pert_reprs[0]):
        for order in orderings:
            ordered = cells[order.to(cells.device)]
            for k, pert_repr in enumerate(pert_reprs):
                moved = _output_tangents(module, ordered, pert_repr, tangents, chunk_size)
                total[k] += _reduce(moved, len(regulators), size, mode).detach().double().cpu().numpy()
    return total / len(orderings)


def _output_tangents(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor, tangents: torch.Tensor,
                     chunk_size: int | None) -> torch.Tensor:
    """[T, S, G]: the change of every cell's prediction along each input tangent (forward mode)."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        return forward_sets(module, x, pert_repr[None])[0]

    return vmap(lambda t: jvp(predict, (cells,), (t,))[1], chunk_size=chunk_size)(tangents)


def _tangents(cells: torch.Tensor, regulators: list[int], mode: str) -> torch.Tensor:
    """per_cell: one tangent per (regulator, cell) touching that cell's regulator input only;
    set: one tangent per regulator touching every cell's regulator input."""
    size, genes = cells.shape
    if mode == "set":
        out = torch.zeros(len(regulators), size, genes, device=cells.device, dtype=cells.dtype)
        for r, gene in enumerate(regulators):
            out[r, :, gene] = 1.0
        return out
    out = torch.zeros(len(regulators) * size, size, genes, device=cells.device, dtype=cells.dtype)
    for r, gene in enumerate(regulators):
        out[r * size + torch.arange(size), torch.arange(size), gene] = 1.0
    return out


def _reduce(moved: torch.Tensor, n_regulators: int, size: int, mode: str) -> torch.Tensor:
    """[tangents, S, G] output tangents -> [R, G] cell-averaged sensitivities."""
    if mode == "set":
        return moved.mean(dim=1) / size
    per_regulator = moved.reshape(n_regulators, size, size, -1)
    diagonal = per_regulator[:, torch.arange(size), torch.arange(size), :]     # [R, S, G]: dY_c / dX_c
    return diagonal.mean(dim=1)


def set_jacobian(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor, regulators: list[int],
                 targets: list[int], orderings: torch.Tensor | None = None) -> np.ndarray:
    """[R, T] set-mode Jacobian by reverse mode, one backward per target (the notebook's way)."""
    orders = orderings if orderings is not None else torch.arange(cells.shape[0])[None]
    total = np.zeros((len(regulators), len(targets)))
    for order in orders:
        inputs = cells[order.to(cells.device)].detach().clone().requires_grad_(True)
        mean_y = forward_sets(module, inputs, pert_repr[None])[0].mean(dim=0)
        for column, target in enumerate(targets):
            (grad,) = torch.autograd.grad(mean_y[target], inputs, retain_graph=True)
            total[:, column] += grad[:, regulators].mean(dim=0).double().cpu().numpy()
    return total / len(orders)
