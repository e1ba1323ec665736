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

Per-cell mode needs one tangent per (regulator, cell) in general. Where attention is causal in
effect (measured on the cells, `_one_pass_is_exact`), one tangent per regulator that moves every
cell at once gives each cell's own dY_c/dX_c, if attention keeps only a position's own key and
value tangents (`_self_tangent_attention`): S times fewer tangents, 20-35x faster on the demo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch.func import jvp, vmap

from core.errors import ProbeError

from .forward import forward_sets, output_width


@contextmanager
def attention_implementation(module: torch.nn.Module, name: str) -> Iterator[str]:
    """Run the backbone with transformers' attention implementation `name`; yields the configured one."""
    backbone = module.transformer_backbone
    config = getattr(getattr(backbone, "base_model", None), "model", backbone).config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield before
    finally:
        config._attn_implementation = before


@contextmanager
def forward_mode_backbone(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor,
                          tolerance: float = 1e-4) -> Iterator[None]:
    """Run the backbone with eager attention and fused tanh-GELUs, if it computes what the configured
    one does on these cells."""
    with torch.no_grad():
        reference = forward_sets(module, cells, pert_repr[None])
    swapped = [m for m in module.modules() if type(m).__name__ in _PYTHON_TANH_GELUS]
    with attention_implementation(module, "eager") as before:
        for activation in swapped:
            activation.forward = _fused_tanh_gelu       # an instance attribute shadows the class's forward
        try:
            with torch.no_grad():
                fast = forward_sets(module, cells, pert_repr[None])
            gap = float((fast - reference).abs().max())
            if gap > tolerance * (1 + float(reference.abs().max())):
                raise ProbeError(f"this model's eager attention and fused GELU differ from its '{before}' attention "
                                 f"and its own GELU (max difference {gap:.2g}), so forward-mode Jacobians would "
                                 "describe another function")
            yield
        finally:
            for activation in swapped:
                del activation.forward


# transformers' tanh approximations of GELU written as Python arithmetic (GPT2's "gelu_new")
_PYTHON_TANH_GELUS = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")


def _fused_tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def one_pass_diagonal_applies(module: torch.nn.Module) -> bool:
    """Whether `self_tangent_attention` can run this backbone: every attention is GPT2's, which calls
    the eager function (not the reordered-upcast variant, which bypasses it). Whether the one pass is
    exact, that is whether attention is causal in effect, the probe measures on the cells
    (`_one_pass_is_exact`): arc-state's GPT2BidirectionalModel means to lift GPT2's causal mask, and
    whether it does depends on the transformers version."""
    attentions = [m for m in module.transformer_backbone.modules() if type(m).__name__.endswith("Attention")]
    return bool(attentions) and all(type(m).__name__ == "GPT2Attention" and not m.reorder_and_upcast_attn
                                    and not m.is_cross_attention for m in attentions)


@contextmanager
def self_tangent_attention() -> Iterator[None]:
    """Inside forward_mode_backbone: GPT2's eager attention runs as `_self_tangent_attention`."""
    from transformers.models.gpt2 import modeling_gpt2

    before = modeling_gpt2.eager_attention_forward
    modeling_gpt2.eager_attention_forward = _self_tangent_attention     # GPT2Attention looks it up per call
    try:
        yield
    finally:
        modeling_gpt2.eager_attention_forward = before


