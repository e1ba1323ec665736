"""The suite's pytest plugin (loaded through the `pytest11` entry point).

Options: --models, --hypotheses, --report-dir, --device, --cell-orderings, --baseline,
--update-baseline, --cache-dir, --no-cache. conftest.py turns the YAML hypotheses into
`test_hypothesis` cases with pytest_generate_tests (so fixtures, -k/-m, ids and xdist keep
working). Each case's record rides on its test report (user_properties, as JSON, so xdist
can carry it); the RecordKeeper in the controlling process collects them and publishes the
run (reports/history.py) at the end.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fixtures.arc_state import declared_backbone
from fixtures.registry import ModelEntry, load_registry
from reports import history

from .baseline import Baseline, compare, fingerprint_changes, load_baseline, regression_message
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


class Regression(AssertionError):
    """A case whose verdict differs from the baseline run's (never an expected failure)."""


@dataclass
class SuiteState:
    models_path: Path
    hypotheses_dir: Path
    report_dir: Path
    device_choice: str
    cell_orderings: int = 8
    baseline: Baseline | None = None
    update_baseline: bool = False
    cache_dir: Path | None = None
    run_id: str = field(default_factory=new_run_id)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    registry: dict[str, ModelEntry] | None = None


STATE = pytest.StashKey[SuiteState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("st-hypotheses", "ST model hypothesis suite")
    group.addoption("--models", default=str(ROOT / "fixtures/demo/models.yaml"),
                    help="models registry YAML (default: the bundled demo)")
    group.addoption("--hypotheses", default=str(ROOT / "hypotheses"), help="folder of hypothesis YAML files")
    group.addoption("--report-dir", default=str(ROOT / "reports"),
                    help="where runs are kept: each run in REPORT_DIR/runs/<run-id>/, REPORT_DIR/latest pointing at "
                         "the newest (default: reports)")
    group.addoption("--baseline", default=None, metavar="latest|baseline|RUN-ID|PATH",
                    help="compare every case with an earlier run: a verdict that changed fails as a regression, a "
                         "metric that moved beyond the hypothesis's tolerance is reported as drift")
    group.addoption("--update-baseline", action="store_true",
                    help="promote this run to REPORT_DIR/baseline once it is written (nothing promotes itself)")
    group.addoption("--cache-dir", default=None,
                    help="disk cache of probe outputs, keyed by model fingerprint and parameters "
                         "(default: pytest's cache folder, .pytest_cache/d/st-hypotheses)")
    group.addoption("--no-cache", action="store_true", help="compute every probe output afresh and store none")
    group.addoption("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    group.addoption("--cell-orderings", type=int, default=8,
                    help="random cell orderings that probes average over for models whose outputs depend on "
                         "cell order (causal attention); a hypothesis's cell_orderings overrides it (default: 8)")


PATH_OPTIONS = ("--models", "--hypotheses", "--report-dir", "--cache-dir")


def pytest_configure(config: pytest.Config) -> None:
    _refuse_misread_paths(config)
    state = SuiteState(Path(config.getoption("--models")), Path(config.getoption("--hypotheses")),
                       Path(config.getoption("--report-dir")), config.getoption("--device"),
                       max(1, config.getoption("--cell-orderings")),
                       _baseline(config), config.getoption("--update-baseline"), _cache_dir(config))
    config.stash[STATE] = state
    config.pluginmanager.register(RecordKeeper(state), "st-record-keeper")
    for name, check in CHECKS.items():
        config.addinivalue_line("markers", f"{name}: hypotheses using the {name} probe ({check.summary})")


def _baseline(config: pytest.Config) -> Baseline | None:
    which = config.getoption("--baseline")
    if which is None:
        return None
    try:
        return load_baseline(history.resolve(Path(config.getoption("--report-dir")), which))
    except FileNotFoundError as exc:
        raise pytest.UsageError(str(exc)) from None


def _cache_dir(config: pytest.Config) -> Path | None:
    if config.getoption("--no-cache"):
        return None
    if config.getoption("--cache-dir"):
        return Path(config.getoption("--cache-dir"))
    cache = getattr(config, "cache", None)     # None with -p no:cacheprovider
    return cache.mkdir("st-hypotheses") if cache is not None else None


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


def enforce(record: CaseResult, baseline: Baseline | None = None) -> None:
    """Turn a verdict, and a change since the baseline, into the pytest outcome."""
    if baseline is not None:
        note_change(record, baseline)
        if record.change["kind"] == "flip":
            raise Regression(regression_message(record.to_dict(), record.change, baseline.run_id))
    if record.verdict == "inconclusive":
        pytest.skip(f"inconclusive: {record.reason}")
    if record.verdict == "fail":
        raise HypothesisFailed(failure_text(record))


def note_change(record: CaseResult, baseline: Baseline) -> None:
    old = baseline.cases.get(record.case_id)
    record.baseline = old["verdict"] if old else None
    record.change = compare(record.to_dict(), old, record.tolerance).to_dict()


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
        self.run: dict[str, Any] = {}

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
        if self.state.baseline is not None:
            run["baseline"] = self._against_baseline(records, run["models"])
        run["cache"] = _cache_totals(records)
        run["cache_dir"] = str(self.state.cache_dir) if self.state.cache_dir else None
        cases = [_without_audits(r.to_dict()) for r in records]
        folder = history.publish(self.state.report_dir, self.state.run_id,
                                 lambda out: write_run(out, run, cases, synthesize(cases)))
        if self.state.update_baseline:
            history.promote(self.state.report_dir, folder)
        self.written = {kind: folder / name for kind, name in
                        (("html", "verdict.html"), ("json", "verdicts.json"), ("folder", "."))}
        self.run = run

    def _against_baseline(self, records: list[CaseResult], models: dict[str, dict]) -> dict[str, Any]:
        """The run's side of the comparison: which baseline, which models changed, which cases are gone.
        Cases that errored before enforce() get their change here."""
        baseline = self.state.baseline
        for record in records:
            if record.change is None:
                note_change(record, baseline)
        current = {r.case_id for r in records}
        return {"id": baseline.run_id, "folder": str(baseline.folder),
                "fingerprint_changes": fingerprint_changes(baseline, models),
                "gone": sorted(set(baseline.cases) - current)}

    def _registry(self) -> dict[str, ModelEntry]:
        """Under xdist the controller collects nothing; read the registry here too."""
        try:
            return load_registry(self.state.models_path)
        except SuiteError:
            return {}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.written:
            return
        terminalreporter.write_sep("-", "verdict report")
        terminalreporter.write_line(f"{self.written['html']}  (with verdicts.json, verdicts.csv and junit.xml)")
        if self.state.update_baseline:
            terminalreporter.write_line(f"promoted to the baseline: {self.state.report_dir / 'baseline'}")
        against = self.run.get("baseline")
        if against:
            kinds = Counter((r.change or {}).get("kind") for r in self.records.values())
            changed = ", ".join(against["fingerprint_changes"]) or "none"
            terminalreporter.write_line(
                f"since baseline {against['id']}: {kinds['flip']} regression(s), {kinds['drift']} drift(s), "
                f"{kinds['new']} new, {len(against['gone'])} gone; models with a new fingerprint: {changed}")


def _cache_totals(records: list[CaseResult]) -> dict[str, dict[str, int]]:
    """Per model, the probe outputs the run took from the disk cache and those it computed."""
    totals: dict[str, Counter] = {}
    for record in records:
        for model, counts in record.cache.items():
            totals.setdefault(model, Counter()).update(counts)
    return {model: {"reused": c["reused"], "computed": c["computed"]} for model, c in totals.items()}


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
