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

if TYPE_CHECKING:
    from .verdicts import CaseResult

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


def load_baseline(folder: Path) -> Baseline:
    document = json.loads((Path(folder) / "verdicts.json").read_text())
    models = document["run"].get("models", {})
    return Baseline(document["run"]["id"], Path(folder), {c["case_id"]: c for c in document["cases"]},
                    {name: m.get("fingerprint", "") for name, m in models.items()})


def compare(case: dict[str, Any], old: dict[str, Any] | None, tolerance: dict[str, float]) -> Change:
    if old is None or old["verdict"] == "error":
        return Change("new", {}, {})
    kept = {k: old.get(k) for k in ("verdict", "value", "effect", "ci", "p", "q")}
    if case["verdict"] != old["verdict"]:
        return Change("flip", kept, _moved(case, old, tolerance))
    moved = _moved(case, old, tolerance)
    return Change("drift" if moved else "steady", kept, moved)


def note_change(record: CaseResult, baseline: Baseline) -> None:
    """Fill a record's baseline verdict and its change since the baseline."""
    old = baseline.cases.get(record.case_id)
    record.baseline = old["verdict"] if old else None
    record.change = compare(record.to_dict(), old, record.tolerance).to_dict()


def against_baseline(baseline: Baseline, records: list[CaseResult], models: dict[str, dict]) -> dict[str, Any]:
    """The run's side of the comparison: which baseline, which models changed, which cases are gone.
    Records that errored before the test compared them are compared here."""
    for record in records:
        if record.change is None:
            note_change(record, baseline)
    current = {r.case_id for r in records}
    return {"id": baseline.run_id, "folder": str(baseline.folder),
            "fingerprint_changes": fingerprint_changes(baseline, models),
            "gone": sorted(set(baseline.cases) - current)}


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
