"""The audit of one loaded arc-state model: what it computes, in numbers and in words.

Measured on one seeded set of the model's control cells under the control perturbation:
attention direction (on the backbone's hidden states, so the output ReLU cannot hide a
change), order dependence of the mean prediction relative to the median KD effect,
cross-cell coupling of the per-cell Jacobian, eval mode, dropout, determinism of two
identical passes, and the dimensions the checkpoint has against the model_dir's files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import audit
from .embeddings import sample_cells
from .forward import backbone, encode_cells, forward_sets

if TYPE_CHECKING:   # only named in annotations: probes never import the loaders above them
    from fixtures.arc_state import LoadedModel

ORDER_TOLERANCE = 1e-3      # order effects below 0.1% of the median KD effect are float noise
SEED = 0


@dataclass(frozen=True)
class ModelAudit:
    backbone: str
    attn_implementation: str
    attention: str                     # bidirectional | causal | anti-causal | none
    later_on_earlier: float
    earlier_on_later: float
    order_change: float                # largest move of the mean prediction under reordering
    kd_effect: float                   # median norm of the KDs' mean output shifts
    order_dependence: float            # order_change / kd_effect
    coupling_mean: float               # mean off-diagonal / diagonal per-cell Jacobian block norm
    coupling_total: float              # summed over the other cells of the set
    eval_mode: bool
    active_dropout: list[str]
    repeat_difference: float
    dimensions: dict[str, dict[str, int | None]]
    dimension_mismatches: list[str]
    n_cells: int
    n_orderings: int
    seed: int
    warnings: list[str] = field(default_factory=list)

    @property
    def order_sensitive(self) -> bool:
        return self.attention in ("causal", "anti-causal") or self.order_dependence > ORDER_TOLERANCE

    def to_dict(self) -> dict:
        return {**asdict(self), "order_sensitive": self.order_sensitive}


def audit_model(model: LoadedModel, kd_shifts: np.ndarray, cell_orderings: int) -> ModelAudit:
    """Audit `model`; `kd_shifts` [n_perts, G] are its mean output shifts on the same cells."""
    module = model.module
    cells = sample_cells(model.cells, model.cell_set_len, SEED)
    with torch.no_grad():
        control = module.pert_encoder(model.pert_onehots[model.pert_index(model.control_pert)][None])

    def hidden(c: torch.Tensor) -> torch.Tensor:
        cell_repr, _, batch_repr = encode_cells(module, c[None])
        seq = cell_repr + control[:, None, :]
        return backbone(module, seq if batch_repr is None else seq + batch_repr)[0]

    def output(c: torch.Tensor) -> torch.Tensor:
        return forward_sets(module, c, control)[0]

    direction = audit.attention_direction(hidden, cells, _outside_cell(model, cells))
    moved = audit.order_change(output, cells, n_orderings=8, seed=SEED)
    kd_effect = float(np.median(np.linalg.norm(np.delete(kd_shifts, model.pert_index(model.control_pert), 0), axis=1)))
    coupling = audit.cross_cell_coupling(output, cells, n_cells=4, n_vectors=8, seed=SEED)
    dims = dimensions(model)
    result = ModelAudit(
        backbone=str(module.hparams.get("transformer_backbone_key", "?")),
        attn_implementation=str(getattr(module.transformer_backbone.config, "_attn_implementation", "?")),
        attention=direction.label, later_on_earlier=direction.later_on_earlier,
        earlier_on_later=direction.earlier_on_later, order_change=moved, kd_effect=kd_effect,
        order_dependence=moved / kd_effect if kd_effect > 0 else float("inf"),
        coupling_mean=coupling.mean_ratio, coupling_total=coupling.total_ratio, eval_mode=not module.training,
        active_dropout=audit.active_dropout(module), repeat_difference=audit.repeat_difference(output, cells),
        dimensions=dims, dimension_mismatches=dimension_mismatches(dims), n_cells=cells.shape[0],
        n_orderings=cell_orderings, seed=SEED)
    return ModelAudit(**{**asdict(result), "warnings": warnings(result)})


def _outside_cell(model: LoadedModel, cells: torch.Tensor) -> torch.Tensor:
    """A control cell from outside the audited set (the set's reversed mean if there is none)."""
    if model.cells.shape[0] > cells.shape[0]:
        return sample_cells(model.cells, cells.shape[0] + 1, SEED + 1)[-1]
    return cells.mean(dim=0).flip(0)


def dimensions(model: LoadedModel) -> dict[str, dict[str, int | None]]:
    """Each dimension as the checkpoint has it and as the model_dir's other files state it."""
    module, var_dims = model.module, model.var_dims
    kwargs = (model.config.get("model") or {}).get("kwargs") or {}
    return {
        "pert_dim": {"checkpoint": int(module.pert_dim), "pert_onehot_map": int(model.pert_onehots.shape[1]),
                     "var_dims": _int(var_dims.get("pert_dim"))},
        "n_genes": {"checkpoint": int(module.input_dim), "gene_names": len(model.gene_names),
                    "cells": int(model.cells.shape[1]), "var_dims": _int(var_dims.get("input_dim"))},
        "cell_set_len": {"checkpoint": int(model.cell_set_len), "config": _int(kwargs.get("cell_set_len"))},
    }


def _int(value) -> int | None:
    return None if value is None else int(value)


def dimension_mismatches(dims: dict[str, dict[str, int | None]]) -> list[str]:
    out = []
    for name, sources in dims.items():
        stated = {k: v for k, v in sources.items() if v is not None}
        if len(set(stated.values())) > 1:
            out.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in stated.items()))
    return out


def warnings(a: ModelAudit) -> list[str]:
    """The audit in plain language, only where it matters for the verdicts."""
    notes = []
    if a.attention == "causal":
        notes.append("causal attention: each cell sees only the cells before it in the set, although arc-state "
                     "declares the backbone bidirectional; results depend on cell order, so the probes average "
                     f"over {a.n_orderings} random orderings of the cells")
    elif a.attention == "anti-causal":
        notes.append("anti-causal attention: each cell sees only the cells after it; the probes average over "
                     f"{a.n_orderings} random orderings of the cells")
    elif a.attention == "none":
        notes.append("no cross-cell coupling: the model treats each cell on its own, not as a set")
    elif a.order_dependence > ORDER_TOLERANCE:
        notes.append(f"the mean prediction moves by {a.order_dependence:.1%} of the median KD effect when the cells "
                     f"are reordered; the probes average over {a.n_orderings} random orderings")
    if not a.eval_mode or a.active_dropout:
        notes.append(f"dropout is active ({', '.join(a.active_dropout) or 'train mode'}): predictions are random")
    if a.repeat_difference > 0:
        notes.append(f"two identical forward passes differ by up to {a.repeat_difference:.2g}")
    for mismatch in a.dimension_mismatches:
        notes.append(f"the model_dir's files disagree on {mismatch}")
    return notes
