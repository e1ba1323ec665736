"""The suite's pytest plugin (loaded through the `pytest11` entry point).

Options: --models, --hypotheses, --report-dir, --device. conftest.py turns the YAML
hypotheses into `test_hypothesis` cases with pytest_generate_tests (so fixtures, -k/-m,
ids and xdist keep working). Each case's record rides on its test report
(user_properties, as JSON, so xdist can carry it); the RecordKeeper in the controlling
process collects them and writes the run record at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fixtures.arc_state import declared_backbone
from fixtures.registry import ModelEntry, load_registry

from .cases import Case, ModelInfo, expand_all
from .checks import CHECKS
from .errors import SuiteError
from .runinfo import new_run_id, run_info
from .spec import load_spec_dir
from .stats import benjamini_hochberg
from .synthesis import synthesize
from .verdicts import CaseResult

ROOT = Path(__file__).resolve().parent.parent
PROPERTY = "st_case"
RECORD = pytest.StashKey[CaseResult]()


class HypothesisFailed(AssertionError):
    """A case whose verdict is fail (the numbers are in the message)."""


@dataclass
class SuiteState:
    models_path: Path
    hypotheses_dir: Path
    report_dir: Path
    device_choice: str
    cell_orderings: int = 8
    run_id: str = field(default_factory=new_run_id)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    registry: dict[str, ModelEntry] | None = None


STATE = pytest.StashKey[SuiteState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("st-hypotheses", "ST model hypothesis suite")
    group.addoption("--models", default=str(ROOT / "fixtures/demo/models.yaml"),
                    help="models registry YAML (default: the bundled demo)")
    group.addoption("--hypotheses", default=str(ROOT / "hypotheses"), help="folder of hypothesis YAML files")
    group.addoption("--report-dir", default=str(ROOT / "reports/latest"),
                    help="where verdict.html, verdicts.json and verdicts.csv go (default: reports/latest)")
    group.addoption("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    group.addoption("--cell-orderings", type=int, default=8,
                    help="random cell orderings that probes average over for models whose outputs depend on "
                         "cell order (causal attention); a hypothesis's cell_orderings overrides it (default: 8)")


PATH_OPTIONS = ("--models", "--hypotheses", "--report-dir")


def pytest_configure(config: pytest.Config) -> None:
    _refuse_misread_paths(config)
    state = SuiteState(Path(config.getoption("--models")), Path(config.getoption("--hypotheses")),
                       Path(config.getoption("--report-dir")), config.getoption("--device"),
                       max(1, config.getoption("--cell-orderings")))
    config.stash[STATE] = state
    config.pluginmanager.register(RecordKeeper(state), "st-record-keeper")
    for name, check in CHECKS.items():
        config.addinivalue_line("markers", f"{name}: hypotheses using the {name} probe ({check.summary})")


def _refuse_misread_paths(config: pytest.Config) -> None:
    """pytest settles its rootdir before plugin options exist, so in `--models /x/m.yaml` it takes
    /x/m.yaml for a test path, roots the run at /x and loses pytest.ini. Say so instead."""
    ours = ROOT / "pytest.ini"
    if config.inipath is not None and Path(config.inipath).resolve() == ours:
        return
    args = list(config.invocation_params.args)
    pairs = zip(args, args[1:] + [""], strict=True)
    spaced = [a for a, value in pairs if a in PATH_OPTIONS and value and not value.startswith("-")]
    if spaced and ours.exists():
        raise pytest.UsageError(f"write {spaced[0]}=PATH (with '=') when the path lies outside {ROOT}: with a space, "
                                "pytest reads the path as a test location and ignores the suite's pytest.ini")


def collect_cases(state: SuiteState) -> list[Case]:
    state.registry = load_registry(state.models_path)
    specs = load_spec_dir(state.hypotheses_dir)
    infos = [ModelInfo(e.name, e.cell_line, e.split, declared_backbone(e)) for e in state.registry.values()]
    cases = expand_all(specs, infos)
    if not cases:
        raise SuiteError(f"no hypotheses collected from {state.hypotheses_dir}: add a hypothesis *.yaml file "
                         "there, or point --hypotheses at the folder that has them")
    return cases


def marks_for(case: Case) -> list:
    marks = [getattr(pytest.mark, case.spec.probe)]
    if case.expected and case.expected.verdict in ("fail", "either"):
        verdict = case.expected.verdict
        reason = f"expected {verdict}: {case.expected.reason}" if case.expected.reason else f"expected {verdict}"
        marks.append(pytest.mark.xfail(strict=verdict == "fail", raises=HypothesisFailed, reason=reason))
    return marks


def enforce(record: CaseResult) -> None:
    """Turn a verdict into the pytest outcome."""
    if record.verdict == "inconclusive":
        pytest.skip(f"inconclusive: {record.reason}")
    if record.verdict == "fail":
        raise HypothesisFailed(failure_text(record))


def failure_text(r: CaseResult) -> str:
    ci = f"[{r.ci[0]:.3g}, {r.ci[1]:.3g}]" if r.ci and None not in r.ci else "n/a"
    p = f"{r.p:.4g}" if r.p is not None else "n/a"
    return (f"{r.case_id}: verdict fail ({r.reason})\n  claim: {r.claim}\n  {r.statistic} = {r.value:.4g}; "
            f"effect {r.effect:.4g}, 95% CI {ci}; p = {p}\n  n = {r.n}; null: {r.null}")


class RecordKeeper:
    """Collects case records from test reports and writes the run record at the end."""

    def __init__(self, state: SuiteState) -> None:
        self.state = state
        self.records: dict[str, CaseResult] = {}
        self.written: dict[str, Path] | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any):
        report = yield
        record = item.stash.get(RECORD, None)
        if record is not None:
            report.user_properties.append((PROPERTY, json.dumps(record.to_dict())))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = [v for k, v in report.user_properties if k == PROPERTY]
        if not payload or (report.when != "call" and report.passed):
            return
        record = CaseResult.from_dict(json.loads(payload[-1]))
        record.outcome = _outcome(report)
        if record.verdict == "error" and report.failed:
            record.reason = _error_message(report)
        self.records.setdefault(record.case_id, record)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput") or not self.records:
            return
        from reports.record import write_run

        records = list(self.records.values())
        for record, q in zip(records, benjamini_hochberg([r.p for r in records]), strict=True):
            record.q = q
        run = run_info(self.state.run_id, self.state.started, self.state.device_choice,
                       self.state.models_path, self.state.registry or self._registry())
        for record in records:   # each model's audit travels with the cases that used it
            for name, audit in record.audits.items():
                run["models"].setdefault(name, {}).setdefault("audit", audit)
        cases = [_without_audits(r.to_dict()) for r in records]
        self.written = write_run(self.state.report_dir, run, cases, synthesize(cases))

    def _registry(self) -> dict[str, ModelEntry]:
        """Under xdist the controller collects nothing; read the registry here too."""
        try:
            return load_registry(self.state.models_path)
        except SuiteError:
            return {}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.written:
            terminalreporter.write_sep("-", "verdict report")
            terminalreporter.write_line(f"{self.written['html']}  (with verdicts.json, verdicts.csv and junit.xml)")


def _without_audits(case: dict) -> dict:
    return {k: v for k, v in case.items() if k != "audits"}


def _error_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or report.longreprtext.strip().splitlines()[-1]
    return message[:2000]


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and "XPASS(strict)" in (report.longreprtext or ""):
        return "xpassed-strict"
    return report.outcome
