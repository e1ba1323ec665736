"""What a checkpoint really computes, measured rather than read from its config.

arc-state declares its backbones bidirectional (a set-to-set model: every cell attends to
every other), but with transformers 4.54-4.57 its GPT2 backbone is causal, so outputs
depend on the order of cells in the set. These measurements take a *set function*
(cells [S, G] -> per-cell outputs [S, D]) so they work on any model, arc-state or toy:

attention_direction   replace one cell at a time; does an earlier / a later cell's output move?
order_change          how far the set's mean output moves when the cells are reordered
cross_cell_coupling   Frobenius norms of the per-cell Jacobian blocks dY_c/dX_d, estimated
                      with random probe vectors (Hutchinson), off-diagonal vs diagonal
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SetFunction = Callable[[torch.Tensor], torch.Tensor]

# a change counts as real when it exceeds float32 round-off on the output's scale
RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Direction:
    label: str                    # bidirectional | causal | anti-causal | none
    later_on_earlier: float       # largest relative change of an earlier cell when a later one changes
    earlier_on_later: float       # ... of a later cell when an earlier one changes


@torch.no_grad()
def attention_direction(set_fn: SetFunction, cells: torch.Tensor, replacement: torch.Tensor,
                        tolerance: float = RELATIVE_TOLERANCE) -> Direction:
    """Replace the first, middle and last cell in turn with `replacement` [G] and watch the others."""
    base = set_fn(cells)
    scale = base.norm(dim=1).clamp_min(1e-12)
    size = cells.shape[0]
    later_on_earlier = earlier_on_later = 0.0
    for j in sorted({0, size // 2, size - 1}):
        changed = cells.clone()
        changed[j] = replacement
        moved = ((set_fn(changed) - base).norm(dim=1) / scale).tolist()
        later_on_earlier = max([later_on_earlier, *moved[:j]])
        earlier_on_later = max([earlier_on_later, *moved[j + 1:]])
    return Direction(_direction_label(later_on_earlier > tolerance, earlier_on_later > tolerance),
                     later_on_earlier, earlier_on_later)


def _direction_label(back: bool, forward: bool) -> str:
    if back and forward:
        return "bidirectional"
    if forward:
        return "causal"
    return "anti-causal" if back else "none"


@torch.no_grad()
def order_change(set_fn: SetFunction, cells: torch.Tensor, n_orderings: int, seed: int) -> float:
    """Largest distance between the set's mean output in its given order and in random orders."""
    reference = set_fn(cells).mean(dim=0)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_orderings):
        order = torch.randperm(cells.shape[0], generator=generator).to(cells.device)
        worst = max(worst, float((set_fn(cells[order]).mean(dim=0) - reference).norm()))
    return worst


@dataclass(frozen=True)
class Coupling:
    mean_ratio: float    # mean off-diagonal block norm / mean diagonal block norm
    total_ratio: float   # sum over other cells of the block norms / the diagonal block norm
    n_cells: int         # output cells sampled
    n_vectors: int       # probe vectors per cell


def cross_cell_coupling(set_fn: SetFunction, cells: torch.Tensor, n_cells: int, n_vectors: int,
                        seed: int) -> Coupling:
    """Compare ||dY_c/dX_d||_F for d != c with d == c, from vector-Jacobian products.

    For random u, E||u^T J_cd||^2 = ||J_cd||_F^2, and one backward pass of u^T Y_c gives
    the products for every input cell d at once.
    """
    generator = torch.Generator().manual_seed(seed)
    size = cells.shape[0]
    picked = torch.randperm(size, generator=generator)[:n_cells].tolist()
    squared = torch.zeros(len(picked), size, dtype=torch.float64)
    for row, c in enumerate(picked):
        for _ in range(n_vectors):
            inputs = cells.detach().clone().requires_grad_(True)
            output = set_fn(inputs)[c]
            u = torch.randn(output.shape, generator=generator).to(output.device, output.dtype)
            (grad,) = torch.autograd.grad(output @ u, inputs)
            squared[row] += grad.double().pow(2).sum(dim=1).cpu() / n_vectors
    norms = squared.sqrt()
    diagonal = norms[torch.arange(len(picked)), picked]
    off = norms.clone()
    off[torch.arange(len(picked)), picked] = float("nan")
    mean_diag = float(diagonal.mean())
    if mean_diag == 0.0:
        return Coupling(float("nan"), float("nan"), len(picked), n_vectors)
    mean_ratio = float(torch.nanmean(off)) / mean_diag
    total_ratio = float(torch.nansum(off, dim=1).mean()) / mean_diag
    return Coupling(mean_ratio, total_ratio, len(picked), n_vectors)


@torch.no_grad()
def repeat_difference(set_fn: SetFunction, cells: torch.Tensor) -> float:
    """Largest absolute difference between two identical forward passes."""
    return float((set_fn(cells) - set_fn(cells)).abs().max())


def active_dropout(module: torch.nn.Module) -> list[str]:
    """Names of dropout layers that would drop units (training mode and p > 0)."""
    return [name for name, layer in module.named_modules()
            if isinstance(layer, torch.nn.modules.dropout._DropoutNd) and layer.training and layer.p > 0]


def random_orderings(size: int, n: int, seed: int) -> torch.Tensor:
    """[n, size] orderings of a cell set: the given order first, then seeded random ones."""
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.arange(size)] + [torch.randperm(size, generator=generator) for _ in range(n - 1)]
    return torch.stack(orders)
