"""The suite's pytest plugin (loaded through the `pytest11` entry point).

Options: --models, --hypotheses, --report-dir, --device, --threads, --cell-orderings, --background-kds, --baseline,
--update-baseline, --cache-dir, --no-cache, --calibrate (with --null-draws, --null-inits), --shard
(suite/shard.py: one part of the cases, for runs over several machines); the ini
option probe_families names further probe family modules (suite/families.py), registered at start.
conftest.py turns the YAML hypotheses into `test_hypothesis` cases with
pytest_generate_tests (so fixtures, -k/-m, ids and xdist keep working). Each case's record
rides on its test report (user_properties, as JSON, so xdist can carry it); the
RecordKeeper (keeper.py) in the controlling process collects them and publishes
the run (reports/history.py) at the end. What a verdict means for pytest is decided in
suite/verdicts.py.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import SuiteError
from fixtures.arc_state import declared_backbone
from fixtures.device import resolve_device, size_threads
from fixtures.registry import ModelEntry, load_registry, registry_expectations
from reports import history

from .background import DEFAULT_SIZE, BackgroundSize, parse_size
from .baseline import Baseline, load_baseline
from .calibration import Calibration
from .cases import Case, ModelInfo, expand_all
from .families import CHECKS
from .keeper import RecordKeeper
from .progress import Progress
from .runinfo import new_run_id
from .shard import Shard, select
from .spec import load_expectations, load_spec_dir
from .verdicts import HypothesisFailed, Regression

ROOT = Path(__file__).resolve().parent.parent


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
    calibration: Calibration | None = None
    run_id: str = field(default_factory=new_run_id)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    registry: dict[str, ModelEntry] | None = None
    threads: str = ""              # torch's CPU threads for this process, and why
    shard: Shard | None = None
    run_cases: list[str] | None = None   # with --shard: every case id of the whole run, in order
    programs: tuple[tuple[str, ...], ...] = ()    # the KDs of every panel the hypotheses load
    background: BackgroundSize = DEFAULT_SIZE     # --background-kds (suite/background.py)
    needed: frozenset[str] = frozenset()          # every KD a panel names: computed whatever the sample


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
    group.addoption("--calibrate", action="store_true",
                    help="also run every case under nulls (shuffled KD/gene labels, re-initialised model copies) "
                         "and report each hypothesis's false-positive rate on these models")
    group.addoption("--null-draws", type=int, default=10, metavar="N",
                    help="with --calibrate: label permutations per case with a pathway (default: 10)")
    group.addoption("--null-inits", type=int, default=1, metavar="N",
                    help="with --calibrate: re-initialised copies of each model (default: 1)")
    group.addoption("--shard", default=None, metavar="I/N",
                    help="run the I-th of N parts of the cases (whole models each); join the parts' runs with "
                         "`python -m suite.merge`")
    group.addoption("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    group.addoption("--threads", default="torch", metavar="torch|auto|N",
                    help="torch CPU threads per process; torch: torch's default (every core); auto: the cores "
                         "other processes leave free, shared among xdist workers (default: torch)")
    parser.addini("probe_families", type="linelist", default=[],
                  help="modules of further probe families (each defines FAMILY = Family(...)); their folder goes "
                       "on pytest's 'pythonpath'")
    group.addoption("--background-kds", default=str(DEFAULT_SIZE), metavar="N|all",
                    help="per model, compute the panels' KDs and a seeded random sample of N KDs of the screen, "
                         "from which every KD-set null, learnedness baseline and whole-model statistic draws; "
                         f"all: every KD (default: {DEFAULT_SIZE})")
    group.addoption("--cell-orderings", type=int, default=8,
                    help="random cell orderings that probes average over for models whose outputs depend on "
                         "cell order (causal attention); a hypothesis's cell_orderings overrides it (default: 8)")


PATH_OPTIONS = ("--models", "--hypotheses", "--report-dir", "--cache-dir")


def pytest_configure(config: pytest.Config) -> None:
    _refuse_misread_paths(config)
    _refuse_unwritable(Path(config.getoption("--report-dir")))
    state = SuiteState(Path(config.getoption("--models")), Path(config.getoption("--hypotheses")),
                       Path(config.getoption("--report-dir")), config.getoption("--device"),
                       _cell_orderings(config),
                       _baseline(config), config.getoption("--update-baseline"), _cache_dir(config),
                       _calibration(config))
    state.shard = Shard.parse(config.getoption("--shard")) if config.getoption("--shard") else None
    try:
        state.background = parse_size(config.getoption("--background-kds"))
        resolve_device(state.device_choice)      # a device that is not there: say so now, not at the first case
        state.threads = size_threads(config.getoption("--threads"),
                                     int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        CHECKS.discover(config.getini("probe_families"))
    except SuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[STATE] = state
    config.pluginmanager.register(RecordKeeper(state), "st-record-keeper")
    for name, check in CHECKS.items():
        config.addinivalue_line("markers", f"{name}: hypotheses using the {name} probe ({check.summary})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE]
    if state.shard is not None:
        state.run_cases = select(items, config, state.shard)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed hypothesis or a regression reads as its claim and numbers, not as a traceback
    through this plugin: the message already says everything the code around it would."""
    report = yield
    if report.failed and call.excinfo is not None and isinstance(call.excinfo.value, (HypothesisFailed, Regression)):
        report.longrepr = str(call.excinfo.value)
    return report


