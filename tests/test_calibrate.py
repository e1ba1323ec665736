"""`pytest --calibrate`: the suite's nulls on a user's own models.

The pieces (relabeling that keeps each name's role, re-initialisation, the false-positive
rate and its interval) on their own, then the option end to end on the demo checkpoints: the
report carries each hypothesis's empirical false-positive rate, tests that hold their level
read "within alpha", and a hypothesis whose rule lets chance through is flagged.
"""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from fixtures.reinit import reinitialise
from suite.calibration import false_positive_rate, relabeled, shuffled_names, summarize
from suite.panels import Panel
from suite.session import parse_reinitialised, reinitialised_name

from .helpers import PANELS, tiny_state_model
from .test_plugin import run_pytest

KDS = [{"A", "B", "C", "D", "E", "F"}, {"A", "B", "C", "D", "G"}]
GENES = [{"A", "B", "C", "X", "Y", "Z"}, {"A", "B", "C", "X", "Y", "Z", "W"}]


def _role(name: str) -> tuple[bool, bool, bool]:
    return (all(name in s for s in KDS), all(name in s for s in GENES), any(name in s for s in KDS))


def test_shuffled_names_is_a_bijection_that_keeps_every_role():
    rng = np.random.default_rng(0)
    mappings = [shuffled_names(KDS, GENES, rng) for _ in range(50)]
    for mapping in mappings:
        assert sorted(mapping) == sorted(mapping.values())
        assert all(_role(a) == _role(b) for a, b in mapping.items())
    # names sharing a role really move: D (KD of both, no gene) swaps with nothing, X/Y/Z do
    assert {m["D"] for m in mappings} == {"D"}
    assert {m["X"] for m in mappings} == {"X", "Y", "Z"}
    assert {m["A"] for m in mappings} == {"A", "B", "C"}


def test_shuffled_names_is_reproducible_from_its_seed():
    first = shuffled_names(KDS, GENES, np.random.default_rng([7, 3]))
    assert first == shuffled_names(KDS, GENES, np.random.default_rng([7, 3]))
    assert any(shuffled_names(KDS, GENES, np.random.default_rng([7, d])) != first for d in range(4, 10))


def test_relabeled_renames_members_and_keeps_what_the_probe_reads():
    panel = Panel("p", kds=("A", "X"), genes=("A", "Y", "NOPE"), regulators=("A",), targets=("Y",),
                  unrelated_kds=("B",))
    mapping = {"A": "C", "C": "A", "X": "Z", "Z": "X", "Y": "X", "B": "A"}
    out = relabeled({"p": panel}, mapping)["p"]
    assert (out.kds, out.genes, out.unrelated_kds) == (("C", "Z"), ("C", "X", "NOPE"), ("A",))
    assert (out.regulators, out.targets) == (("A",), ("Y",))


@pytest.mark.parametrize(("passes", "runs", "status"), [
    (5, 100, "within alpha"), (0, 40, "within alpha"), (12, 100, "above alpha"), (3, 10, "above alpha"),
    (0, 0, "no null run reached a verdict"),
])
def test_false_positive_rate_flags_only_an_interval_wholly_above_alpha(passes, runs, status):
    result = false_positive_rate(passes, runs)
    assert result["status"] == status
    if runs:
        assert result["fpr"] == pytest.approx(passes / runs)
        low, high = result["ci"]
        assert low <= passes / runs <= high
        assert (low > 0.05) == (status == "above alpha")


def test_false_positive_rate_interval_is_clopper_pearson():
    # 12 of 100: the exact interval (R binom.test) is 0.0636 to 0.2002
    assert false_positive_rate(12, 100)["ci"] == pytest.approx([0.0636, 0.2002], abs=1e-4)


def test_summarize_pools_null_runs_per_hypothesis_and_null():
    def case(hypothesis, verdict, perm, reinit):
        return {"hypothesis": hypothesis, "probe": "x", "verdict": verdict, "threshold": {"p_below": 0.05},
                "calibration": {"label_permutation": _tally(*perm), "reinitialised": _tally(*reinit)}}

    cases = [case("h1", "pass", (1, 10), (0, 1)), case("h1", "fail", (2, 10), (1, 1)),
             case("h2", "pass", (0, 10), (0, 1)), {"hypothesis": "audit", "calibration": None}]
    rows = {(r["hypothesis"], r["null"]): r for r in summarize(cases)}
    assert set(rows) == {("h1", "label_permutation"), ("h1", "reinitialised"), ("h2", "label_permutation"),
                         ("h2", "reinitialised")}
    h1 = rows["h1", "label_permutation"]
    assert (h1["cases"], h1["runs"], h1["passes"], h1["real_passes"]) == (2, 20, 3, 1)
    assert h1["fpr"] == pytest.approx(0.15)
    assert rows["h1", "reinitialised"]["passes"] == 1


