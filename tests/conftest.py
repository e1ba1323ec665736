"""Shared fixtures for the suite's own tests."""

from pathlib import Path
from textwrap import dedent

import pytest
import torch

from fixtures.registry import load_registry
from suite.session import RunContext

from .helpers import DEMO

pytest_plugins = ["pytester"]


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
