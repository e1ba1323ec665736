"""The state one run shares across its cases: models loaded once, probe outputs computed once."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch

from fixtures.arc_state import LoadedModel, load_model
from fixtures.registry import ModelEntry

T = TypeVar("T")


class RunContext:
    """Lazily loads registry models on one device and memoises probe outputs by key."""

    def __init__(self, registry: dict[str, ModelEntry], device: torch.device) -> None:
        self.registry = registry
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._memo: dict[Hashable, Any] = {}

    def model(self, name: str) -> LoadedModel:
        if name not in self._models:
            self._models[name] = load_model(self.registry[name], self.device)
        return self._models[name]

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """compute() once per key per run (keys include the model name and every parameter)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        return dict(self._models)
