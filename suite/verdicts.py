"""What a case found (Evidence), what it means (its verdict), the record of both, and the one
place where a verdict becomes a pytest outcome.

    verdict        reached when                                  pytest outcome
    pass           every condition of the pass rule holds        passed (expected fail: XPASS(strict), a failure)
    fail           a condition does not hold                     failed with the claim and numbers
                                                                 (expected fail: xfailed; exploratory: its own
                                                                 status, never a failure)
    inconclusive   the check raised Inconclusive                 skipped with the reason
    error          the case raised before a verdict              failed with the error
    regression     the verdict differs from --baseline's         failed (Regression), even when a fail is expected

skeleton() is the record before the case runs (an error until a verdict replaces it); evaluate()
runs the case's check and decide() reads its pass rule; marks_for() and enforce() turn the
expectation and the verdict into pytest's terms; outcome_of() reads back the outcome pytest gave,
for the record.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any

import pytest

from core.errors import Inconclusive, ProbeError
from reports.labels import UNVERIFIED

from .baseline import change_since, regression_message

if TYPE_CHECKING:
    from .baseline import Baseline
    from .cases import Case
    from .session import RunContext

ALPHA = 0.05    # the run's one level: pass rules' default p, BH q in the synthesis, calibration's false-positive bar


@dataclass(frozen=True)
class PassRule:
    """All given conditions must hold for a pass. `effect` is the check's effect size."""

    p_below: float | None = 0.05
    effect_above: float | None = 0.0
    statistic_above: float | None = None
    statistic_below: float | None = None

    LIMITS = {"p_below": (0.0, 1.0)}


@dataclass(frozen=True)
class Evidence:
    """The numbers a check computed for one case."""

    statistic: str                 # name of `value`, e.g. "mean within-pathway cosine - mean all-pairs cosine"
    value: float                   # the observed statistic
    effect: float                  # the effect size the pass rule reads
    ci: tuple[float, float] | None # 95% CI of `effect` (None: a measurement without sampling error)
    p: float | None                # one-sided p of the check's test (None: no test)
    n: dict[str, int]              # sample sizes actually used
    null: str                      # what the null distribution was, in words
    seed: int
    details: dict[str, Any] = field(default_factory=dict)   # further numbers for the report
    conditions: tuple[tuple[bool, str], ...] = ()            # the check's own requirements, (holds, text)


@dataclass
class CaseResult:
    """One row of verdicts.json."""

    case_id: str
    hypothesis: str
    probe: str
    claim: str
    params: dict[str, Any]
    verdict: str                   # pass | fail | inconclusive | error
    reason: str
    expected: str | None
    statistic: str | None = None
    value: float | None = None
    effect: float | None = None
    ci: list[float] | None = None
    p: float | None = None
    q: float | None = None
    n: dict[str, int] = field(default_factory=dict)
    null: str | None = None
    seed: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None     # the pytest outcome, filled in from the test report
    seconds: float | None = None
    side: str | None = None        # "organized" / "routed": its probe's half of the dual-probe synthesis
    baseline: str | None = None    # the verdict of the same case in the baseline run, when one is given
    change: dict[str, Any] | None = None     # how it differs from the baseline (suite/baseline.py)
    tolerance: dict[str, float] = field(default_factory=dict)   # what counts as drift
    cache: dict[str, dict[str, int]] = field(default_factory=dict)   # per model: probe outputs reused / computed
    calibration: dict[str, dict] | None = None    # --calibrate: the case under each null (suite/calibration.py)
    outputs: dict[str, str] = field(default_factory=dict)   # per model: what the probes read, genes | embedding
    unverified: str | None = None  # a pass whose KDs were not judged on observed cells: why it is unverified

    def to_dict(self) -> dict[str, Any]:
        return finite(asdict(self))


class HypothesisFailed(AssertionError):
    """A case whose verdict is fail (the numbers are in the message)."""


class Regression(AssertionError):
    """A case whose verdict differs from the baseline run's (never an expected failure)."""


