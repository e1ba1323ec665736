"""Comparing a run with an earlier one, case by case (--baseline).

flip    the verdict changed (pass -> fail, fail -> pass, anything <-> inconclusive): the case
        fails as a regression, with the old and new numbers in its message
drift   the verdict held but a metric moved beyond the hypothesis's `tolerance`
        (default {effect: 0.05}, absolute): reported, not failed
new     no such case in the baseline
steady  neither
A baseline case that errored is no reference: a case after it is `new`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import SpecError, repeated

if TYPE_CHECKING:
    pass

DEFAULT_TOLERANCE = {"effect": 0.05}
METRICS = ("value", "effect", "p")


@dataclass(frozen=True)
class Baseline:
    run_id: str
    folder: Path
    cases: dict[str, dict[str, Any]]
    fingerprints: dict[str, str]


@dataclass(frozen=True)
class Change:
    kind: str                                   # flip | drift | new | steady
    old: dict[str, Any]                         # the baseline's verdict, value, effect, ci, p, q
    moved: dict[str, list[float]]               # metric -> [old, new, tolerance], beyond tolerance only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VERDICTS = ("pass", "fail", "inconclusive", "error")


def load_baseline(folder: Path) -> Baseline:
    """The run record in `folder`, checked as far as comparing with it needs: a corrupt, truncated or
    foreign verdicts.json is a SpecError naming the file, before any case runs."""
    path = Path(folder) / "verdicts.json"
    hint = "point --baseline at a run folder this suite wrote (REPORT_DIR/runs/<run-id>), or run without it"
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SpecError(f"not a readable run record ({type(exc).__name__}: {exc})", file=str(path),
                        hint=hint) from None
    run = document.get("run") if isinstance(document, dict) else None
    cases = document.get("cases") if isinstance(document, dict) else None
    if not isinstance(run, dict) or not isinstance(run.get("id"), str) or not isinstance(cases, list):
        raise SpecError("not a run record of this suite (needs 'run' with an 'id', and a list of 'cases')",
                        file=str(path), hint=hint)
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("case_id"), str) \
                or case.get("verdict") not in VERDICTS:
            raise SpecError(f"case {i} has no case_id, or a verdict other than {', '.join(VERDICTS)}",
                            file=str(path), field=f"cases[{i}]", hint=hint)
    twice = repeated(c["case_id"] for c in cases)
    if twice:
        raise SpecError(f"case ids recorded twice: {', '.join(twice[:5])}", file=str(path), hint=hint)
    models = run.get("models") if isinstance(run.get("models"), dict) else {}
    return Baseline(run["id"], Path(folder), {c["case_id"]: c for c in cases},
                    {str(name): str(m.get("fingerprint", "")) for name, m in models.items() if isinstance(m, dict)})


def compare(case: dict[str, Any], old: dict[str, Any] | None, tolerance: dict[str, float]) -> Change:
    if old is None or old["verdict"] == "error":
        return Change("new", {}, {})
    kept = {k: old.get(k) for k in ("verdict", "value", "effect", "ci", "p", "q")}
    if case["verdict"] != old["verdict"]:
        return Change("flip", kept, _moved(case, old, tolerance))
    moved = _moved(case, old, tolerance)
    return Change("drift" if moved else "steady", kept, moved)


def change_since(case: dict[str, Any], baseline: Baseline) -> tuple[str | None, dict[str, Any]]:
    """(the baseline's verdict of this case or None, its change since the baseline as Change.to_dict())."""
    old = baseline.cases.get(case["case_id"])
    return (old["verdict"] if old else None), compare(case, old, case.get("tolerance") or {}).to_dict()


def against_baseline(baseline: Baseline, cases: list[dict[str, Any]], models: dict[str, dict]) -> dict[str, Any]:
    """The run's side of the comparison: which baseline, which models changed, which cases are gone.
    Cases that errored before the test compared them are compared here."""
    for case in cases:
        if case.get("change") is None:
            case["baseline"], case["change"] = change_since(case, baseline)
    return {"id": baseline.run_id, "folder": str(baseline.folder),
            "fingerprint_changes": fingerprint_changes(baseline, models),
            "gone": sorted(set(baseline.cases) - {c["case_id"] for c in cases})}


def regression_message(case: dict[str, Any], change: dict[str, Any], baseline_id: str) -> str:
    """Why a flipped case fails: old -> new verdict and numbers (`change` as Change.to_dict())."""
    old = change["old"]
    lines = [f"{case['case_id']}: regression since baseline {baseline_id}: verdict {old['verdict']} -> "
             f"{case['verdict']} ({case.get('reason') or 'no reason given'})"]
    for metric in METRICS:
        before, after = old.get(metric), case.get(metric)
        if before is not None or after is not None:
            lines.append(f"  {metric}: {_fmt(before)} -> {_fmt(after)}")
    return "\n".join(lines)


def fingerprint_changes(baseline: Baseline, models: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Models whose checkpoint differs from the baseline's: name -> [old, new] fingerprint."""
    return {name: [baseline.fingerprints[name], model.get("fingerprint", "")] for name, model in models.items()
            if name in baseline.fingerprints and baseline.fingerprints[name] != model.get("fingerprint", "")}


def _moved(case: dict[str, Any], old: dict[str, Any], tolerance: dict[str, float]) -> dict[str, list[float]]:
    moved = {}
    for metric, limit in tolerance.items():
        before, after = old.get(metric), case.get(metric)
        if _number(before) and _number(after) and abs(after - before) > limit:
            moved[metric] = [before, after, limit]
    return moved


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if _number(value) else "n/a"
