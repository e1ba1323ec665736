"""The pytest integration, run as a user runs it: `pytest` in a subprocess on the demo models."""

import json
import re
import subprocess
import sys
from textwrap import dedent

import pytest

from .helpers import PANELS, ROOT

PANEL_EXTRA = """
schema_version: 1
pathways:
  tiny: {kds: [RPL3, RPL5, RPS6]}        # RPL5 and RPS6 are genes of the model, not KDs
  typo: {kds: [RPL3, RPL7, RPS3X]}       # RPS3X is nobody's gene
  mixed: {kds: [RPL3, MRPL3, PSMA1, SF3B1, SEC61A1, MYC]}   # learned KDs of different programs: a fail
"""

HYPOTHESES = f"""
schema_version: 1
panels: [{PANELS}, panels/extra.yaml]
hypotheses:
  - id: coh
    claim: Pathway KDs <b>cluster</b>.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot], pathway: [ribosome, mixed, tiny, typo]}}
    params: {{n_permutations: 199, n_bootstrap: 199}}
    expected:
      - where: {{pathway: mixed}}
        verdict: fail
        reason: no shared program
  - id: rep
    claim: Ribosome KDs cluster by ΔY.
    probe: representation_clusters
    axes: {{model: [hepg2_fewshot], pathway: [ribosome]}}
    params: {{n_bootstrap: 99, n_clusters: 10}}
  - id: flip
    claim: A known negative that is not negative.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot], pathway: [ribosome]}}
    params: {{n_permutations: 199, n_bootstrap: 199}}
    expected:
      - where: {{pathway: ribosome}}
        verdict: fail
  - id: impossible
    claim: Ribosome KDs sit ten times closer than background.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot], pathway: [ribosome]}}
    params: {{n_permutations: 199, n_bootstrap: 199}}
    pass_rule: {{statistic_above: 10}}
  - id: explore
    claim: A case with no known answer.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot], pathway: [mixed]}}
    params: {{n_permutations: 199, n_bootstrap: 199}}
    expected:
      - where: {{}}
        verdict: exploratory
        reason: nobody knows
"""


