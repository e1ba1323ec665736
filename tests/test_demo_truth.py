"""The bundled demo: the suite's verdicts equal the documented, planted ground truth.

The verdicts are those of the README's first command (`pytest` on the demo, run once per
session by the `demo_report` fixture): the path a user takes, record and all.
"""

import json

import pytest
import yaml

from suite.cases import ModelInfo, expand_all
from suite.checks.jacobian import jacobians
from suite.spec import load_expectations, load_spec_dir

from .helpers import DEMO, ROOT

TRUTH = yaml.safe_load((DEMO / "ground_truth.yaml").read_text())


def _cases(registry):
    infos = [ModelInfo(e.name, e.cell_line, e.split) for e in registry.values()]
    return expand_all(load_expectations(DEMO / "expectations.yaml", load_spec_dir(ROOT / "hypotheses")), infos)


TRAP = "fail or inconclusive"      # a set that must not pass (build.TRAP_VERDICT)


def _truth_for(case) -> str:
    """pass, fail, inconclusive, 'fail or inconclusive' (a trap set: must not pass), or either (the demo
    cannot settle this case; see its README)."""
    entry = TRUTH["expected"][case.spec.id]["-vs-".join(case.models)]
    return entry if isinstance(entry, str) else entry[case.axes["pathway"]]


def test_every_planted_data_hypothesis_has_a_ground_truth(demo_registry):
    audit = {c.spec.id for c in _cases(demo_registry) if c.spec.probe == "model_audit"}
    hypotheses = {c.spec.id for c in _cases(demo_registry)} - audit
    assert hypotheses == set(TRUTH["expected"]) | set(TRUTH["unvalidated"])
    assert not set(TRUTH["expected"]) & set(TRUTH["unvalidated"])


def test_the_oracles_jacobian_panels_are_the_hypotheses_panels():
    from fixtures.demo.build import JACOBIAN_PANELS
    from suite.panels import load_panels

    panels = load_panels([ROOT / "hypotheses/panels/demo_pathways.yaml", ROOT / "hypotheses/panels/notes_panels.yaml"])
    for name, (_, regulators, targets, kds, unrelated) in JACOBIAN_PANELS.items():
        panel = panels[name]
        assert (panel.regulators, panel.targets, panel.kds) == (regulators, targets, tuple(kds))
        assert not panel.unrelated_kds or panel.unrelated_kds == tuple(unrelated)


def test_ground_truth_is_backed_by_what_the_models_learned():
    learned = TRUTH["learned"]
    assert learned["hepg2_fewshot"]["program_learned"]["er_secretory"] is True
    assert learned["jurkat_fewshot"]["program_learned"]["er_secretory"] is False
    assert all(m["program_learned"]["decoy"] is False for m in learned.values())


@pytest.fixture(scope="module")
def record(demo_report) -> dict:
    return json.loads((demo_report / "verdicts.json").read_text())


@pytest.fixture(scope="module")
def verdicts(record) -> dict[str, dict]:
    return {case["case_id"]: case for case in record["cases"]}


@pytest.mark.parametrize("hypothesis", sorted(TRUTH["expected"]))
def test_verdicts_equal_the_ground_truth(hypothesis, demo_registry, verdicts):
    cases = [c for c in _cases(demo_registry) if c.spec.id == hypothesis]
    assert cases, f"no cases for {hypothesis}"
    mismatches = []
    for case in cases:
        result, truth = verdicts[case.case_id], _truth_for(case)
        allowed = {"either": {"pass", "fail", "inconclusive"}, TRAP: {"fail", "inconclusive"}}.get(truth, {truth})
        if result["verdict"] not in allowed:
            mismatches.append(f"{case.case_id}: suite says {result['verdict']} ({result['reason']}), truth {truth}")
    assert not mismatches, "\n".join(mismatches)


def test_decoy_never_passes(demo_registry, verdicts):
    """In every hypothesis, those the demo cannot validate included. One kind of claim is about the
    decoy's genes, not its KDs: whether two models agree on the KOs of those genes, which nothing planted
    fixes. There a pass is allowed only where the KO oracle itself cannot rule the effect out (its
    expected verdict is 'either': hepg2_fewshot vs hepg2_zeroshot, the decoy genes' agreement 0.48
    against all genes' 0.36)."""
    decoys = [c for c in _cases(demo_registry) if c.axes.get("pathway") == "decoy"]
    assert len(decoys) >= 20

    def oracle_agrees(case) -> bool:
        if case.spec.probe != "knockout_cross_line":
            return False
        return TRUTH["expected"][case.spec.id]["-vs-".join(case.axes["model_pair"])]["decoy"] == "either"

    passed = [c.case_id for c in decoys if verdicts[c.case_id]["verdict"] == "pass" and not oracle_agrees(c)]
    assert not passed


