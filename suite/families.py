"""The probe families a hypothesis's `probe:` can name, found in one registry.

A family is one module that ends with ``FAMILY = Family(...)``: its checks (each with the axes its
cases expand over, its params dataclass with their LIMITS, the function that turns a case into
Evidence, its default pass rule and its side of the synthesis) and its card (which settings the
report shows, and optionally a Jinja partial of its own). The probe outputs a family needs it asks
of the run through the one cached accessor, ``RunContext.stored`` (suite/session.py).

Families are found, in this order, in
  1. every module of the ``suite.checks`` package (the built-in families);
  2. the ``st_hypotheses.families`` entry-point group (a family in a package of its own:
     ``[project.entry-points."st_hypotheses.families"] toy = "toy_family"``);
  3. the modules named by the ``probe_families`` ini option (a family in a folder on pytest's
     ``pythonpath``), read when the plugin starts.
Adding a family is that module and a hypothesis YAML naming its probe; nothing else is edited.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from core.errors import FamilyError

from .verdicts import PassRule

if TYPE_CHECKING:
    from .cases import Case
    from .session import RunContext
    from .verdicts import Evidence

ENTRY_POINTS = "st_hypotheses.families"

# representation probes (is a pathway organized in what the model computes?) vs causal probes
# (is it routed through the model's Jacobians?)
Side = Literal["organized", "routed"]

# a check that sets or differentiates input genes and reads genes in the prediction (Check.needs)
GENE_LEVEL = frozenset({"gene_inputs", "gene_outputs"})


@dataclass(frozen=True)
class Check:
    name: str
    axes: tuple[str, ...]
    params: type
    run: Callable[[Case, RunContext], Evidence]
    summary: str
    default_rule: Callable[[Any], PassRule] = lambda params: PassRule()   # when a hypothesis gives none
    validate: Callable[[Any], str | None] = lambda params: None          # cross-field checks of params
    side: Side | None = None   # which half of the dual-probe synthesis a per-pathway pass speaks for
    calibrated: bool = True    # --calibrate reruns it under nulls (not for measurements without a test)
    # what its models must have, else the case is inconclusive (suite/verdicts.py): "gene_inputs" (it sets
    # or differentiates input genes) and "gene_outputs" (it reads panel genes in the prediction); or a
    # function of the params, for checks whose params decide it
    needs: frozenset[str] | Callable[[Any], frozenset[str]] = frozenset()
    # its nulls, baselines or statistic draw from the run's KDs, so a background sample
    # (suite/background.py) shapes it and its card says so; False for checks over genes or the checkpoint
    kd_background: bool = True


@dataclass(frozen=True)
class Card:
    """What a family's evidence card shows beyond what every card shows (verdict, numbers, null,
    sizes, the null histogram, heatmap and scatter its details hold)."""

    settings: tuple[str, ...] = ()     # params named on the card's "settings" line
    reference: str | None = None       # a details key drawn as the reference line of the table's bar chart
    partial: str | None = None         # a Jinja file beside the family's module, drawn inside the card

    def to_dict(self, family: Family) -> dict[str, Any]:
        """The card as the report reads it (reports/html.py): plain data, the partial as its source."""
        source = None
        if self.partial is not None:
            path = Path(family.module.__file__).parent / self.partial
            try:
                source = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise FamilyError(f"probe family '{family.name}': its card partial {path} cannot be read ({exc}); "
                                  "fix Card(partial=...) in the family's module") from None
        return {"family": family.name, "settings": list(self.settings), "reference": self.reference,
                "partial": source}


@dataclass(frozen=True)
class Family:
    name: str
    checks: tuple[Check, ...]
    card: Card = Card()
    module: ModuleType = field(default=None, compare=False, repr=False)   # filled in on registration


class Registry(Mapping[str, Check]):
    """Every check by probe name; the built-in families are read on first use."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._families: dict[str, Family] = {}
        self._family_of: dict[str, str] = {}
        self._builtin = False

    def __getitem__(self, probe: str) -> Check:
        return self._all()[probe]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def families(self) -> dict[str, Family]:
        self._all()
        return dict(self._families)

    def cards(self) -> dict[str, dict[str, Any]]:
        """Per probe, its family's card as the report reads it."""
        by_family = {name: family.card.to_dict(family) for name, family in self.families().items()}
        return {probe: by_family[family] for probe, family in self._family_of.items()}

    def load(self, module_name: str) -> Family:
        """Import a family module and register its FAMILY (already registered: the same Family)."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise FamilyError(f"probe family module '{module_name}' cannot be imported ({exc}); check the "
                              "'probe_families' ini option or the entry point, and that the module's folder is on "
                              "pytest's 'pythonpath'") from None
        return self.add(module)

    def add(self, module: ModuleType) -> Family:
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, Family):
            raise FamilyError(f"probe family module '{module.__name__}' ({module.__file__}) defines no FAMILY = "
                              "Family(...); end the module with FAMILY = Family(name, checks, card)")
        known = self._families.get(family.name)
        if known is not None and known.module is module:
            return known
        if known is not None:
            raise FamilyError(f"two probe families are named '{family.name}': {known.module.__name__} and "
                              f"{module.__name__}; give one of them another name")
        clash = [c.name for c in family.checks if c.name in self._checks]
        if clash:
            raise FamilyError(f"probe family '{family.name}' ({module.__name__}) names probes another family has: "
                              f"{', '.join(clash)}; give its checks names of their own")
        family = Family(family.name, family.checks, family.card, module)
        self._families[family.name] = family
        for check in family.checks:
            self._checks[check.name] = check
            self._family_of[check.name] = family.name
        return family

    def discover(self, extra: Sequence[str] = ()) -> None:
        """Register the built-in families, the entry-point group's and the modules in `extra`."""
        self._all()
        for point in entry_points(group=ENTRY_POINTS):
            self.load(point.value)
        for name in extra:
            self.load(name)

    def _all(self) -> dict[str, Check]:
        if not self._builtin:
            self._builtin = True
            from . import checks

            for info in sorted(pkgutil.iter_modules(checks.__path__), key=lambda m: m.name):
                module = importlib.import_module(f"{checks.__name__}.{info.name}")
                if hasattr(module, "FAMILY"):
                    self.add(module)
        return self._checks


CHECKS = Registry()