def skeleton(case: Case) -> CaseResult:
    """The record of a case before it ran: an error unless evaluation completes."""
    spec = case.spec
    params = {**case.params(), **(asdict(spec.params) if is_dataclass(spec.params) else {})}
    return CaseResult(case_id=case.case_id, hypothesis=spec.id, probe=spec.probe, claim=spec.claim,
                      params=params, verdict="error", reason="the case raised before reaching a verdict",
                      expected=case.expected.verdict if case.expected else None,
                      threshold=threshold_of(spec.pass_rule), side=spec.check.side, tolerance=dict(spec.tolerance))


def evaluate(case: Case, ctx: RunContext, record: CaseResult | None = None) -> CaseResult:
    """Fill `record` (or a fresh skeleton) with the case's evidence and verdict, the time it took and
    the probe outputs it reused or computed. Each model it used is audited on the way
    (RunContext.audit_record), so the audit's cost and errors are the case's."""
    record = record or skeleton(case)
    start, cached = time.perf_counter(), ctx.cache_snapshot()
    try:
        record.outputs = {name: ctx.model(name).output for name in case.models}
        require_kind(case, ctx)
        evidence = case.spec.check.run(case, ctx)
    except Inconclusive as exc:
        record.verdict, record.reason = "inconclusive", exc.reason
        _audit(case, ctx)
    else:
        _audit(case, ctx)
        record.verdict, record.reason = decide(evidence, case.spec.pass_rule)
        record.statistic, record.value, record.effect = evidence.statistic, evidence.value, evidence.effect
        record.ci, record.p, record.n = list(evidence.ci) if evidence.ci else None, evidence.p, dict(evidence.n)
        record.null, record.seed, record.details = evidence.null, evidence.seed, dict(evidence.details)
        _say_background(case, ctx, record)
        record.unverified = unverified(evidence) if record.verdict == "pass" else None
    finally:
        record.seconds = round(time.perf_counter() - start, 3)
        record.cache = ctx.cache_since(cached)
    return record


NEEDS = {
    "gene_inputs": (lambda model: model.input_genes is not None,
                    "it sets or differentiates the model's input genes, and model '{name}' {kind}: it has no "
                    "gene-level inputs"),
    "gene_outputs": (lambda model: model.output == "genes",
                     "it reads the panel's genes in the prediction, and model '{name}' {kind}: no genes; set "
                     "'output: genes' on it in the models registry if it has a gene decoder"),
}


def require_kind(case: Case, ctx: RunContext) -> None:
    """Inconclusive, with the reason, when a model of the case is of a kind the check cannot read
    (an SE-input model has no input genes; a model probed in embedding space has no output genes)."""
    check = case.spec.check
    needs = check.needs(case.spec.params) if callable(check.needs) else check.needs
    for name in case.models:
        model = ctx.model(name)
        for need in sorted(needs):
            holds, why = NEEDS[need]
            if not holds(model):
                raise Inconclusive(f"{check.name} does not apply: " + why.format(name=name, kind=model.kind))


def unverified(evidence: Evidence) -> str | None:
    """Why a pass of a KD-set test is not evidence yet, or None: without observed perturbed cells the
    suite cannot tell the KDs a model learned from those it collapsed onto one generic response, and
    any set of the latter looks coherent (suite/learnedness.py)."""
    learned = evidence.details.get("learned") or {}
    if learned.get("observed", True):
        return None
    return (f"{UNVERIFIED}: which KDs the model learned was not judged ({learned.get('source', 'no perturbed cells')});"
            " KDs a model did not learn share one generic response and look coherent. Give the model a "
            "'perturbed:' entry in the models registry to verify this pass")


def _say_background(case: Case, ctx: RunContext, record: CaseResult) -> None:
    """A case whose KDs came from the run's background sample says so on its card ("reduced work")
    and in the record (details.background, n.background_kds)."""
    found = [b for b in map(ctx.background, case.models) if b is not None] if case.spec.check.kd_background else []
    if found:
        record.details["reduced"] = [*record.details.get("reduced", []), found[0].text()]
        record.details["background"] = found[0].to_dict()
        record.n["background_kds"] = len(ctx.background_sample(case.models) or ())


def _audit(case: Case, ctx: RunContext) -> None:
    for name in case.models:
        ctx.audit_record(name)


