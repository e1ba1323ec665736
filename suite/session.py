"""The state one run shares across its cases: models loaded once, probe outputs computed once,
and each model's audit (what it really computes) measured once."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np
import torch

from fixtures.arc_state import LoadedModel, load_model
from fixtures.registry import ModelEntry
from probes import model_audit
from probes.audit import random_orderings
from probes.embeddings import output_shifts, sample_cells

T = TypeVar("T")


class RunContext:
    """Lazily loads registry models on one device and memoises probe outputs by key."""

    def __init__(self, registry: dict[str, ModelEntry], device: torch.device, cell_orderings: int = 8) -> None:
        self.registry = registry
        self.device = device
        self.cell_orderings = cell_orderings
        self._models: dict[str, LoadedModel] = {}
        self._memo: dict[Hashable, object] = {}

    def model(self, name: str) -> LoadedModel:
        if name not in self._models:
            self._models[name] = load_model(self.registry[name], self.device)
        return self._models[name]

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """compute() once per key per run (keys include the model name and every parameter)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def audit(self, name: str) -> model_audit.ModelAudit:
        model = self.model(name)
        shifts = self.output_shifts(name, model.cell_set_len, model_audit.SEED, n_orderings=1)
        return self.memo(("audit", name), lambda: model_audit.audit_model(model, shifts, self.cell_orderings))

    def n_orderings(self, name: str, requested: int | None) -> int:
        """How many cell orderings order-sensitive probes average over: 1 unless the audit found
        that this model's outputs depend on cell order."""
        return (requested or self.cell_orderings) if self.audit(name).order_sensitive else 1

    def output_shifts(self, name: str, size: int, seed: int, n_orderings: int) -> np.ndarray:
        """Mean output shift of every perturbation on `size` seeded control cells, order-averaged."""
        model = self.model(name)

        def compute() -> np.ndarray:
            cells = sample_cells(model.cells, size, seed)
            orders = random_orderings(size, n_orderings, seed)
            return output_shifts(model.module, model.pert_onehots, model.pert_index(model.control_pert), cells,
                                 orderings=orders)

        return self.memo(("output_shifts", name, size, seed, n_orderings), compute)