def pytest_report_header(config: pytest.Config) -> str:
    return f"torch threads: {config.stash[STATE].threads}"


def terminal_progress(config: pytest.Config) -> Progress | None:
    """Progress lines for long probe passes, written past pytest's output capture (suite/progress.py);
    None in xdist workers, whose output never reaches the terminal, and without a terminal reporter."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if hasattr(config, "workerinput") or reporter is None:
        return None
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write(text, flush=True)

    return Progress(write, tty=bool(getattr(reporter, "isatty", False)))


def _baseline(config: pytest.Config) -> Baseline | None:
    which = config.getoption("--baseline")
    if which is None:
        return None
    try:
        return load_baseline(history.resolve(Path(config.getoption("--report-dir")), which))
    except (FileNotFoundError, SuiteError) as exc:
        raise pytest.UsageError(f"--baseline {which}: {exc}" if isinstance(exc, SuiteError) else str(exc)) from None


def _cell_orderings(config: pytest.Config) -> int:
    value = config.getoption("--cell-orderings")
    if not 1 <= value <= 1000:
        raise pytest.UsageError(f"--cell-orderings {value}: give a number of orderings from 1 to 1000 (1: cell "
                                "order as stored; the default 8 averages order-sensitive models over 8)")
    return value


def _calibration(config: pytest.Config) -> Calibration | None:
    if not config.getoption("--calibrate"):
        return None
    draws, inits = config.getoption("--null-draws"), config.getoption("--null-inits")
    if draws < 0 or inits < 0 or draws + inits == 0:
        raise pytest.UsageError("--null-draws and --null-inits count null runs: give numbers >= 0, not both 0")
    return Calibration(draws, inits)


def _cache_dir(config: pytest.Config) -> Path | None:
    if config.getoption("--no-cache"):
        return None
    if config.getoption("--cache-dir"):
        return Path(config.getoption("--cache-dir"))
    cache = getattr(config, "cache", None)     # None with -p no:cacheprovider
    return cache.mkdir("st-hypotheses") if cache is not None else None


def _refuse_unwritable(report_dir: Path) -> None:
    """Say before any case runs, not after an hour of probes, that the record cannot be kept."""
    existing = next(p for p in (report_dir, *report_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise pytest.UsageError(f"--report-dir {report_dir}: cannot write there ({existing} is "
                                f"{'not a folder' if not existing.is_dir() else 'not writable'}); point --report-dir "
                                "at a folder this user can write")
    for part in ("runs", "latest", "baseline"):     # what reports/history.py writes there
        path = report_dir / part
        pointer = part != "runs" and path.is_symlink()     # a pointer is a link history.py replaces
        if path.exists() and not path.is_dir() and not pointer:
            raise pytest.UsageError(f"--report-dir {report_dir}: {path} is a file, where the suite keeps "
                                    f"{'its runs' if part == 'runs' else f'the {part} pointer'}; move it away or "
                                    "choose another --report-dir")


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
    expectations = registry_expectations(state.models_path)
    if expectations is not None:
        specs = load_expectations(expectations, specs)
    # every panel of every hypothesis, whichever cases are selected: a KD's learnedness is judged against
    # the KDs outside its program, and must not change with -k
    state.programs = tuple(dict.fromkeys(p.kds for spec in specs for p in spec.panels.values() if len(p.kds) > 1))
    state.needed = frozenset(k for spec in specs for p in spec.panels.values() for k in (*p.kds, *p.unrelated_kds))
    infos = [ModelInfo(e.name, e.cell_line, e.split, declared_backbone(e)) for e in state.registry.values()]
    cases = expand_all(specs, infos)
    if not cases:
        raise SuiteError(f"no hypotheses collected from {state.hypotheses_dir}: add a hypothesis *.yaml file "
                         "there, or point --hypotheses at the folder that has them")
    return cases
