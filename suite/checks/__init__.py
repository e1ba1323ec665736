"""The probes a hypothesis can name: each turns a case into Evidence.

A Check says which axes its hypotheses expand over, which parameters its YAML `params`
accepts (a dataclass, validated on load), and the function that computes the evidence
from the run's models. Add a probe by adding a module here and listing its checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..verdicts import PassRule

if TYPE_CHECKING:
    from ..cases import Case
    from ..session import RunContext
    from ..verdicts import Evidence


# representation probes (is a pathway organized in what the model computes?) vs causal probes
# (is it routed through the model's Jacobians?)
Side = Literal["organized", "routed"]


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


def _registry() -> dict[str, Check]:
    from . import jacobian, knockout, model_audit, pert_embedding, representation, routing

    families = (pert_embedding.CHECKS, representation.CHECKS, jacobian.CHECKS, knockout.CHECKS, routing.CHECKS,
                model_audit.CHECKS)
    return {check.name: check for family in families for check in family}


CHECKS: dict[str, Check] = _registry()
