"""The dual-probe synthesis: each pathway's line follows the rule shown in the report."""

import pytest

from suite.synthesis import Cell, read_side, read_sides, synthesize


def _cell(verdict: str, q: float | None = 0.001) -> Cell:
    return Cell("c", verdict, None, q, verdict == "pass" and (q is None or q < 0.05))


def _case(hypothesis, side, verdict, model="m1", pathway="ribosome", q=0.001, pair=None):
    params = {"model_pair": pair} if pair else {"model": model}
    if pathway:
        params["pathway"] = pathway
    return {"case_id": f"{hypothesis}-{pair or model}-{pathway}", "hypothesis": hypothesis, "probe": "p",
            "side": side, "verdict": verdict, "expected": None, "q": q, "params": params}


PASS, FAIL = [_cell("pass")] * 3, [_cell("fail")] * 3


@pytest.mark.parametrize("organized, routed, line", [
    (PASS, PASS, "organized and routed"),
    (PASS, FAIL, "organized but not routed"),
    (FAIL, PASS, "routed but not organized"),
    (FAIL, FAIL, "neither"),
])
def test_the_four_lines(organized, routed, line):
    assert read_sides(organized, routed, "ribosome").line == line


def test_one_stray_pass_does_not_make_a_side_hold():
    reading = read_side("routed", [_cell("pass")] + [_cell("fail")] * 4, "decoy")
    assert reading.state == "does not hold"
    assert reading.text == "1 of 5 pass with q < 0.05"


def test_a_pass_that_does_not_survive_correction_is_not_a_discovery():
    reading = read_side("organized", [_cell("pass", q=0.2), _cell("pass", q=0.2), _cell("pass")], "ribosome")
    assert reading.state == "does not hold"
    assert "2 more pass only before correction" in reading.text


def test_split_or_unsettled_evidence_is_inconclusive():
    assert read_side("routed", [_cell("pass"), _cell("fail")], "x").state == "inconclusive"
    unsettled = read_side("routed", [_cell("fail"), _cell("inconclusive", None), _cell("error", None)], "x")
    assert unsettled.state == "inconclusive" and "2 inconclusive or errored" in unsettled.text
    assert read_sides(PASS, [_cell("pass"), _cell("fail")], "x").line == "inconclusive"


def test_a_side_without_cases_says_so():
    reading = read_sides(PASS, [], "secretory_nb03")
    assert reading.line == "inconclusive"
    assert reading.routed.text == "no routed hypothesis covers secretory_nb03"


def test_grids_per_model_and_pair_with_organized_columns_first():
    cases = [_case("ko", "routed", "fail"), _case("coh", "organized", "pass"),
             _case("coh", "organized", "fail", pathway="decoy"), _case("ko", "routed", "fail", pathway="decoy"),
             _case("audit", None, "pass", pathway=None), _case("cross", None, "pass", pair="m1-vs-m2")]
    grids = synthesize(cases)["grids"]
    assert [(g["kind"], g["name"]) for g in grids] == [("model", "m1"), ("pair", "m1-vs-m2")]
    model = grids[0]
    assert [c["hypothesis"] for c in model["columns"]] == ["coh", "ko"]
    assert [(r["pathway"], r["reading"]["line"]) for r in model["rows"]] == [
        ("ribosome", "organized but not routed"), ("decoy", "neither")]
    assert [[cell["verdict"] for cell in cells] for cells in model["rows"][0]["cells"]] == [["pass"], ["fail"]]
    assert model["overall"][0]["hypothesis"] == "audit"
    assert grids[1]["rows"][0]["reading"] is None


def _grid(cases, name):
    return next(g for g in synthesize(cases)["grids"] if g["name"] == name)


def test_a_pair_case_with_a_side_speaks_for_both_of_its_models():
    cases = [_case("organized-1", "organized", "fail", model="m1"), _case("routed-1", "routed", "pass", model="m1"),
             _case("routed-1", "routed", "pass", model="m2"),
             *[_case(f"conserved-{i}", "organized", "pass", pair="m1-vs-m2") for i in range(2)],
             _case("agreement", None, "pass", pair="m1-vs-m2")]
    for model in ("m1", "m2"):
        grid = _grid(cases, model)
        assert [c["hypothesis"] for c in grid["columns"]] == (["organized-1"] if model == "m1" else []) + [
            "conserved-0", "conserved-1", "routed-1"]
        assert grid["rows"][0]["reading"]["organized"]["text"] == (
            "2 of 3 pass with q < 0.05" if model == "m1" else "2 of 2 pass with q < 0.05")
    assert [c["hypothesis"] for c in _grid(cases, "m1-vs-m2")["columns"]] == ["conserved-0", "conserved-1",
                                                                              "agreement"]


@pytest.mark.parametrize("patching, jacobian, q, circuit", [
    ("pass", "pass", 0.001, True), ("pass", "fail", 0.001, False), ("fail", "pass", 0.001, False),
    ("pass", "pass", 0.2, False)])     # passes that do not survive the correction are no evidence
def test_convergent_circuit_evidence_needs_the_targeted_jacobian_and_feature_patching_to_pass(
        patching, jacobian, q, circuit):
    cases = [{**_case("tj", "routed", jacobian, q=q), "probe": "targeted_jacobian"},
             {**_case("patch", "routed", patching, q=q), "probe": "sae_feature_patching"},
             {**_case("coh", "organized", "pass"), "probe": "representation_coherence"}]
    reading = _grid(cases, "m1")["rows"][0]["reading"]
    assert (reading["circuit"] is not None) == circuit
    if circuit:
        assert reading["circuit"].startswith("convergent circuit evidence")
