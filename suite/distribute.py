"""Parallel runs under pytest-xdist: each model's cases on one worker (a second `pytest11` plugin).

`pytest -n N` alone would deal cases out one by one, and every worker would load every
model and recompute its probe outputs. With `-n` and no `--dist` of the user's, this plugin
asks for `--dist loadgroup` and supplies the scheduler for it: a case's scope is the first
model it uses, read from the case id against the run's own cases, so all cases of one model
(and the pairs that start with it) run on one worker. xdist's own loadgroup reads a suffix it
appends to node ids, which pytest 9.2 no longer lets it write (pytest-xdist issue #1386); this
scheduler does not depend on it. Each worker takes its own GPU when several are visible
(fixtures/device.worker_gpu).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

ID = re.compile(r"\[(?P<case>[^\]]+)\]")


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    parallel = any(a in ("-n", "--numprocesses") or re.fullmatch(r"-n\S+|--numprocesses=\S+", a) for a in args)
    if parallel and not any(a.startswith("--dist") or a == "-d" for a in args):
        args.append("--dist=loadgroup")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    from .plugin import STATE, collect_cases

    class ModelScheduling(LoadScopeScheduling):
        """LoadScopeScheduling whose scope is the first model a case uses."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {c.case_id: c.models[0] for c in collect_cases(config.stash[STATE])}
            match = ID.search(nodeid)
            return self.groups.get(match.group("case"), nodeid) if match else nodeid

    return ModelScheduling(config, log)