def _trap_cases(registry):
    """Every KD-set case of a set no model learned: the weak KDs held out of training, the decoy, and
    the ER/secretory KDs outside HepG2-trained models (whose program exists in HepG2 only)."""
    lines = {m: TRUTH["models"][m]["trained_on"] for m in TRUTH["models"]}
    kd_probes = {"pert_embedding_coherence", "pert_embedding_consistency", "representation_coherence",
                 "representation_clusters", "representation_consistency", "routing_axes", "sae_feature_patching",
                 "sae_conserved_drivers"}

    def trap(case) -> bool:
        pathway = case.axes.get("pathway")
        if pathway in ("weak_private", "decoy"):
            return True
        return pathway == "er_secretory" and any("hepg2" not in lines[m] for m in case.models)

    return [c for c in _cases(registry) if c.spec.probe in kd_probes and trap(c)
            and not (c.spec.probe == "routing_axes" and c.spec.params.by == "gene_loadings")]


def test_no_trap_set_passes_any_representation_or_consistency_probe(demo_registry, verdicts):
    """Including the hypotheses the demo leaves unvalidated: a set of KDs no model learned passes nothing."""
    traps = _trap_cases(demo_registry)
    assert len(traps) >= 60
    passed = [f"{c.case_id} (p = {verdicts[c.case_id]['p']})" for c in traps
              if verdicts[c.case_id]["verdict"] == "pass"]
    assert not passed, passed


def test_the_synthesis_reads_each_planted_program(record):
    """The organized side holds for every learned program; the decoy, the weak KDs and unlearned programs
    are never organized. The whole line is not asserted: the demo's routed side has few validated
    positives (its README), and where its evidence is split the line reads inconclusive."""
    organized = {(grid["name"], row["pathway"]): row["reading"]["organized"]["state"]
                 for grid in record["synthesis"]["grids"] if grid["kind"] == "model" for row in grid["rows"]}
    allowed = {"pass": {"holds"}, TRAP: {"does not hold", "inconclusive"}}
    wrong = {(model, pathway): organized[model, pathway]
             for model, panels in TRUTH["expected"]["pert-embedding-coherence"].items()
             for pathway, truth in panels.items() if organized[model, pathway] not in allowed[truth]}
    assert not wrong


def test_the_demo_expectations_are_generated_from_the_ground_truth():
    """The demo registry's expectations file is what build.py derives from ground_truth.yaml, which
    holds the planted design and the oracles' numbers only."""
    from fixtures.demo.build import expectations_from_truth

    assert yaml.safe_load((DEMO / "expectations.yaml").read_text()) == expectations_from_truth(TRUTH)
    assert yaml.safe_load((DEMO / "models.yaml").read_text())["expectations"] == "expectations.yaml"


def test_every_demo_case_expects_what_its_ground_truth_says(demo_registry):
    for case in _cases(demo_registry):
        if case.spec.probe == "model_audit":
            continue
        if case.spec.id in TRUTH["unvalidated"]:
            assert case.expected.verdict == "exploratory", case.case_id
            continue
        truth = _truth_for(case)
        want = {"pass": "pass", "either": "exploratory"}.get(truth, "fail")
        assert case.expected is not None and case.expected.verdict == want, case.case_id


def test_the_shipped_hypotheses_expect_nothing_of_a_users_models():
    """Only facts of the installed libraries (arc-state's GPT2 backbone runs causal attention) apply to
    any model; the demo's answers live with the demo."""
    for spec in load_spec_dir(ROOT / "hypotheses"):
        for expectation in spec.expected:
            assert spec.probe == "model_audit" and set(expectation.where) == {"backbone"}, spec.id


def test_the_demo_run_has_no_xpass_and_reports_cases_without_an_answer_as_exploratory(demo_registry, verdicts):
    exploratory = {c.case_id for c in _cases(demo_registry) if c.expected and c.expected.verdict == "exploratory"}
    assert len(exploratory) >= 20
    outcomes = {case_id: case["outcome"] for case_id, case in verdicts.items()}
    assert not [c for c, outcome in outcomes.items() if outcome.startswith("xpass")]
    assert {c for c, outcome in outcomes.items() if outcome == "exploratory"} == {
        c for c in exploratory if verdicts[c]["verdict"] in ("pass", "fail")}


def test_every_interval_is_the_interval_of_the_effect_it_stands_beside(record):
    """Every statistical case (one with a p) of the demo gives a 95% CI that brackets the effect, or
    says why it has none (the best cluster's fold: representation_clusters)."""
    tested = [c for c in record["cases"] if c["verdict"] in ("pass", "fail") and c["p"] is not None]
    assert len(tested) >= 150
    reasoned = [c for c in tested if not c["ci"] and (c["details"] or {}).get("no_ci")]
    assert {c["probe"] for c in reasoned} <= {"representation_clusters"}
    missing = [c["case_id"] for c in tested if (not c["ci"] or None in c["ci"]) and c not in reasoned]
    outside = [f"{c['case_id']}: effect {c['effect']:.4g}, CI {c['ci']}" for c in tested
               if c["ci"] and None not in c["ci"] and not c["ci"][0] <= c["effect"] <= c["ci"][1]]
    assert not missing and not outside, missing + outside


