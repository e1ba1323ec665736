"""The bundled demo: the suite's verdicts equal the documented, planted ground truth.

The verdicts are those of the README's first command (`pytest` on the demo, run once per
session by the `demo_report` fixture): the path a user takes, record and all.
"""

import json

import pytest
import yaml

from suite.cases import ModelInfo, expand_all
from suite.spec import load_spec_dir

from .helpers import DEMO, ROOT

TRUTH = yaml.safe_load((DEMO / "ground_truth.yaml").read_text())


def _cases(registry):
    infos = [ModelInfo(e.name, e.cell_line, e.split) for e in registry.values()]
    return expand_all(load_spec_dir(ROOT / "hypotheses"), infos)


def _truth_for(case) -> str:
    """pass, fail, inconclusive, or either (the demo cannot settle this case; see its README)."""
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
        if truth != "either" and result["verdict"] != truth:
            mismatches.append(f"{case.case_id}: suite says {result['verdict']} ({result['reason']}), truth {truth}")
    assert not mismatches, "\n".join(mismatches)


def test_decoy_never_passes(demo_registry, verdicts):
    decoys = [c for c in _cases(demo_registry)
              if c.axes.get("pathway") == "decoy" and c.spec.id not in TRUTH["unvalidated"]]
    assert len(decoys) >= 20
    passed = [c.case_id for c in decoys if verdicts[c.case_id]["verdict"] == "pass"]
    assert not passed


def test_the_synthesis_reads_each_planted_program(record):
    """Learned programs are organized and routed; the decoy and unlearned programs are neither."""
    lines = {(grid["name"], row["pathway"]): row["reading"]["line"]
             for grid in record["synthesis"]["grids"] if grid["kind"] == "model" for row in grid["rows"]}
    expected = {(model, pathway): "organized and routed" if learned else "neither"
                for model, truth in TRUTH["learned"].items() for pathway, learned in truth["program_learned"].items()}
    assert {key: lines[key] for key in expected} == expected


def test_yaml_expectations_agree_with_the_ground_truth(demo_registry):
    """For the planted-data hypotheses; the model-audit family's expectations are facts of the
    installed libraries, checked in tests/test_audit.py."""
    for case in _cases(demo_registry):
        if case.spec.id in TRUTH["unvalidated"]:
            assert case.expected and case.expected.verdict == "either", case.case_id
            continue
        if case.spec.id not in TRUTH["expected"] or _truth_for(case) == "inconclusive":
            continue                # an inconclusive case is skipped whatever it was expected to do
        declared = case.expected.verdict if case.expected else "pass"
        assert declared == _truth_for(case), case.case_id
