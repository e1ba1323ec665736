"""Resolving a panel against a model: typos are errors, absent genes are dropped, too few is inconclusive."""

import pytest

from suite.checks.members import resolve_members
from suite.errors import Inconclusive, UnknownNameError
from suite.panels import Panel

PANEL = Panel("ribosome", ("RPL3", "RPL7", "RPS3", "RPL5"), (), file="panels.yaml", line=4)
KDS = ("RPL3", "RPL7", "RPS3", "MYC")
UNIVERSE = {"RPL3", "RPL7", "RPS3", "RPL5", "RPS6", "MYC"}


def resolve(names, on_unknown="error", min_members=3):
    panel = Panel(PANEL.name, tuple(names), (), file=PANEL.file, line=PANEL.line)
    return resolve_members(panel.kds, KDS, UNIVERSE, panel=panel, model="m", what="KDs",
                           on_unknown=on_unknown, min_members=min_members)


def test_a_real_gene_that_is_not_a_kd_is_dropped_and_reported():
    assert resolve(PANEL.kds) == (["RPL3", "RPL7", "RPS3"], ["RPL5"])


def test_a_name_nobody_knows_is_an_error_with_close_matches_and_the_panel_line():
    with pytest.raises(UnknownNameError) as info:
        resolve(["RPL3", "RPL7", "RPS3X"])
    assert "RPS3X (did you mean RPS3" in str(info.value)
    assert info.value.file == "panels.yaml" and info.value.line == 4
    assert resolve(["RPL3", "RPL7", "RPS3", "RPS3X"], on_unknown="drop") == (["RPL3", "RPL7", "RPS3"], ["RPS3X"])


def test_too_few_present_is_inconclusive_with_the_reason():
    with pytest.raises(Inconclusive, match=r"only 2 of 3 KDs of pathway 'ribosome'.*need at least 3.*RPS6"):
        resolve(["RPL3", "RPL7", "RPS6"])
