"""Hypothesis files: every mistake is a SpecError naming file, line and field."""

import pytest

from core.errors import SpecError
from suite.spec import load_spec_dir, load_spec_file

from .helpers import PANELS

GOOD = f"""
schema_version: 1
panels: [{PANELS}]
hypotheses:
  - id: coherence
    claim: Pathway KDs cluster.
    probe: pert_embedding_coherence
    axes: {{model: all, pathway: [ribosome, decoy]}}
    params: {{n_permutations: 199, seed: 3}}
    pass_rule: {{p_below: 0.01}}
    expected:
      - where: {{pathway: decoy}}
        verdict: fail
        reason: no program
"""


def spec_error(write, text: str, culprit: str = "spec.yaml") -> SpecError:
    path = write("spec.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert str(path.parent / culprit) in str(info.value)
    return info.value


def test_valid_file_reads_into_typed_fields(write):
    (spec,) = load_spec_file(write("spec.yaml", GOOD))
    assert spec.id == "coherence"
    assert spec.axes == {"model": "all", "pathway": ("ribosome", "decoy")}
    assert spec.params.n_permutations == 199 and spec.params.seed == 3
    assert spec.params.null_model == "magnitude_stratified"          # default
    assert spec.pass_rule.p_below == 0.01 and spec.pass_rule.effect_above == 0.0
    assert spec.expected[0].verdict == "fail"
    assert set(spec.panels) >= {"ribosome", "decoy", "er_secretory"}
    assert spec.line == 4 and spec.axes_line == 7


def test_yaml_syntax_error_names_the_line(write):
    err = spec_error(write, GOOD.replace("probe: pert_embedding_coherence", "probe: [unclosed"))
    assert "not valid YAML" in str(err) and err.line in (6, 7)


def test_unknown_probe_suggests_the_close_one(write):
    err = spec_error(write, GOOD.replace("probe: pert_embedding_coherence", "probe: pert_embedding_coherance"))
    assert err.line == 6 and err.field.endswith("probe")
    assert "did you mean 'pert_embedding_coherence'" in str(err)


def test_unknown_field_suggests_the_close_one(write):
    err = spec_error(write, GOOD.replace("    claim:", "    claimm:"))
    assert "unknown key 'claimm'" in str(err) and "did you mean 'claim'" in str(err)
    assert err.line == 5


def test_unknown_param_names_the_allowed_ones(write):
    err = spec_error(write, GOOD.replace("seed: 3", "sed: 3"))
    assert "unknown key 'sed'" in str(err) and "seed" in str(err) and err.field == "hypotheses[0].params.sed"


def test_duplicate_key_is_an_error_not_a_silent_overwrite(write):
    twice = "    probe: pert_embedding_coherence\n    probe: pert_embedding_consistency\n"
    err = spec_error(write, GOOD.replace("    probe: pert_embedding_coherence\n", twice))
    assert "duplicate key 'probe'" in str(err) and "first written on line 6" in str(err) and err.line == 7


def test_wrong_type_and_out_of_range(write):
    err = spec_error(write, GOOD.replace("n_permutations: 199", "n_permutations: many"))
    assert "expected a whole number" in str(err) and "many" in str(err)
    err = spec_error(write, GOOD.replace("n_permutations: 199", "n_permutations: 5"))
    assert "out of range" in str(err)
    err = spec_error(write, GOOD.replace("p_below: 0.01", "p_below: 2"))
    assert "out of range" in str(err) and err.field == "hypotheses[0].pass_rule.p_below"


def test_bad_choice_lists_the_choices(write):
    err = spec_error(write, GOOD.replace("seed: 3", "seed: 3, null_model: shuffled"))
    assert "'shuffled' is not one of: magnitude_stratified, label_permutation" in str(err)


def test_bare_null_key_is_explained(write):
    err = spec_error(write, GOOD.replace("seed: 3", "seed: 3, null: label_permutation"))
    assert "quote the key" in str(err)


def test_unknown_pathway_in_axes_and_expectations(write):
    err = spec_error(write, GOOD.replace("pathway: [ribosome, decoy]", "pathway: [ribosom]"))
    assert "unknown pathway 'ribosom'" in str(err) and "did you mean 'ribosome'" in str(err)
    err = spec_error(write, GOOD.replace("where: {pathway: decoy}", "where: {pathway: decoi}"))
    assert "unknown pathway 'decoi'" in str(err)


def test_missing_axis_and_schema_version(write):
    err = spec_error(write, GOOD.replace("axes: {model: all, pathway: [ribosome, decoy]}", "axes: {model: all}"))
    assert "missing axis 'pathway'" in str(err)
    err = spec_error(write, GOOD.replace("schema_version: 1", "schema_version: 7"))
    assert "schema_version 7 is not supported" in str(err) and err.line == 1


def test_bad_id_and_duplicate_ids_across_files(tmp_path, write):
    err = spec_error(write, GOOD.replace("id: coherence", "id: Coherence Test"))
    assert "must be lower-case" in str(err)
    write("a.yaml", GOOD)
    write("b.yaml", GOOD)
    with pytest.raises(SpecError, match="hypothesis id 'coherence' is used twice"):
        load_spec_dir(tmp_path)


def test_missing_panel_file_and_folder(write, tmp_path):
    err = spec_error(write, GOOD.replace(str(PANELS), "nowhere/panels.yaml"))
    assert "panel file 'nowhere/panels.yaml' not found" in str(err) and err.field == "panels"
    with pytest.raises(SpecError, match="hypotheses folder not found"):
        load_spec_dir(tmp_path / "missing")


def test_panel_file_among_hypotheses_is_explained(write, tmp_path):
    write("panels.yaml", "schema_version: 1\npathways:\n  p: {kds: [A, B, C]}\n")
    with pytest.raises(SpecError, match="this is a panel file") as info:
        load_spec_dir(tmp_path)
    assert "move it into a subfolder" in str(info.value)


def test_cross_field_problems_are_spec_errors(write):
    text = GOOD.replace("probe: pert_embedding_coherence", "probe: representation_coherence")
    err = spec_error(write, text.replace("params: {n_permutations: 199, seed: 3}", "params: {representation: layer}"))
    assert "needs 'layer: N'" in str(err) and err.line == 8
    err = spec_error(write, text.replace("params: {n_permutations: 199, seed: 3}",
                                         "params: {representation: sae, layer: 2}"))
    assert "'layer' applies to representation 'layer' only" in str(err)


def test_definitions_hold_anchors_for_reuse(write):
    text = GOOD.replace("hypotheses:\n", "definitions:\n  neg: &neg\n    - {where: {pathway: decoy}, verdict: fail}\n"
                        "hypotheses:\n")
    text = text.replace("""    expected:
      - where: {pathway: decoy}
        verdict: fail
        reason: no program
""", "    expected: *neg\n")
    (spec,) = load_spec_file(write("spec.yaml", text))
    assert spec.expected[0].verdict == "fail" and spec.expected[0].where == {"pathway": "decoy"}


def test_gmt_panels(write):
    gmt = write("sets.gmt", "RIBO\tribosome\tRPL3\tRPL7\tRPS3\nBAD LINE WITH SPACES\n")
    text = GOOD.replace(str(PANELS), str(gmt)).replace("[ribosome, decoy]", "[RIBO]")
    text = text.replace("pathway: decoy", "pathway: RIBO")
    err = spec_error(write, text, culprit="sets.gmt")
    assert "a GMT line needs" in str(err) and err.line == 2
    gmt.write_text("RIBO\tribosome\tRPL3\tRPL7\tRPS3\n")
    (spec,) = load_spec_file(write("spec.yaml", text))
    assert spec.panels["RIBO"].kds == ("RPL3", "RPL7", "RPS3") and spec.panels["RIBO"].line == 1
