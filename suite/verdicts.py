"""What a case found (Evidence), what it means (the verdict), and the record of both.

Verdicts are pass / fail / inconclusive. A verdict maps to a pytest outcome:
pass -> passed; fail -> failed with the numbers; an expected fail -> xfail (and a pass
against that expectation -> strict XPASS, a failure); inconclusive -> skipped with the
reason. A case that raised before a verdict was reached is recorded as "error".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import ProbeError

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
    audits: dict[str, dict] = field(default_factory=dict)   # audit of each model the case used
    side: str | None = None        # "organized" / "routed": its probe's half of the dual-probe synthesis
    baseline: str | None = None    # the verdict of the same case in the baseline run, when one is given
    change: dict[str, Any] | None = None     # how it differs from the baseline (suite/baseline.py)
    tolerance: dict[str, float] = field(default_factory=dict)   # what counts as drift
    cache: dict[str, dict[str, int]] = field(default_factory=dict)   # per model: probe outputs reused / computed
    calibration: dict[str, dict] | None = None    # --calibrate: the case under each null (suite/calibration.py)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        return cls(**data)


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


def threshold_of(rule: PassRule) -> dict[str, float]:
    return {k: v for k, v in asdict(rule).items() if v is not None}


def _lt(p: float | None, bound: float) -> bool:
    return p is not None and p < bound


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}"


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: replace them with None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
