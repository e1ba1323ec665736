"""Evaluating one case: run its check, decide its verdict, keep the record."""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass

from core.errors import Inconclusive

from .cases import Case
from .families import CHECKS
from .session import RunContext
from .verdicts import CaseResult, decide, threshold_of


def skeleton(case: Case) -> CaseResult:
    """The record of a case before it ran: an error unless evaluation completes."""
    spec = case.spec
    params = {**case.params(), **_plain(spec.params)}
    return CaseResult(case_id=case.case_id, hypothesis=spec.id, probe=spec.probe, claim=spec.claim,
                      params=params, verdict="error", reason="the case raised before reaching a verdict",
                      expected=case.expected.verdict if case.expected else None,
                      threshold=threshold_of(spec.pass_rule), side=CHECKS[spec.probe].side,
                      tolerance=dict(spec.tolerance))


def evaluate(case: Case, ctx: RunContext, record: CaseResult | None = None) -> CaseResult:
    """Fill `record` (or a fresh skeleton) with the case's evidence and verdict."""
    record = record or skeleton(case)
    start, cached = time.perf_counter(), ctx.cache_snapshot()
    try:
        evidence = CHECKS[case.spec.probe].run(case, ctx)
    except Inconclusive as exc:
        record.verdict, record.reason = "inconclusive", exc.reason
        record.audits = _audits(case, ctx)
    else:
        record.audits = _audits(case, ctx)
        record.verdict, record.reason = decide(evidence, case.spec.pass_rule)
        record.statistic, record.value, record.effect = evidence.statistic, evidence.value, evidence.effect
        record.ci, record.p, record.n = list(evidence.ci) if evidence.ci else None, evidence.p, dict(evidence.n)
        record.null, record.seed, record.details = evidence.null, evidence.seed, dict(evidence.details)
    finally:
        record.seconds = round(time.perf_counter() - start, 3)
        record.cache = ctx.cache_since(cached)
    return record


def _audits(case: Case, ctx: RunContext) -> dict[str, dict]:
    """What each model of the case computes, how many of its KDs it learned (observed cells), and
    which genes and cell matrix it was fed."""
    return {name: ctx.audit(name).to_dict() | {"learnedness": _learnedness(ctx, name),
                                               "inputs": ctx.model(name).inputs} for name in case.models}


def _learnedness(ctx: RunContext, name: str) -> dict:
    table = ctx.learnedness(name)
    counts = table.counts()
    return {"counts": counts, "kds": len(table.kds), "observed": table.observed,
            "learned_fraction": counts["learned"] / max(len(table.kds), 1) if table.observed else None,
            "source": table.source}


def _plain(params: object) -> dict:
    """A params dataclass as a dict of its fields."""
    return asdict(params) if is_dataclass(params) else {}
