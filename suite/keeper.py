"""The run's record keeper: collects each case's record from its test report (also from xdist
workers) and, at the end of the session, publishes the run (reports/history.py) and says where.

A run whose record cannot be written at all (a full disk, a folder that vanished) exits with
RECORD_LOST, a code of its own beside pytest's 0-5, so that CI can tell a lost run from one whose
hypotheses failed (exit 1); the terminal says why."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from core.errors import SuiteError
from fixtures.registry import ModelEntry, load_registry
from reports import history
from reports.labels import UNVERIFIED as UNVERIFIED_TEXT
from reports.labels import verdict_label

from .baseline import against_baseline
from .calibration import ALPHA, summarize
from .families import CHECKS
from .runinfo import run_info
from .stats import benjamini_hochberg
from .synthesis import synthesize
from .verdicts import CaseResult, error_message, finite, outcome_of

if TYPE_CHECKING:
    from .plugin import SuiteState

RECORD_LOST = 6     # exit code: the cases ran but the run's record could not be written
PROPERTY = "st_case"           # a case's record, as JSON, on its test report (xdist carries it)
AUDITS = "st_audits"           # the audit records of the case's models, beside it (RunContext.audit_record)
EXPLORATORY = "st_exploratory"
UNVERIFIED = "st_unverified"
RECORD = pytest.StashKey[CaseResult]()


class RecordKeeper:
    """Collects case records from test reports and writes the run record at the end."""

    def __init__(self, state: SuiteState) -> None:
        self.state = state
        self.records: dict[str, dict[str, Any]] = {}      # case_id -> the case's record (verdicts.json row)
        self.audits: dict[str, dict[str, Any]] = {}       # model -> its audit record
        self.html: Path | None = None
        self.run: dict[str, Any] = {}
        self.lost: str | None = None     # why the record could not be written

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any):
        report = yield
        record = item.stash.get(RECORD, None)
        if record is not None:
            report.user_properties.append((PROPERTY, json.dumps(record.to_dict())))
            funcargs = getattr(item, "funcargs", {})
            run, case = funcargs.get("suite_run"), funcargs.get("case")
            if run is not None and case is not None:
                report.user_properties.append((AUDITS, json.dumps(finite(run.audit_records(case.models)))))
            if record.expected == "exploratory" and report.when == "call" and report.passed:
                report.user_properties.append((EXPLORATORY, verdict_label(record.to_dict())))
            elif record.unverified and report.when == "call" and report.passed:
                report.user_properties.append((UNVERIFIED, record.unverified))
        return report

    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config):
        """A case with no known answer is neither a pass nor an expected failure: it gets its own
        status (counted as 'exploratory' in the summary line) and never fails the run."""
        properties = dict(getattr(report, "user_properties", ()))
        if EXPLORATORY in properties:
            return "exploratory", "e", (f"EXPLORATORY ({properties[EXPLORATORY]})", {"cyan": True})
        if UNVERIFIED in properties:       # a pass that observed cells would have to confirm: never a plain pass
            return "unverified", "u", (f"PASSED ({UNVERIFIED_TEXT})", {"yellow": True})
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = [v for k, v in report.user_properties if k == PROPERTY]
        if not payload or (report.when != "call" and report.passed):
            return
        record = json.loads(payload[-1])
        keys = {k for k, _ in report.user_properties}
        record["outcome"] = "exploratory" if EXPLORATORY in keys else "unverified" if UNVERIFIED in keys \
            else outcome_of(report)
        if record["verdict"] == "error" and report.failed:
            record["reason"] = error_message(report)
        self.records.setdefault(record["case_id"], record)
        for audits in (json.loads(v) for k, v in report.user_properties if k == AUDITS):
            for name, audit in audits.items():
                self.audits.setdefault(name, audit)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput") or not self.records:
            return
        try:
            self._publish()
        except Exception as exc:    # noqa: BLE001 - whatever it was, say so and exit with RECORD_LOST
            self.lost = f"{type(exc).__name__}: {exc}"
            session.exitstatus = RECORD_LOST

    def _publish(self) -> None:
        from reports.record import write_run

        cases = list(self.records.values())
        for case, q in zip(cases, benjamini_hochberg([c["p"] for c in cases]), strict=True):
            case["q"] = q
        run = run_info(self.state.run_id, self.state.started, self.state.device_choice,
                       self.state.models_path, self.state.registry or self._registry())
        for name, audit in self.audits.items():
            run["models"].setdefault(name, {})["audit"] = audit
        if self.state.baseline is not None:
            run["baseline"] = against_baseline(self.state.baseline, cases, run["models"])
        run["cache"] = _cache_totals(cases)
        if self.state.shard is not None:
            run["shard"] = {"index": self.state.shard.index, "count": self.state.shard.count,
                            "cases": self.state.run_cases or []}
        run["cache_dir"] = str(self.state.cache_dir) if self.state.cache_dir else None
        if self.state.calibration is not None:
            run["calibration"] = {**asdict(self.state.calibration), "alpha": ALPHA, "rows": summarize(cases)}
        try:
            synthesis = synthesize(cases)
        except Exception as exc:    # noqa: BLE001 - the cases' record matters more than the grid drawn from them
            synthesis, run["synthesis_error"] = None, f"{type(exc).__name__}: {exc}"
        folder = history.publish(self.state.report_dir, self.state.run_id,
                                 lambda out: write_run(out, run, cases, synthesis, CHECKS.cards()))
        if self.state.update_baseline:
            history.promote(self.state.report_dir, folder)
        self.html = folder / "verdict.html"
        self.run = run

    def _registry(self) -> dict[str, ModelEntry]:
        """Under xdist the controller collects nothing; read the registry here too."""
        try:
            return load_registry(self.state.models_path)
        except SuiteError:
            return {}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lost is not None:
            terminalreporter.write_sep("!", "run record NOT written", red=True)
            terminalreporter.write_line(f"{len(self.records)} case(s) ran but no record of them was kept under "
                                        f"{self.state.report_dir}: {self.lost}")
            terminalreporter.write_line(f"exit code {RECORD_LOST}: fix the cause above and run again")
            return
        if self.html is None:
            return
        terminalreporter.write_sep("-", "verdict report")
        terminalreporter.write_line(f"{self.html}  (with verdicts.json, verdicts.csv and junit.xml)")
        if self.state.update_baseline:
            terminalreporter.write_line(f"promoted to the baseline: {self.state.report_dir / 'baseline'}")
        against = self.run.get("baseline")
        if against:
            kinds = Counter((c.get("change") or {}).get("kind") for c in self.records.values())
            changed = ", ".join(against["fingerprint_changes"]) or "none"
            terminalreporter.write_line(
                f"since baseline {against['id']}: {kinds['flip']} regression(s), {kinds['drift']} drift(s), "
                f"{kinds['new']} new, {len(against['gone'])} gone; models with a new fingerprint: {changed}")
        if "calibration" in self.run:
            for line in calibration_lines(self.run["calibration"]):
                terminalreporter.write_line(line)
        for line in unverified_lines(list(self.records.values())):
            terminalreporter.write_line(line, yellow=True)


def unverified_lines(cases: list[dict[str, Any]]) -> list[str]:
    """The terminal's word on passes that observed cells would have to confirm, by model."""
    found = [c for c in cases if c["verdict"] == "pass" and c.get("unverified")]
    if not found:
        return []
    models = sorted({m for c in found for m in (c["params"].get("model") or c["params"].get("model_pair") or
                                                "").split("-vs-") if m})
    return [f"{len(found)} pass(es) unverified (no observed cells for {', '.join(models)}): which KDs a model "
            "learned was not judged, and KDs it did not learn look coherent together. Give those models a "
            "'perturbed:' entry in the models registry; the report marks each such case"]


def calibration_lines(calibration: dict) -> list[str]:
    """The terminal's calibration summary: every hypothesis whose null passes exceed alpha, by name."""
    rows = calibration["rows"]
    above = [r for r in rows if r["status"] == "above alpha"]
    lines = [f"calibration: {len(rows)} hypothesis x null rows, {len(above)} with a false-positive rate above "
             f"alpha = {calibration['alpha']}"]
    lines += [f"  {r['hypothesis']} under {r['null']}: {r['passes']}/{r['runs']} null runs pass "
              f"(95% CI {r['ci'][0]:.2f}-{r['ci'][1]:.2f})" for r in above]
    lines += [f"  {r['hypothesis']} under {r['null']}: {r['errors']} null run(s) raised (see the report)"
              for r in rows if r["errors"]]
    return lines


def _cache_totals(cases: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per model, the probe outputs the run took from the disk cache and those it computed."""
    totals: dict[str, Counter] = {}
    for case in cases:
        for model, counts in (case.get("cache") or {}).items():
            totals.setdefault(model, Counter()).update(counts)
    return {model: {"reused": c["reused"], "computed": c["computed"]} for model, c in totals.items()}