def _self_tangent_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, head_mask: torch.Tensor | None = None,
                            **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT2's eager attention, with the same outputs, whose forward-mode tangent at query position c
    keeps the key and value tangents of position c only (the detached copies carry none; the
    differences carry the tangent and are zero). In a causal model a change to cell c's input moves
    no earlier position, so when every cell's input moves at once this tangent at position c is
    exactly the one cell c alone would give, layer after layer: every cell's dY_c/dX_c in one
    pass instead of one pass per cell."""
    key_fixed, value_fixed = key.detach(), value.detach()
    weights = torch.matmul(query, key_fixed.transpose(-1, -2))
    weights = weights + torch.diag_embed((query * (key - key_fixed)).sum(-1))
    if module.scale_attn_weights:
        weights = weights / torch.full([], value.size(-1) ** 0.5, dtype=weights.dtype, device=weights.device)
    if module.scale_attn_by_inverse_layer_idx:
        weights = weights / float(module.layer_idx + 1)
    query_length, key_length = query.size(-2), key.size(-2)
    causal = module.bias[:, :, key_length - query_length:key_length, :key_length]
    weights = torch.where(causal, weights, torch.full([], torch.finfo(weights.dtype).min, dtype=weights.dtype,
                                                      device=weights.device))
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, :key_length]
    weights = torch.nn.functional.softmax(weights, dim=-1).type(value.dtype)
    if head_mask is not None:
        weights = weights * head_mask
    output = torch.matmul(weights, value_fixed) + weights.diagonal(dim1=-2, dim2=-1)[..., None] * (value - value_fixed)
    return output.transpose(1, 2), weights


@torch.no_grad()
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
    size, n_inputs = cells.shape
    n_genes, n_orders = output_width(module), len(orderings)
    ordered = torch.stack([cells[order.to(cells.device)] for order in orderings])      # [N, S, G]
    total = np.zeros((len(pert_reprs), len(regulators), n_genes))
    with forward_mode_backbone(module, cells, pert_reprs[0]):
        one_pass = mode == "per_cell" and _one_pass_is_exact(module, ordered[0], pert_reprs[0])
        # one pass gives every cell's own sensitivity: the set-mode tangents, reduced without the 1/S
        tangents = _tangents(cells, regulators, "set" if one_pass else mode)
        reduction = "diagonal" if one_pass else mode
        width = max(n_inputs, n_genes, 4 * pert_reprs.shape[1])
        per_set = size * width                      # floats one tangent moves through one set, at the widest
        budget = budget or _budget(cells.device)
        kd_block = max(1, budget // (len(tangents) * n_orders * per_set))
        tangent_chunk = max(1, budget // (n_orders * per_set)) if kd_block == 1 else None    # released widths
        with self_tangent_attention() if one_pass else nullcontext():
            for start in range(0, len(pert_reprs), kd_block):
                block = pert_reprs[start:start + kd_block]                               # [B, H]
                sets = ordered[None].expand(len(block), -1, -1, -1).reshape(-1, size, n_inputs)
                reprs = block[:, None, :].expand(-1, n_orders, -1).reshape(-1, block.shape[1])
                moved = _output_tangents(module, sets, reprs, tangents, tangent_chunk)  # [T, B*N, S, G]
                result = _reduce(moved, len(regulators), size, reduction)              # [B*N, R, G]
                total[start:start + len(block)] = (result.reshape(len(block), n_orders, len(regulators), n_genes)
                                                   .detach().double().mean(dim=1).cpu().numpy())
                if progress:
                    progress(start + len(block), len(pert_reprs))
    return total


@torch.no_grad()
def _one_pass_is_exact(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor,
                       tolerance: float = 1e-6) -> bool:
    """Whether the one-pass per-cell sensitivity equals one tangent per cell on these cells, along a
    seeded random direction over all input genes (a single gene could be one the model ignores,
    and would then agree in both ways whatever the attention): the cost of one tangent per cell
    for one KD and one regulator."""
    if not one_pass_diagonal_applies(module):
        return False
    direction = torch.randn(cells.shape[1], generator=torch.Generator().manual_seed(0)).to(cells)
    size = len(cells)
    each = torch.zeros(size, size, cells.shape[1], dtype=cells.dtype, device=cells.device)
    each[torch.arange(size), torch.arange(size)] = direction
    slow = _reduce(_output_tangents(module, cells[None], pert_repr[None], each), 1, size, "per_cell")
    with self_tangent_attention():
        together = direction.expand(1, size, -1)
        fast = _reduce(_output_tangents(module, cells[None], pert_repr[None], together), 1, size, "diagonal")
    # causal attention agrees to float rounding (6e-8 of max |J| on the demo); paths from a cell to the
    # others and back in a small bidirectional GPT2 left 8e-6
    gap = float((fast - slow).abs().max())
    return gap <= tolerance * float(slow.abs().max())


def _budget(device: torch.device) -> int:
    """Floats of tangent activations per pass: 64 MB on a CPU (larger blocks are slower there: the
    pass is memory-bound), 512 MB on a GPU."""
    return 2 ** 27 if device.type == "cuda" else 2 ** 24


def _output_tangents(module: torch.nn.Module, sets: torch.Tensor, pert_reprs: torch.Tensor,
                     tangents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """[T, B, S, G]: the change of every cell's prediction in each of B sets along each input tangent
    [T, S, G] (the same tangent moves every set)."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        return forward_sets(module, x, pert_reprs)

    return vmap(lambda t: jvp(predict, (sets,), (t.expand_as(sets),))[1], chunk_size=chunk)(tangents)


@torch.no_grad()
def targeted_jacobians_reference(module: torch.nn.Module, cells: torch.Tensor, pert_reprs: torch.Tensor,
                                 regulators: list[int], mode: str, orderings: torch.Tensor) -> np.ndarray:
    """The same numbers one (ordering, KD) pass at a time, with eager attention and the model's own GELU:
    the algorithm before batching, kept as the reference that tests and bench/jacobian_bench.py compare with."""
    size = cells.shape[0]
    tangents = _tangents(cells, regulators, mode)
    total = np.zeros((len(pert_reprs), len(regulators), output_width(module)))
    with attention_implementation(module, "eager"):
        for order in orderings:
            ordered = cells[order.to(cells.device)]
            for k, pert_repr in enumerate(pert_reprs):
                moved = _output_tangents(module, ordered[None], pert_repr[None], tangents)[:, 0]
                total[k] += _reduce(moved[:, None], len(regulators), size, mode)[0].detach().double().cpu().numpy()
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
    if mode == "diagonal":          # one tangent per regulator that already moved each cell on its own
        return moved.mean(dim=2).transpose(0, 1)
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