def decide(evidence: Evidence, rule: PassRule) -> tuple[str, str]:
    """(verdict, reason): pass only if every condition of the rule holds. A NaN or infinite number
    is no verdict (it compares false with every threshold, so it would read as a fail): ProbeError."""
    _require_finite(evidence)
    checks = []
    if rule.p_below is not None:
        checks.append((evidence.p is not None and evidence.p < rule.p_below,
                       f"p = {_fmt(evidence.p)} {'<' if _lt(evidence.p, rule.p_below) else '>='} {rule.p_below}"))
    if rule.effect_above is not None:
        ok = evidence.effect > rule.effect_above
        checks.append((ok, f"effect = {_fmt(evidence.effect)} {'>' if ok else '<='} {rule.effect_above}"))
    if rule.statistic_above is not None:
        ok = evidence.value > rule.statistic_above
        relation = ">" if ok else "<="
        checks.append((ok, f"{evidence.statistic} = {_fmt(evidence.value)} {relation} {rule.statistic_above}"))
    if rule.statistic_below is not None:
        ok = evidence.value < rule.statistic_below
        relation = "<" if ok else ">="
        checks.append((ok, f"{evidence.statistic} = {_fmt(evidence.value)} {relation} {rule.statistic_below}"))
    checks.extend(evidence.conditions)
    verdict = "pass" if all(ok for ok, _ in checks) else "fail"
    return verdict, "; ".join(text for _, text in checks)


def _require_finite(evidence: Evidence) -> None:
    numbers = {"statistic": evidence.value, "effect": evidence.effect, "p": evidence.p,
               **({"CI low": evidence.ci[0], "CI high": evidence.ci[1]} if evidence.ci else {})}
    bad = [f"{name} = {value}" for name, value in numbers.items()
           if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value))]
    if bad:
        raise ProbeError(f"non-finite numbers where a verdict needs finite ones ({', '.join(bad)}; statistic: "
                         f"{evidence.statistic}); a probe output or the cells hold extreme values. No verdict given.")


def marks_for(case: Case, probe_mark: bool = True) -> list:
    """The pytest marks of a case: its probe's marker, and xfail(strict) when a fail is expected."""
    marks = [getattr(pytest.mark, case.spec.probe)] if probe_mark else []
    if case.expected and case.expected.verdict == "fail":
        reason = f"expected fail: {case.expected.reason}" if case.expected.reason else "expected fail"
        marks.append(pytest.mark.xfail(strict=True, raises=HypothesisFailed, reason=reason))
    return marks


def enforce(record: CaseResult, baseline: Baseline | None = None) -> None:
    """Turn a verdict, and a change since the baseline, into the pytest outcome."""
    if baseline is not None:
        record.baseline, record.change = change_since(record.to_dict(), baseline)
        if record.change["kind"] == "flip":
            raise Regression(regression_message(record.to_dict(), record.change, baseline.run_id))
    if record.verdict == "inconclusive":
        pytest.skip(f"inconclusive: {record.reason}")
    if record.verdict == "fail" and record.expected != "exploratory":   # exploratory: reported, not asserted
        raise HypothesisFailed(failure_text(record))


def failure_text(r: CaseResult) -> str:
    ci = f"[{r.ci[0]:.3g}, {r.ci[1]:.3g}]" if r.ci and None not in r.ci else "n/a"
    p = f"{r.p:.4g}" if r.p is not None else "n/a"
    return (f"{r.case_id}: verdict fail ({r.reason})\n  claim: {r.claim}\n  {r.statistic} = {r.value:.4g}; "
            f"effect {r.effect:.4g}, 95% CI {ci}; p = {p}\n  n = {r.n}; null: {r.null}")


def outcome_of(report: pytest.TestReport) -> str:
    """The outcome pytest gave a case, in the record's words."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and "XPASS(strict)" in (report.longreprtext or ""):
        return "xpassed-strict"
    return report.outcome


def error_message(report: pytest.TestReport) -> str:
    """Why a case that raised before its verdict failed: the exception's own line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or report.longreprtext.strip().splitlines()[-1]
    return message[:2000]


def threshold_of(rule: PassRule) -> dict[str, float]:
    return {k: v for k, v in asdict(rule).items() if v is not None}


def _lt(p: float | None, bound: float) -> bool:
    return p is not None and p < bound


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}"


def finite(value: Any) -> Any:
    """JSON has no NaN/inf: replace them with None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
