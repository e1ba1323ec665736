"""Expanding hypotheses into cases: ids, axis selectors and expected verdicts."""

import pytest

from core.errors import SpecError
from suite.cases import ModelInfo, expand, expand_all
from suite.spec import load_spec_file

from .helpers import PANELS

MODELS = [ModelInfo("hepg2_fewshot", "hepg2", "fewshot"), ModelInfo("jurkat_fewshot", "jurkat", "fewshot"),
          ModelInfo("hepg2_zeroshot", "hepg2", "zeroshot")]


def spec(write, probe="pert_embedding_coherence", axes="{model: all, pathway: [ribosome, decoy]}", expected=""):
    text = f"""
    schema_version: 1
    panels: [{PANELS}]
    hypotheses:
      - id: h
        claim: c
        probe: {probe}
        axes: {axes}
    {expected}
    """
    return load_spec_file(write("h.yaml", text))[0]


def test_ids_join_hypothesis_and_axis_values(write):
    ids = [c.case_id for c in expand(spec(write), MODELS)]
    assert ids == ["h-hepg2_fewshot-ribosome", "h-hepg2_fewshot-decoy", "h-jurkat_fewshot-ribosome",
                   "h-jurkat_fewshot-decoy", "h-hepg2_zeroshot-ribosome", "h-hepg2_zeroshot-decoy"]


@pytest.mark.parametrize("selector, pairs", [
    ("cross_line", [("hepg2_fewshot", "jurkat_fewshot")]),
    ("same_line", [("hepg2_fewshot", "hepg2_zeroshot")]),
    ("all", [("hepg2_fewshot", "jurkat_fewshot"), ("hepg2_fewshot", "hepg2_zeroshot"),
             ("jurkat_fewshot", "hepg2_zeroshot")]),
    ("[[jurkat_fewshot, hepg2_zeroshot]]", [("jurkat_fewshot", "hepg2_zeroshot")]),
])
def test_model_pair_selectors(write, selector, pairs):
    cases = expand(spec(write, "pert_embedding_consistency", f"{{model_pair: {selector}, pathway: [decoy]}}"), MODELS)
    assert [c.axes["model_pair"] for c in cases] == pairs
    assert cases[0].case_id == f"h-{pairs[0][0]}-vs-{pairs[0][1]}-decoy"


def test_expectations_match_axes_and_model_attributes(write):
    expected = """    expected:
          - {where: {pathway: decoy}, verdict: fail, reason: nothing planted}
          - {where: {pathway: ribosome, split: zeroshot}, verdict: fail}"""
    cases = {c.case_id: c for c in expand(spec(write, expected=expected), MODELS)}
    assert cases["h-jurkat_fewshot-decoy"].expected.reason == "nothing planted"
    assert cases["h-hepg2_zeroshot-ribosome"].expected.verdict == "fail"
    assert cases["h-hepg2_fewshot-ribosome"].expected is None


def test_conflicting_expectations_and_unknown_models_are_errors(write):
    expected = """    expected:
          - {where: {pathway: decoy}, verdict: fail}
          - {where: {model: jurkat_fewshot}, verdict: pass}"""
    with pytest.raises(SpecError, match="expectations disagree"):
        expand(spec(write, expected=expected), MODELS)
    with pytest.raises(SpecError, match="did you mean 'jurkat_fewshot'"):
        expand(spec(write, axes="{model: [jurkat_fewshoot], pathway: all}"), MODELS)


def test_duplicate_case_ids_across_hypotheses_are_errors(write):
    first = spec(write)
    with pytest.raises(SpecError, match="two cases share the id"):
        expand_all([first, first], MODELS)


@pytest.mark.parametrize("where, culprit", [
    ("{model: jurkat_fewshoot}", "did you mean 'jurkat_fewshot'"),
    ("{cell_line: hepg3}", "did you mean 'hepg2'"),
    ("{split: fewshots}", "did you mean 'fewshot'"),
    ("{backbone: gtp2}", "did you mean 'gpt2'"),        # a fixed vocabulary, whatever the registry holds
])
def test_an_expectation_naming_what_the_registry_lacks_is_an_error(write, where, culprit):
    """It would silently match no case, and the expectation would never be checked."""
    expected = f"""    expected:
          - {{where: {where}, verdict: fail}}"""
    with pytest.raises(SpecError, match=culprit) as info:
        expand(spec(write, expected=expected), MODELS)
    assert "h.yaml, line 9" in str(info.value) and "no registry model has" in str(info.value)


EXPECTATIONS = """
schema_version: 1
expectations:
  h:
    - {where: {model: hepg2_fewshot, pathway: decoy}, verdict: fail, reason: nothing planted}
    - {where: {pathway: ribosome}, verdict: exploratory}
  another-hypothesis-of-another-folder:
    - {where: {}, verdict: pass}
"""


def test_an_expectations_file_adds_known_outcomes_to_the_hypotheses_it_names(write):
    from suite.spec import load_expectations

    specs = load_expectations(write("expected.yaml", EXPECTATIONS), [spec(write)])
    cases = {c.case_id: c for c in expand(specs[0], MODELS)}
    assert cases["h-hepg2_fewshot-decoy"].expected.verdict == "fail"
    assert cases["h-jurkat_fewshot-decoy"].expected is None
    assert {cases[f"h-{m.name}-ribosome"].expected.verdict for m in MODELS} == {"exploratory"}


@pytest.mark.parametrize("edit, culprit", [
    (("verdict: exploratory", "verdict: either"), "'either'"),
    (("{pathway: ribosome}", "{pathway: ribosme}"), "did you mean 'ribosome'"),
    (("{pathway: ribosome}", "{pathwy: ribosome}"), "did you mean 'pathway'"),
])
def test_mistakes_in_an_expectations_file_name_its_line(write, edit, culprit):
    from suite.spec import load_expectations

    hypothesis = spec(write)
    path = write("expected.yaml", EXPECTATIONS.replace(*edit))
    with pytest.raises(SpecError, match=culprit) as info:
        specs = load_expectations(path, [hypothesis])
        expand(specs[0], MODELS)
    assert f"{path}, line" in str(info.value)


def test_a_model_missing_from_the_registry_in_an_expectations_file_is_an_error(write):
    from suite.spec import load_expectations

    path = write("expected.yaml", EXPECTATIONS.replace("model: hepg2_fewshot", "model: k562_fewshot"))
    specs = load_expectations(path, [spec(write)])
    with pytest.raises(SpecError, match="model 'k562_fewshot', which no registry model has") as info:
        expand(specs[0], MODELS)
    assert f"{path}, line 4" in str(info.value) and "expectations.h.where.model" in str(info.value)


def test_an_id_one_typo_from_a_hypothesis_of_the_run_is_an_error(write):
    from dataclasses import replace

    from suite.spec import load_expectations

    hypothesis = replace(spec(write), id="coherence")
    path = write("expected.yaml", EXPECTATIONS.replace("  h:", "  coherense:"))
    with pytest.raises(SpecError, match="no hypothesis has the id 'coherense'") as info:
        load_expectations(path, [hypothesis])
    assert f"{path}, line 3" in str(info.value) and "did you mean 'coherence'" in str(info.value)


def test_a_shared_hypothesis_file_may_expect_things_of_models_this_registry_lacks(write):
    """`split: zeroshot` in a file that several registries share is no mistake in a fewshot-only run."""
    expected = """    expected:
          - {where: {split: zeroshot}, verdict: fail}"""
    cases = expand(spec(write, expected=expected), MODELS[:2])
    assert all(c.expected is None for c in cases)