# The oracles measure on their own cells and orderings (fixtures/demo/verify.py), so the suite's
# number may differ by sampling: KO agreement by up to 0.06 (the largest gap over the 16 demo cases is
# 0.042, mito_ribosome cross-line), the routing-vs-output r by up to 0.12 (8 KD cell sets of 32 cells).
KO_TOLERANCE, ROUTING_TOLERANCE = 0.06, 0.12
# and the SAE-patching statistic (an effect ratio) by up to 30% of the oracle's value (the largest gap is
# 23%, spliceosome in hepg2_zeroshot, a model on the cells of a line it never saw; the others are within 9%)
PATCHING_TOLERANCE = 0.3


def test_the_suites_ko_agreement_equals_the_oracles(verdicts):
    gaps = {}
    for pair, by_pathway in TRUTH["knockout_agreement"].items():
        hypothesis = "knockout-cross-line" if "jurkat" in pair else "knockout-fewshot-vs-zeroshot"
        for pathway, oracle in by_pathway.items():
            if pathway == "all_genes":
                suite = verdicts[f"{hypothesis}-{pair}-ribosome"]["details"]["mean_r_all_genes"]
            else:
                suite = verdicts[f"{hypothesis}-{pair}-{pathway}"]["value"]
            gaps[pair, pathway] = abs(suite - oracle)
    assert len(gaps) == sum(map(len, TRUTH["knockout_agreement"].values())) == 18, gaps
    assert max(gaps.values()) <= KO_TOLERANCE, gaps


def test_the_suites_routing_r_equals_the_oracles(verdicts):
    for model, oracle in TRUTH["routing"]["routing_vs_output_r"].items():
        case = verdicts[f"routing-vs-output-{model}"]
        assert abs(case["value"] - oracle) <= ROUTING_TOLERANCE, (model, case["value"], oracle)


# The targeted-Jacobian oracle (verify.targeted_sensitivity: autograd through arc-state's own forward,
# per cell, 16 fresh control cells) against the suite's probe on the same KDs, regulators and targets
# (16 of the model's control cells, averaged over its cell orderings): over all 12 model x panel
# ratios the largest gap was 0.094 (hepg2_zeroshot ribosome_nb03); on the rebuilt demo (124 KDs) it is
# 0.148 (hepg2_fewshot er_secretory: 1.45 against the oracle's 1.30, 16 cells each). The suite's cases compare learned,
# magnitude-matched unrelated KDs instead, so their ratios are not the oracle's (hepg2_fewshot
# er_secretory: 1.03 against the oracle's 1.32 with 4 of the oracle's 10 unrelated KDs learned).
JACOBIAN_TOLERANCE = 0.16


@pytest.mark.parametrize("panel", ["er_secretory", "decoy"])
def test_the_suites_targeted_jacobians_give_the_oracles_sensitivity_ratio(demo_run, panel):
    import numpy as np

    from fixtures.demo.build import JACOBIAN_PANELS

    model = demo_run.model("hepg2_fewshot")
    _, regulators, targets, kds, unrelated = JACOBIAN_PANELS[panel]
    jac = jacobians(demo_run, model.name, tuple(kds) + tuple(unrelated), tuple(regulators), "per_cell", 16, 0,
                    demo_run.n_orderings(model.name, None))
    block = np.abs(jac[:, :, [model.gene_names.index(g) for g in targets]])
    ratio = block[:len(kds)].mean() / block[len(kds):].mean()
    oracle = TRUTH["learned"][model.name]["targeted_sensitivity"][panel]["ratio"]
    assert abs(ratio - oracle) <= JACOBIAN_TOLERANCE, (ratio, oracle)


def test_the_suites_feature_patching_agrees_with_the_oracles(verdicts):
    """The oracle (verify.patching_oracle) chooses its features on other cells, with a null of its own
    (nearest features in frequency and magnitude), on arc-state's own forward pass: where both measure
    a pathway, the suite's normalised effect of ablating the chosen features is the oracle's within
    PATCHING_TOLERANCE of it, and both stand on the same side of their nulls."""
    gaps = {}
    for model, panels in TRUTH["patching"].items():
        for pathway, oracle in panels.items():
            case = verdicts[f"sae-feature-ablation-{model}-{pathway}"]
            if case["value"] is None:
                continue
            gaps[model, pathway] = abs(case["value"] - oracle["statistic"]) / oracle["statistic"]
            assert (case["value"] > case["details"]["null_mean"]) == (oracle["statistic"] > oracle["null_mean"])
    assert len(gaps) >= 12 and max(gaps.values()) <= PATCHING_TOLERANCE, gaps