def _tally(passes: int, runs: int) -> dict:
    return {"runs": runs, "passes": passes, "fails": runs - passes, "inconclusive": 0, "errors": 0, "p": [],
            "note": None}


def test_reinitialised_names_round_trip_with_a_seed_per_model_and_copy():
    name = reinitialised_name("hepg2_fewshot", 0)
    base, seed = parse_reinitialised(name)
    assert base == "hepg2_fewshot" and seed is not None
    assert parse_reinitialised("hepg2_fewshot") == ("hepg2_fewshot", None)
    seeds = {parse_reinitialised(reinitialised_name(m, c))[1] for m in ("a", "b") for c in (0, 1)}
    assert len(seeds) == 4


@pytest.mark.parametrize("backbone", ["GPT2", "llama"])
def test_reinitialise_redraws_every_weight_and_leaves_the_model_alone(backbone):
    model = tiny_state_model(backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh, shuffled = reinitialise(model, seed=3)
    again, _ = reinitialise(model, seed=3)
    other, _ = reinitialise(model, seed=4)
    assert shuffled == []
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    changed = {n for n, p in fresh.named_parameters() if not torch.equal(before[n], p)}
    # a parameter may come back unchanged only where training left it at its initial value (norm gains 1, biases 0)
    kept = set(before) - changed
    assert all(torch.all(before[n] == before[n].flatten()[0]) for n in kept), kept
    assert len(changed) > len(before) // 2
    assert all(torch.equal(p, dict(again.named_parameters())[n]) for n, p in fresh.named_parameters())
    assert any(not torch.equal(p, dict(other.named_parameters())[n]) for n, p in fresh.named_parameters())
    assert not fresh.training


def test_reinitialise_shuffles_a_parameter_no_initialiser_reaches():
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.arange(50.0))

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), Scale())
    fresh, shuffled = reinitialise(model, seed=0)
    assert shuffled == ["1.gain"]
    gain = fresh[1].gain.detach()
    assert not torch.equal(gain, torch.arange(50.0))
    assert torch.equal(gain.sort().values, torch.arange(50.0))


def test_run_context_gives_reinitialised_copies_by_name(demo_run):
    real = demo_run.model("hepg2_fewshot")
    copy = demo_run.model(reinitialised_name("hepg2_fewshot", 0))
    assert copy.name == "hepg2_fewshot~reinit0" and copy.kd_names == real.kd_names
    assert copy.fingerprint != real.fingerprint
    assert copy.fingerprint != demo_run.model(reinitialised_name("hepg2_fewshot", 1)).fingerprint
    assert demo_run.model(copy.name) is copy
    onehots = real.pert_onehots[:4]
    with torch.no_grad():
        assert not torch.allclose(copy.module.pert_encoder(onehots), real.module.pert_encoder(onehots))


