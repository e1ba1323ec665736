"""Selectivity against re-initialised copies (suite/checks/common.selectivity and beat_copies): a
condition with a stated level. "Beats all k copies" alone is a rank test at level 1/(k+1), 0.25 with
the default 3 copies; the prediction bound brings it to alpha when the statistic spreads normally
over initialisations, and a copy treated as "the model" passes at most at alpha."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from suite import stats
from suite.checks.common import copies_problem, selectivity
from suite.panels import Panel
from suite.session import reinitialised_name
from suite.verdicts import ALPHA, decide

from .planted import CaseFor, PlantedRun, run, world

DRAWS = 20_000


def test_the_bound_is_the_student_t_prediction_bound():
    """Against a hand computation: mean + t_{k-1}(1 - alpha) s sqrt(1 + 1/k), and p from the same t."""
    copies = [0.31, 0.42, 0.37, 0.29]
    found = selectivity(0.6, copies, 0.05)
    m, s, k = np.mean(copies), np.std(copies, ddof=1), 4
    assert found.bound == pytest.approx(m + scipy_stats.t.ppf(0.95, k - 1) * s * np.sqrt(1 + 1 / k))
    assert found.p == pytest.approx(scipy_stats.t.sf((0.6 - m) / (s * np.sqrt(1 + 1 / k)), k - 1))
    assert found.held(0.05) and not selectivity(0.45, copies, 0.05).held(0.05)    # beats all, not the bound


def test_copies_without_spread_give_the_rank_level_not_a_pass():
    found = selectivity(5.0, [1.0, 1.0, 1.0], 0.05)
    assert found.p == 0.25 and not found.held(0.05)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_a_statistic_from_the_architecture_alone_passes_at_most_at_alpha(k):
    """k + 1 exchangeable draws (normal spread over initialisations), the first taken for the model:
    the condition holds in at most alpha of the draws (binomial bound), where beating all k copies
    alone holds in 1/(k + 1) of them."""
    rng = np.random.default_rng(k)
    draws = rng.normal(0.4, 0.05, (DRAWS, k + 1))
    held = sum(selectivity(row[0], row[1:], ALPHA).held(ALPHA) for row in draws)
    beats_all = int((draws[:, 0] > draws[:, 1:].max(axis=1)).sum())
    low, high = stats.binomial_interval(DRAWS, ALPHA)
    assert held <= high, f"{held} of {DRAWS}"
    assert beats_all / DRAWS == pytest.approx(1 / (k + 1), abs=0.01)


def test_a_statistic_well_above_its_copies_passes():
    rng = np.random.default_rng(1)
    assert all(selectivity(0.9, rng.normal(0.4, 0.05, 3), ALPHA).held(ALPHA) for _ in range(100))


def test_one_copy_is_refused_with_the_fix():
    class P:
        reinit_copies = 1

    assert "give 0 (no selectivity condition) or at least 2" in copies_problem(P())


def _architecture_only(seed: int, copies: int) -> PlantedRun:
    """A planted 'model' and `copies` re-initialised copies drawn from one distribution: every one of
    them has routing Jacobians coupled to its outputs (what the architecture alone can give), so the
    Mantel test passes on each and only selectivity can tell the model from its copies."""
    models, outputs = {}, {}
    for copy in range(copies + 1):
        w = world(seed * 100 + copy, n_kds=30, n_genes=20, hidden=6, n_sets=2, coupled=True)
        name = "model_a" if copy == 0 else reinitialised_name("model_a", copy - 1)
        models[name], outputs[name] = w.ctx.planted["model_a"], w.ctx.outputs["model_a"]
        models[name].name = name
    return PlantedRun(models, outputs)


@pytest.mark.parametrize("probe", ["routing_output_correlation", "routing_cluster_sharing"])
def test_the_whole_model_routing_checks_pass_an_exchangeable_copy_at_most_at_alpha(probe):
    """The check itself (its default rule, 3 copies) on 200 planted architectures-only: the model is
    one more draw like its copies. The first version passed it whenever it beat all three (about 1 in
    4); now the count stays within the binomial bound at alpha."""
    n, passes, beat_all = 200, 0, 0
    for seed in range(n):
        ctx = _architecture_only(seed, 3)
        case = CaseFor(probe, {"n_permutations": 99, "reinit_copies": 3, "seed": seed})(Panel("p", (), ()),
                                                                                         {"model": "model_a"})
        evidence = run(case, ctx)
        verdict, _ = decide(evidence, case.spec.pass_rule)
        passes += verdict == "pass"
        copies = evidence.details["selectivity"]["reinitialised"]
        beat_all += len(copies) == 3 and all(round(evidence.value, 4) > c for c in copies)
    assert passes <= stats.binomial_interval(n, ALPHA)[1], f"{passes} of {n} passed"
    assert beat_all >= 30, f"only {beat_all} of {n} beat all copies: the trap is not planted"
