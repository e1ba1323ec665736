"""Sensitivity of predicted outputs to input genes: J(i, j | k) = dY[j] / dX[i] under KD k (NB03).

Two modes (the mode is recorded with every result):
  per_cell  dY_c[j] / dX_c[i] for each cell c with the other cells of the set held fixed,
            averaged over cells: the diagonal of the cross-cell Jacobian (the note's best practice)
  set       d(mean_c Y_c[j]) / dX[:, i], averaged over the cells d: the notebook's version,
            which mixes in cross-cell attention terms

Forward mode (torch.func.jvp, vmapped over tangents): one batched pass per (KD, regulator set)
gives the sensitivity of *every* output gene, so panels of targets cost nothing extra. Inside
`forward_mode_backbone` the backbone runs in the form forward mode handles well, after checking
that it gives the same outputs on these cells: eager attention (SDPA has no forward-mode derivative
on CPU), and transformers' Python tanh-GELU as torch's fused kernel of the same function (its
tangent is one kernel instead of eight elementwise passes: 1.5x faster Jacobians at demo shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.func import jvp, vmap

from suite.errors import ProbeError

from .forward import forward_sets


@contextmanager
def forward_mode_backbone(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor,
                          tolerance: float = 1e-4) -> Iterator[None]:
    """Run the backbone with eager attention and fused tanh-GELUs, if it computes what the configured
    one does on these cells."""
    backbone = module.transformer_backbone
    config = getattr(getattr(backbone, "base_model", None), "model", backbone).config
    before = config._attn_implementation
    with torch.no_grad():
        reference = forward_sets(module, cells, pert_repr[None])
    config._attn_implementation = "eager"
    swapped = [m for m in module.modules() if type(m).__name__ in _PYTHON_TANH_GELUS]
    for activation in swapped:
        activation.forward = _fused_tanh_gelu       # an instance attribute shadows the class's forward
    try:
        with torch.no_grad():
            fast = forward_sets(module, cells, pert_repr[None])
        gap = float((fast - reference).abs().max())
        if gap > tolerance * (1 + float(reference.abs().max())):
            raise ProbeError(f"this model's eager attention and fused GELU differ from its '{before}' attention and "
                             f"its own GELU (max difference {gap:.2g}), so forward-mode Jacobians would describe "
                             "another function")
        yield
    finally:
        config._attn_implementation = before
        for activation in swapped:
            del activation.forward


# transformers' tanh approximations of GELU written as Python arithmetic (GPT2's "gelu_new")
_PYTHON_TANH_GELUS = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")


def _fused_tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def targeted_jacobians(module: torch.nn.Module, cells: torch.Tensor, pert_reprs: torch.Tensor,
                       regulators: list[int], mode: str, orderings: torch.Tensor,
                       budget: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[K, R, G]: sensitivity of every output gene to input gene regulators[r] under pert_reprs[k],
    averaged over cells and over `orderings` [N, S] of the cell set.

    A tangent is a (regulator, position) pair, so the same tangents serve every ordering and every KD:
    sets for a block of KDs under all orderings go through one vmapped pass. At demo widths per-op
    overhead dominates, so the block is as large as `budget` floats of tangent activations allow."""
    if mode not in ("per_cell", "set"):
        raise ValueError(f"mode must be per_cell or set, not {mode!r}")
    size, n_genes = cells.shape
    tangents = _tangents(cells, regulators, mode)
    n_orders = len(orderings)
    ordered = torch.stack([cells[order.to(cells.device)] for order in orderings])      # [N, S, G]
    width = max(n_genes, 4 * pert_reprs.shape[1])
    per_set = size * width                          # floats one tangent moves through one set, at the widest
    budget = budget or _budget(cells.device)
    kd_block = max(1, budget // (len(tangents) * n_orders * per_set))
    tangent_chunk = max(1, budget // (n_orders * per_set)) if kd_block == 1 else None    # released widths
    total = np.zeros((len(pert_reprs), len(regulators), n_genes))
    with forward_mode_backbone(module, cells, pert_reprs[0]):
        for start in range(0, len(pert_reprs), kd_block):
            block = pert_reprs[start:start + kd_block]                                   # [B, H]
            sets = ordered[None].expand(len(block), -1, -1, -1).reshape(-1, size, n_genes)
            reprs = block[:, None, :].expand(-1, n_orders, -1).reshape(-1, block.shape[1])
            moved = _output_tangents(module, sets, reprs, tangents, tangent_chunk)      # [T, B*N, S, G]
            per_set = _reduce(moved, len(regulators), size, mode)                       # [B*N, R, G]
            total[start:start + len(block)] = (per_set.reshape(len(block), n_orders, len(regulators), n_genes)
                                               .detach().double().mean(dim=1).cpu().numpy())
            if progress:
                progress(start + len(block), len(pert_reprs))
    return total


def _budget(device: torch.device) -> int:
    """Floats of tangent activations per pass: 32 MB on a CPU (larger blocks are slower there: the
    pass is memory-bound), 512 MB on a GPU."""
    return 2 ** 27 if device.type == "cuda" else 2 ** 23


def _output_tangents(module: torch.nn.Module, sets: torch.Tensor, pert_reprs: torch.Tensor,
                     tangents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """[T, B, S, G]: the change of every cell's prediction in each of B sets along each input tangent
    [T, S, G] (the same tangent moves every set)."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        return forward_sets(module, x, pert_reprs)

    return vmap(lambda t: jvp(predict, (sets,), (t.expand_as(sets),))[1], chunk_size=chunk)(tangents)


def targeted_jacobians_reference(module: torch.nn.Module, cells: torch.Tensor, pert_reprs: torch.Tensor,
                                 regulators: list[int], mode: str, orderings: torch.Tensor) -> np.ndarray:
    """The same numbers one (ordering, KD) pass at a time, with the model's own attention and GELU: the
    algorithm before batching, kept as the reference that tests and bench/jacobian_bench.py compare with."""
    size = cells.shape[0]
    tangents = _tangents(cells, regulators, mode)
    total = np.zeros((len(pert_reprs), len(regulators), cells.shape[1]))
    backbone = module.transformer_backbone
    config = getattr(getattr(backbone, "base_model", None), "model", backbone).config
    before, config._attn_implementation = config._attn_implementation, "eager"
    try:
        for order in orderings:
            ordered = cells[order.to(cells.device)]
            for k, pert_repr in enumerate(pert_reprs):
                moved = _output_tangents(module, ordered[None], pert_repr[None], tangents)[:, 0]
                total[k] += _reduce(moved[:, None], len(regulators), size, mode)[0].detach().double().cpu().numpy()
    finally:
        config._attn_implementation = before
    return total / len(orderings)


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
    """[tangents, B, S, G] output tangents -> [B, R, G] cell-averaged sensitivities of each set."""
    if mode == "set":
        return moved.mean(dim=2).transpose(0, 1) / size
    per_regulator = moved.reshape(n_regulators, size, *moved.shape[1:])               # [R, S(tangent), B, S, G]
    positions = torch.arange(size, device=moved.device)
    diagonal = per_regulator[:, positions, :, positions, :]                             # [S, R, B, G]: dY_c / dX_c
    return diagonal.mean(dim=0).transpose(0, 1)


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
