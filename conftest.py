"""pytest glue: YAML hypotheses -> parametrized cases, and the session fixtures they use.

Options, the run record and the report hook live in suite/plugin.py (a pytest plugin
registered by the package's `pytest11` entry point).
"""

import pytest

from core.errors import SuiteError
from fixtures.device import resolve_device
from fixtures.registry import load_registry
from suite.baseline import Baseline
from suite.cache import ArrayCache
from suite.calibration import Calibration
from suite.cases import Case
from suite.keeper import RECORD
from suite.plugin import STATE, collect_cases, terminal_progress
from suite.runinfo import versions
from suite.session import RunContext
from suite.verdicts import CaseResult, marks_for, skeleton


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    try:
        cases, problem = collect_cases(metafunc.config.stash[STATE]), None
    except SuiteError as exc:
        cases, problem = [], str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    metafunc.parametrize("case", [pytest.param(c, id=c.case_id, marks=marks_for(c)) for c in cases])


@pytest.fixture(scope="session")
def suite_run(pytestconfig: pytest.Config) -> RunContext:
    """The run's shared state: each model loaded once, on the chosen device."""
    state = pytestconfig.stash[STATE]
    try:
        device = resolve_device(state.device_choice, getattr(pytestconfig, "workerinput", {}).get("workerid"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return RunContext(state.registry or load_registry(state.models_path), device, state.cell_orderings,
                      ArrayCache(state.cache_dir, salt=versions()), terminal_progress(pytestconfig),
                      programs=state.programs, background=state.background, needed=state.needed)


@pytest.fixture(scope="session")
def baseline(pytestconfig: pytest.Config) -> Baseline | None:
    """The earlier run given by --baseline, or None."""
    return pytestconfig.stash[STATE].baseline


@pytest.fixture(scope="session")
def calibration(pytestconfig: pytest.Config) -> Calibration | None:
    """The null runs --calibrate asks for, or None."""
    return pytestconfig.stash[STATE].calibration


@pytest.fixture
def case_record(request: pytest.FixtureRequest, case: Case) -> CaseResult:
    """The case's record; it reaches the report even when the case raises."""
    record = skeleton(case)
    request.node.stash[RECORD] = record
    return record