def run_pytest(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_run_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    (folder / "hyp" / "panels").mkdir(parents=True)
    (folder / "hyp" / "spec.yaml").write_text(dedent(HYPOTHESES))
    (folder / "hyp" / "panels" / "extra.yaml").write_text(dedent(PANEL_EXTRA))
    result = run_pytest(f"--hypotheses={folder / 'hyp'}", f"--report-dir={folder / 'reports'}")
    return result, folder / "reports" / "latest"


def test_cases_have_readable_ids_and_verdicts_map_to_outcomes(demo_run_result):
    result, _ = demo_run_result
    out = result.stdout
    assert result.returncode == 1, out          # the strict flip and the typo fail the run
    assert "test_hypothesis[coh-hepg2_fewshot-ribosome] PASSED" in out
    assert "test_hypothesis[coh-hepg2_fewshot-mixed] XFAIL" in out
    assert "test_hypothesis[coh-hepg2_fewshot-tiny] SKIPPED" in out
    assert "test_hypothesis[coh-hepg2_fewshot-typo] FAILED" in out
    assert "test_hypothesis[flip-hepg2_fewshot-ribosome] FAILED" in out and "XPASS(strict)" in out
    assert "test_hypothesis[explore-hepg2_fewshot-mixed] EXPLORATORY (fail)" in out    # not failed, not xfail
    assert "1 exploratory" in out.splitlines()[-1]
    assert "only 1 of 3 KDs of pathway 'tiny'" in out
    assert "RPS3X (did you mean RPS3" in out


def test_a_failed_hypothesis_reads_as_its_claim_and_numbers_not_a_traceback(demo_run_result):
    out = demo_run_result[0].stdout
    assert "test_hypothesis[impossible-hepg2_fewshot-ribosome] FAILED" in out
    section = re.split(r"\n[-_=]{5,}", out.split("test_hypothesis[impossible-hepg2_fewshot-ribosome] _")[1])[0]
    assert "impossible-hepg2_fewshot-ribosome: verdict fail" in section
    assert "claim: Ribosome KDs sit ten times closer than background." in section
    assert "95% CI" in section and "p = " in section
    assert "def enforce" not in section and "raise " not in section
    assert "suite/plugin.py" not in section and "suite/verdicts.py" not in section


def test_run_record_is_written_with_the_contract_fields(demo_run_result):
    _, report = demo_run_result
    assert {p.name for p in report.iterdir()} >= {"verdict.html", "verdicts.json", "verdicts.csv"}
    document = json.loads((report / "verdicts.json").read_text())
    run = document["run"]
    assert set(run) >= {"id", "started", "suite_commit", "device", "models", "versions"}
    assert set(run["models"]) == {"hepg2_fewshot", "jurkat_fewshot", "hepg2_zeroshot"}
    assert all(m["fingerprint"].startswith("sha256:") for m in run["models"].values())
    audit = run["models"]["hepg2_fewshot"]["audit"]          # the only model these cases used
    assert audit["attention"] in ("causal", "bidirectional") and audit["n_cells"] == 32
    assert {"order_dependence", "coupling_mean", "repeat_difference", "dimensions", "warnings"} <= set(audit)
    assert "audit" not in run["models"]["jurkat_fewshot"]
    cases = {c["case_id"]: c for c in document["cases"]}
    assert set(cases) == {"coh-hepg2_fewshot-ribosome", "coh-hepg2_fewshot-mixed", "coh-hepg2_fewshot-tiny",
                          "coh-hepg2_fewshot-typo", "flip-hepg2_fewshot-ribosome", "rep-hepg2_fewshot-ribosome",
                          "explore-hepg2_fewshot-mixed", "impossible-hepg2_fewshot-ribosome"}
    # which genes and which matrix the model was fed, and how its columns were matched
    assert audit["inputs"] == {"gene_source": "var_dims.pkl gene_names",
                               "cells": str(ROOT / "fixtures/demo/cells/hepg2.h5ad"), "matrix": "X",
                               "columns_matched": "by name", "output": "genes", "reads_genes": True}
    assert all(c["outputs"] == {"hepg2_fewshot": "genes"} for c in document["cases"])
    explore = cases["explore-hepg2_fewshot-mixed"]
    assert (explore["verdict"], explore["expected"], explore["outcome"]) == ("fail", "exploratory", "exploratory")
    rep = cases["rep-hepg2_fewshot-ribosome"]
    assert rep["verdict"] == "pass" and rep["value"] > 2 and rep["details"]["table"][0]["overlap"] == 28
    ribo = cases["coh-hepg2_fewshot-ribosome"]
    for key in ("case_id", "hypothesis", "probe", "params", "statistic", "effect", "ci", "p", "q", "n",
                "verdict", "expected", "outcome", "reason", "seconds"):
        assert key in ribo
    assert ribo["params"]["model"] == "hepg2_fewshot" and ribo["params"]["pathway"] == "ribosome"
    assert ribo["verdict"] == "pass" and ribo["outcome"] == "passed"
    assert ribo["ci"][0] <= ribo["effect"] <= ribo["ci"][1]
    assert 0 < ribo["p"] <= ribo["q"] <= 1
    mixed, tiny, typo = (cases[f"coh-hepg2_fewshot-{p}"] for p in ("mixed", "tiny", "typo"))
    assert mixed["outcome"] == "xfailed" and mixed["expected"] == "fail"
    assert tiny["verdict"] == "inconclusive" and tiny["q"] is None
    assert typo["verdict"] == "error" and "RPS3X" in typo["reason"]
    assert cases["flip-hepg2_fewshot-ribosome"]["outcome"] == "xpassed-strict"
    header = (report / "verdicts.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,hypothesis,probe,side,model,pathway,verdict,expected,baseline")


def test_html_report_escapes_yaml_text(demo_run_result):
    _, report = demo_run_result
    html = (report / "verdict.html").read_text()
    assert "Pathway KDs &lt;b&gt;cluster&lt;/b&gt;." in html and "<b>cluster</b>" not in html
    assert "What the models compute (audit)" in html and "not audited in this run" in html
    assert 'data-id="rep-hepg2_fewshot-ribosome"' in html and '<table class="small">' in html


def test_junit_xml_of_the_same_run_maps_verdicts_like_pytest(demo_run_result):
    import xml.etree.ElementTree as ET

    _, report = demo_run_result
    suite = ET.parse(report / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    record = json.loads((report / "verdicts.json").read_text())
    assert set(cases) == {c["case_id"] for c in record["cases"]}
    outcome = {name: [child.tag for child in case if child.tag != "properties"] for name, case in cases.items()}
    assert outcome["coh-hepg2_fewshot-ribosome"] == []
    assert outcome["coh-hepg2_fewshot-typo"] == ["error"]
    assert outcome["flip-hepg2_fewshot-ribosome"] == ["failure"]
    assert cases["coh-hepg2_fewshot-mixed"].find("skipped").get("type") == "pytest.xfail"
    assert cases["coh-hepg2_fewshot-tiny"].find("skipped").get("type") == "pytest.skip"
    assert outcome["explore-hepg2_fewshot-mixed"] == []
    assert outcome["impossible-hepg2_fewshot-ribosome"] == ["failure"]
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("8", "1", "2")
    ribo = {p.get("name"): p.get("value") for p in cases["coh-hepg2_fewshot-ribosome"].iter("property")}
    assert ribo["verdict"] == "pass" and float(ribo["q"]) == pytest.approx(
        next(c["q"] for c in record["cases"] if c["case_id"] == "coh-hepg2_fewshot-ribosome"))


@pytest.mark.slow
def test_spec_error_fails_the_run_with_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(dedent(HYPOTHESES).replace("    probe: pert_embedding_coherence",
                                                                  "    probe: pert_embeding_coherence", 1))
    result = run_pytest(f"--hypotheses={tmp_path}", f"--report-dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert f"{tmp_path / 'bad.yaml'}, line 7, field 'hypotheses[0].probe'" in result.stdout
    assert "did you mean 'pert_embedding_coherence'" in result.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_zero_hypotheses_fail_loudly(tmp_path):
    result = run_pytest(f"--hypotheses={tmp_path}", f"--report-dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "no hypotheses collected from" in result.stdout


def test_path_option_outside_the_repo_needs_an_equals_sign(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pytest", "--hypotheses", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "write --hypotheses=PATH" in result.stderr


@pytest.mark.slow
def test_xdist_workers_give_the_same_record(demo_run_result, tmp_path):
    _, report = demo_run_result
    parallel = run_pytest("-n", "2", f"--hypotheses={report.parent.parent / 'hyp'}", f"--report-dir={tmp_path}")
    assert parallel.returncode == 1, parallel.stdout

    def verdicts(folder):
        document = json.loads((folder / "verdicts.json").read_text())
        cases = {c["case_id"]: (c["verdict"], c["outcome"], c["p"], c["q"]) for c in document["cases"]}
        return cases, sorted(document["run"]["models"])

    assert verdicts(tmp_path / "latest") == verdicts(report)


@pytest.mark.slow
def test_without_observed_cells_a_pass_reads_unverified_everywhere(tmp_path):
    """The demo's hepg2_fewshot without its 'perturbed:' entry: which KDs it learned is not judged, so
    a pass of a KD-set test is "pass (unverified: no observed cells)" in the terminal, the record, the
    card, the synthesis grid and its reading, and JUnit; the run still exits 0 and the side of the
    synthesis it speaks for does not hold on it."""
    import xml.etree.ElementTree as ET

    import yaml

    from .helpers import DEMO

    entry = yaml.safe_load((DEMO / "models.yaml").read_text())["models"]["hepg2_fewshot"]
    entry.pop("perturbed")
    entry.pop("sae")
    entry["model_dir"] = str(DEMO / entry["model_dir"])
    entry["cells"]["path"] = str(DEMO / entry["cells"]["path"])
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"schema_version": 1, "models": {"hepg2_fewshot": entry}}))
    (tmp_path / "hyp").mkdir()
    (tmp_path / "hyp" / "spec.yaml").write_text(dedent(f"""
        schema_version: 1
        panels: [{PANELS}]
        hypotheses:
          - id: coh
            claim: Ribosome KDs sit together.
            probe: pert_embedding_coherence
            axes: {{model: [hepg2_fewshot], pathway: [ribosome]}}
            params: {{n_permutations: 199, n_bootstrap: 199}}
        """))
    result = run_pytest(f"--models={tmp_path / 'models.yaml'}", f"--hypotheses={tmp_path / 'hyp'}",
                        f"--report-dir={tmp_path / 'reports'}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "coh-hepg2_fewshot-ribosome] PASSED (unverified: no observed cells)" in result.stdout
    assert re.search(r"1 unverified", result.stdout) and "1 pass(es) unverified (no observed cells for " \
        "hepg2_fewshot)" in result.stdout
    latest = tmp_path / "reports" / "latest"
    case = json.loads((latest / "verdicts.json").read_text())["cases"][0]
    assert case["verdict"] == "pass" and case["outcome"] == "unverified"
    assert case["unverified"].startswith("unverified: no observed cells: which KDs the model learned was not judged")
    record = json.loads((latest / "verdicts.json").read_text())
    assert record["run"]["counts"]["unverified"] == 1
    cell = record["synthesis"]["grids"][0]["rows"][0]["cells"][0][0]
    assert cell["unverified"] and not cell["discovery"]
    reading = record["synthesis"]["grids"][0]["rows"][0]["reading"]["organized"]
    assert reading["state"] == "inconclusive" and "1 pass unverified" in reading["text"]
    properties = {p.get("name"): p.get("value") for p in ET.parse(latest / "junit.xml").iter("property")}
    assert properties["verdict"] == "pass (unverified: no observed cells)"
    html = (latest / "verdict.html").read_text()
    assert ">pass (unverified: no observed cells)</span>" in html and "dot pass unverified" in html
