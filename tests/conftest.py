"""Shared fixtures for the suite's own tests."""

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
import torch
from filelock import FileLock

from fixtures.registry import load_registry
from suite.session import RunContext

from .helpers import DEMO, ROOT

pytest_plugins = ["pytester"]


# The day-to-day tier (`make check`: `pytest tests -m "not slow"`) leaves out the tests that run the
# demo end to end or sweep a statistic over thousands of draws; CI (`make test`) runs everything.
SLOW_FIXTURES = {"demo_report", "calibrated", "toy_run"}
SLOW_MODULES = {"test_nightly", "test_shard", "test_browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        in_slow_module = module is not None and module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES
        if in_slow_module or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def write(tmp_path):
    """write('name.yaml', text) -> path, with the text dedented."""
    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text).lstrip("\n"))
        return path

    return _write


@pytest.fixture(scope="session")
def demo_registry():
    return load_registry(DEMO / "models.yaml")


@pytest.fixture(scope="session")
def demo_run(demo_registry) -> RunContext:
    """The demo models, loaded once for all tests (CPU)."""
    return RunContext(demo_registry, torch.device("cpu"))


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory, worker_id) -> Path:
    """The README's first command, run once: every hypothesis on the demo; its run folder
    (probe outputs cached in demo-run/cache, for the tests that rerun it). Under xdist (`make test`)
    the first worker to ask runs it, in the folder all workers share, and the others wait for it."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared
    folder = shared / "demo-run"
    with FileLock(str(shared / "demo-run.lock")):
        if not (folder / "reports" / "latest" / "verdicts.json").exists():
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       f"--report-dir={folder / 'reports'}", f"--cache-dir={folder / 'cache'}"]
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return folder / "reports" / "latest"