CALIBRATE_SPEC = f"""
schema_version: 1
panels: [{PANELS}]
hypotheses:
  - id: pert-embedding-coherence
    claim: Pathway KDs sit together in pert_encoder space.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot, jurkat_fewshot], pathway: all}}
    params: {{n_permutations: 999, seed: 0}}
    pass_rule: {{p_below: 0.05, effect_above: 0.0}}
    expected:
      - {{where: {{pathway: decoy}}, verdict: fail}}
      - {{where: {{pathway: er_secretory, cell_line: jurkat}}, verdict: fail}}
  - id: lax-coherence
    claim: The same test with a rule that lets p up to 0.5 through.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot, jurkat_fewshot], pathway: all}}
    params: {{n_permutations: 999, seed: 0}}
    pass_rule: {{p_below: 0.5, effect_above: null}}
    expected:
      - {{where: {{pathway: decoy}}, verdict: exploratory}}
      - {{where: {{pathway: er_secretory, cell_line: jurkat}}, verdict: exploratory}}
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    (root / "hyp").mkdir()
    (root / "hyp/spec.yaml").write_text(CALIBRATE_SPEC)
    result = run_pytest(f"--hypotheses={root / 'hyp'}", f"--report-dir={root / 'reports'}",
                        f"--cache-dir={root / 'cache'}", "--calibrate", "--null-draws=20", "--null-inits=1")
    record = json.loads((root / "reports/latest/verdicts.json").read_text())
    return result, record, (root / "reports/latest/verdict.html").read_text()


def test_calibrate_reports_each_hypothesis_false_positive_rate(calibrated):
    result, record, html = calibrated
    assert result.returncode == 0, result.stdout[-3000:]
    calibration = record["run"]["calibration"]
    assert (calibration["draws"], calibration["inits"], calibration["alpha"]) == (20, 1, 0.05)
    rows = {(r["hypothesis"], r["null"]): r for r in calibration["rows"]}
    assert set(rows) == {(h, n) for h in ("pert-embedding-coherence", "lax-coherence")
                         for n in ("label_permutation", "reinitialised")}
    perm = rows["pert-embedding-coherence", "label_permutation"]
    # relabelled panels whose KDs the model did not learn are inconclusive, not null runs
    assert perm["cases"] == 16 and perm["runs"] + perm["inconclusive"] == 320 and perm["runs"] >= 100
    assert perm["status"] == "within alpha" and perm["fpr"] <= 0.08
    # the real run passes what was learned: far above its null rate
    assert perm["real_passes"] >= 8
    for case in record["cases"]:
        tallies = case["calibration"]
        assert tallies["label_permutation"]["runs"] + tallies["label_permutation"]["inconclusive"] == 20
        assert len(tallies["label_permutation"]["p"]) == tallies["label_permutation"]["runs"]
        # a re-initialised copy learned nothing: its pert_encoder columns are all at their initial scale
        assert tallies["reinitialised"]["runs"] + tallies["reinitialised"]["inconclusive"] == 1
        assert tallies["reinitialised"]["passes"] == 0
    assert 'id="calibration-table"' in html and html.count('data-status="within alpha"') >= 1
    # every relabelled panel of a copy learned nothing, so no null run of the copies reaches a verdict
    assert rows["pert-embedding-coherence", "reinitialised"]["status"] == "no null run reached a verdict"


def test_calibrate_flags_a_hypothesis_whose_rule_lets_chance_through(calibrated):
    result, record, html = calibrated
    lax = {r["null"]: r for r in record["run"]["calibration"]["rows"] if r["hypothesis"] == "lax-coherence"}
    assert lax["label_permutation"]["status"] == "above alpha"
    assert 0.3 <= lax["label_permutation"]["fpr"] <= 0.7      # p < 0.5 under the null: about half
    assert "lax-coherence under label_permutation" in result.stdout
    assert 'data-status="above alpha"' in html and "pass on nulls more often than alpha" in html


def test_null_p_values_of_a_calibrated_test_look_uniform(calibrated):
    _, record, _ = calibrated
    p = [v for c in record["cases"] if c["hypothesis"] == "pert-embedding-coherence"
         for v in c["calibration"]["label_permutation"]["p"]]
    deciles = Counter(min(int(v * 10), 9) for v in p)
    assert len(p) >= 100
    # a one-sided test under its null: no decile holds more than twice its share
    assert max(deciles.values()) <= 2 * len(p) / 10


def test_a_routing_score_undefined_on_a_reinitialised_copy_is_inconclusive_not_an_error(demo_run):
    from suite.cases import ModelInfo, expand_all
    from suite.spec import load_spec_dir
    from suite.verdicts import evaluate

    from .helpers import ROOT

    specs = [s for s in load_spec_dir(ROOT / "hypotheses") if s.probe == "jacobian_routing_score"]
    case = next(c for c in expand_all(specs, [ModelInfo("hepg2_fewshot", "hepg2", "fewshot")])
                if c.axes["pathway"] == "er_secretory")
    null = type(case)(case.case_id, case.spec, {**case.axes, "model": reinitialised_name("hepg2_fewshot", 0)}, None)
    record = evaluate(null, demo_run)
    assert record.verdict == "inconclusive"
    assert "untrained" in record.reason or "zero sensitivity on the matched null pairs" in record.reason


def test_reinitialise_copies_a_model_that_kept_a_tensor_from_a_forward_pass_with_grad():
    model = tiny_state_model("llama")
    model.kept = torch.ones(3, requires_grad=True) * 2      # what a forward with grad can leave behind
    fresh, _ = reinitialise(model, seed=0)
    assert torch.equal(fresh.kept, model.kept.detach()) and fresh.kept.grad_fn is None
