"""Expanding hypotheses into cases: ids, axis selectors and expected verdicts."""

import pytest

from suite.cases import ModelInfo, expand, expand_all
from suite.errors import SpecError
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
