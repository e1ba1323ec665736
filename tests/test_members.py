"""Resolving a panel against a model: typos are errors, absent genes are dropped, too few is inconclusive."""

import pytest

from core.errors import Inconclusive, UnknownNameError
from suite.checks.common import resolve_members
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


# ---- the learned KDs a set test runs over (suite/checks/common.scope) ---------------------------

class _Judged:
    """A run context whose only model has a given learnedness table."""

    programs = ()                 # the run's panels: none besides the tested one

    def background_sample(self, names):     # every KD: no background sample
        return None

    def __init__(self, table, pooled=None):
        self.table, self.pooled, self.asked = table, pooled, []

    def learnedness(self, name):
        return self.table

    def pooled_learnedness(self, name, members):
        self.asked.append(members)
        return None if self.pooled is None else self.pooled(members)


def _table(statuses: dict[str, str]):
    import numpy as np

    from suite.learnedness import Learnedness

    kds = tuple(statuses)
    low = np.array([0.2 if s == "learned" else -0.5 for s in statuses.values()])
    high = np.array([0.6 if s != "not learned" else -0.1 for s in statuses.values()])
    untrained = np.array([s == "untrained" for s in statuses.values()])
    return Learnedness(kds, (low + high) / 2, low, high, np.full(len(kds), 30), untrained, "observed cells")


def _scope(statuses, members, min_members=3, ctx=None):
    from types import SimpleNamespace

    from suite.checks.common import scope

    panel = Panel("p", tuple(members), (), file="panels.yaml", line=2)
    params = SimpleNamespace(on_unknown="error", min_members=min_members)
    return scope(ctx or _Judged(_table(statuses)), ["m"], panel.kds, panel, tuple(statuses), frozenset(statuses),
                 params)


def test_a_set_test_runs_over_the_learned_kds_only():
    statuses = {f"L{i}": "learned" for i in range(10)} | {"U1": "not learned", "U2": "undetermined", "U3": "untrained"}
    found = _scope(statuses, ["L0", "L1", "L2", "U1"])
    assert found.kds == [f"L{i}" for i in range(10)]
    assert found.present == ["L0", "L1", "L2"] and list(found.members) == [0, 1, 2]
    assert found.learned["members"] == "3 of 4" and found.learned["left_out"] == {"U1": "not learned"}


def test_a_set_whose_members_are_mostly_not_learned_is_inconclusive():
    statuses = {f"L{i}": "learned" for i in range(10)} | {f"U{i}": "untrained" for i in range(5)}
    with pytest.raises(Inconclusive) as info:
        _scope(statuses, ["L0", "L1", "U0", "U1", "U2"])
    assert "2 of the 5 KDs of pathway 'p' are learned" in info.value.reason
    assert "U0 (untrained)" in info.value.reason


def _pooled_as(status):
    from suite.learnedness import Pooled

    low, high = {"learned": (0.05, 0.3), "undetermined": (-0.1, 0.2)}[status]
    return lambda members: Pooled(tuple(members), (low + high) / 2, low, high, 20 * len(members))


def test_undetermined_members_enter_the_test_when_their_pooled_response_is_learned():
    """The undetermined members are pooled (the not-learned one is not asked about) and join the learned
    ones when their shared response is learned; the card says so."""
    statuses = ({f"L{i}": "learned" for i in range(10)} | {f"U{i}": "undetermined" for i in range(4)}
                | {"N0": "not learned"})
    ctx = _Judged(_table(statuses), _pooled_as("learned"))
    found = _scope(statuses, ["L0", "U0", "U1", "U2", "U3", "N0"], ctx=ctx)
    assert ctx.asked == [("U0", "U1", "U2", "U3")]
    assert found.present == ["L0", "U0", "U1", "U2", "U3"] and found.learned["left_out"] == {"N0": "not learned"}
    assert "U0" in found.kds and "N0" not in found.kds
    assert "4 undetermined members, pooled (80 cells)" in found.learned["pooled_text"]
    assert found.learned["pooled"]["m"]["status"] == "learned"


def test_undetermined_members_stay_out_when_their_pooled_response_is_not_learned():
    statuses = {f"L{i}": "learned" for i in range(10)} | {f"U{i}": "undetermined" for i in range(4)}
    with pytest.raises(Inconclusive) as info:
        _scope(statuses, ["L0", "U0", "U1", "U2", "U3"], ctx=_Judged(_table(statuses), _pooled_as("undetermined")))
    assert "1 of the 5 KDs" in info.value.reason and "pooled (80 cells)" in info.value.reason
