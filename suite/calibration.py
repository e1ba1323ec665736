"""The suite's calibration on the user's own models (`pytest --calibrate`).

Every case whose probe is a statistical test runs again under nulls where its hypothesis is
false by construction, with the same parameters, pass rule and models:

  label_permutation  the names of the case's models are shuffled (KD-and-gene names among
                     themselves, KD-only names among themselves, ...), so every panel becomes a
                     random set of the same size and kind; --null-draws relabelings per case.
                     Only for cases with a pathway: a whole-model hypothesis has no labels.
  reinitialised      the case's models are replaced by copies with re-initialised weights
                     (fixtures/reinit.py), --null-inits copies per model, each with its own seed.

A hypothesis's empirical false-positive rate is the share of its null runs that pass; with a
Clopper-Pearson 95% interval it is compared with the suite's alpha (0.05). Runs of one hypothesis
share models, so they are not independent and the interval is optimistic. Null runs skip the
bootstrap CI: no pass rule reads it.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, is_dataclass, replace

import numpy as np
from scipy.stats import binomtest

from .cases import Case
from .panels import Panel
from .session import RunContext, reinitialised_name
from .verdicts import ALPHA, evaluate

NULL_BOOTSTRAP = 0     # no pass rule reads the bootstrap CI


@dataclass(frozen=True)
class Calibration:
    """How many null runs each case gets."""

    draws: int = 10      # label permutations per case with a pathway
    inits: int = 1       # re-initialised copies per model

    def run(self, case: Case, ctx: RunContext) -> dict[str, dict] | None:
        """{null kind: tally of that null's runs} for one case, or None for a case without a test."""
        if not case.spec.check.calibrated:
            return None
        tallies: dict[str, dict] = {}
        for kind, null_case in self.null_cases(case, ctx):
            tally = tallies.setdefault(kind, {"runs": 0, "passes": 0, "fails": 0, "inconclusive": 0, "errors": 0,
                                              "p": [], "note": None, "seconds": 0.0})
            start = time.perf_counter()
            try:
                record = evaluate(null_case, ctx)
            except Exception as exc:    # counted and shown, never taken for a fail
                _count(tally, "error", None, f"{type(exc).__name__}: {exc}")
            else:
                _count(tally, record.verdict, record.p, record.reason)
            tally["seconds"] = round(tally["seconds"] + time.perf_counter() - start, 3)
        return tallies

    def null_cases(self, case: Case, ctx: RunContext) -> Iterator[tuple[str, Case]]:
        spec = replace(case.spec, params=_quick(case.spec.params))
        if "pathway" in case.axes:
            models = [ctx.model(name) for name in case.models]
            for draw in range(self.draws):
                rng = np.random.default_rng([zlib.crc32(case.case_id.encode()), draw])
                mapping = shuffled_names([set(m.kd_names) for m in models], [set(m.gene_names) for m in models], rng)
                panels = relabeled(spec.panels, mapping)
                yield "label_permutation", Case(f"{case.case_id}~perm{draw}", replace(spec, panels=panels),
                                                case.axes, None)
        for copy in range(self.inits):
            axes = {k: _renamed(v, copy) if k in ("model", "model_pair") else v for k, v in case.axes.items()}
            yield "reinitialised", Case(f"{case.case_id}~reinit{copy}", spec, axes, None)


def shuffled_names(kd_sets: Sequence[set[str]], gene_sets: Sequence[set[str]],
                   rng: np.random.Generator) -> dict[str, str]:
    """A random relabeling of every name the models know that keeps each name's role: whether it
    is a KD of every model, a gene of every model, and a KD of any model."""
    groups: dict[tuple[bool, bool, bool], list[str]] = defaultdict(list)
    for name in sorted(set().union(*kd_sets, *gene_sets)):
        role = (all(name in s for s in kd_sets), all(name in s for s in gene_sets), any(name in s for s in kd_sets))
        groups[role].append(name)
    mapping: dict[str, str] = {}
    for names in groups.values():
        mapping.update(zip(names, rng.permutation(names).tolist(), strict=True))
    return mapping


def relabeled(panels: dict[str, Panel], mapping: dict[str, str]) -> dict[str, Panel]:
    """Every panel's KDs and genes renamed; regulators and targets (what a probe reads) kept."""
    def swap(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(mapping.get(n, n) for n in names)

    return {name: replace(p, kds=swap(p.kds), genes=swap(p.genes), unrelated_kds=swap(p.unrelated_kds))
            for name, p in panels.items()}


def summarize(cases: list[dict], alpha: float = ALPHA) -> list[dict]:
    """One row per hypothesis and null: null runs, passes, empirical FPR with its 95% interval, status."""
    pooled: dict[tuple[str, str], dict] = {}
    for case in cases:
        for kind, tally in (case.get("calibration") or {}).items():
            row = pooled.setdefault((case["hypothesis"], kind), {
                "hypothesis": case["hypothesis"], "probe": case["probe"], "null": kind, "cases": 0, "runs": 0,
                "passes": 0, "inconclusive": 0, "errors": 0, "real_passes": 0})
            row["cases"] += 1
            row["real_passes"] += case["verdict"] == "pass"
            for key in ("runs", "passes", "inconclusive", "errors"):
                row[key] += tally[key]
    return [{**row, **false_positive_rate(row["passes"], row["runs"], alpha)} for row in pooled.values()]


def false_positive_rate(passes: int, runs: int, alpha: float = ALPHA) -> dict:
    """The share of null runs that passed, its Clopper-Pearson 95% interval, and what it says."""
    if runs == 0:
        return {"fpr": None, "ci": None, "alpha": alpha, "status": "no null run reached a verdict"}
    ci = binomtest(passes, runs).proportion_ci(method="exact")
    status = "above alpha" if ci.low > alpha else "within alpha"
    return {"fpr": passes / runs, "ci": [float(ci.low), float(ci.high)], "alpha": alpha, "status": status}


def _count(tally: dict, verdict: str, p: float | None, reason: str) -> None:
    if verdict in ("pass", "fail"):
        tally["runs"] += 1
        tally["passes" if verdict == "pass" else "fails"] += 1
        tally["p"].append(None if p is None else round(p, 4))
    else:
        tally["inconclusive" if verdict == "inconclusive" else "errors"] += 1
        tally["note"] = tally["note"] or f"{verdict}: {reason}"[:300]


def _quick(params: object) -> object:
    if is_dataclass(params) and hasattr(params, "n_bootstrap"):
        return replace(params, n_bootstrap=NULL_BOOTSTRAP)
    return params


def _renamed(value: str | tuple[str, ...], copy: int) -> str | tuple[str, ...]:
    if isinstance(value, tuple):
        return tuple(reinitialised_name(v, copy) for v in value)
    return reinitialised_name(value, copy)
