"""Audit checks: hypotheses about what a checkpoint computes (not statistical tests).

model_audit, per model, with `aspect`:
  attention_direction  the measured attention direction equals `expect` (default bidirectional)
  order_dependence     the mean prediction moves by less than `tolerance` x the median KD
                       effect when the control cells are reordered
  determinism          two identical forward passes differ by less than `tolerance`
  eval_mode            the model is in eval mode with no active dropout
  dimensions           the checkpoint and the model_dir's files agree on pert_dim, n_genes
                       and cell_set_len
A nightly run fails when a dependency upgrade changes one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..families import Card, Check, Family
from ..verdicts import Evidence, PassRule

if TYPE_CHECKING:
    from ..cases import Case
    from ..session import RunContext


@dataclass(frozen=True)
class AuditParams:
    aspect: Literal["attention_direction", "order_dependence", "determinism", "eval_mode", "dimensions"]
    expect: Literal["bidirectional", "causal", "anti-causal", "none"] = "bidirectional"
    tolerance: float = 1e-3

    LIMITS = {"tolerance": (0.0, 1e6)}


def audit_check(case: Case, ctx: RunContext) -> Evidence:
    p: AuditParams = case.spec.params
    audit = ctx.audit(case.axes["model"])
    statistic, value = _measure(p, audit)
    return Evidence(statistic=statistic, value=value, effect=value, ci=None, p=None,
                    n={"cells": audit.n_cells}, null="none: a direct measurement, not a statistical test",
                    seed=audit.seed, details={"audit": audit.to_dict()})


def _measure(p: AuditParams, audit) -> tuple[str, float]:
    if p.aspect == "attention_direction":
        return (f"attention is {p.expect} (1) or not (0); measured: {audit.attention}",
                float(audit.attention == p.expect))
    if p.aspect == "order_dependence":
        return "largest move of the mean prediction under reordering / median KD effect", audit.order_dependence
    if p.aspect == "determinism":
        return "largest difference between two identical forward passes", audit.repeat_difference
    if p.aspect == "eval_mode":
        return "eval mode with no active dropout (1) or not (0)", float(audit.eval_mode and not audit.active_dropout)
    return "number of dimensions on which the model_dir's files disagree", float(len(audit.dimension_mismatches))


def default_rule(p: AuditParams) -> PassRule:
    if p.aspect in ("order_dependence", "determinism"):
        return PassRule(p_below=None, effect_above=None, statistic_below=p.tolerance)
    if p.aspect == "dimensions":
        return PassRule(p_below=None, effect_above=None, statistic_below=0.5)
    return PassRule(p_below=None, effect_above=None, statistic_above=0.5)


FAMILY = Family("model_audit", (
        Check("model_audit", ("model",), AuditParams, audit_check,
              "what the checkpoint computes: attention direction, order dependence, determinism, ...", default_rule,
              calibrated=False, kd_background=False),
    ), Card())
