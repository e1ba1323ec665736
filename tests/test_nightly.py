"""The nightly loop on real checkpoints: run, swap a checkpoint for a retrained one, rerun against
the baseline; and a parallel run of the whole demo agreeing with the serial one.

The retrained checkpoint is the demo's hepg2_zeroshot: the same architecture and gene space as
hepg2_fewshot, trained on other lines, so its planted structure differs exactly where the
ground truth says (er_secretory is a program of hepg2 only). The registry gives no perturbed
cells: these runs judge learnedness from the checkpoints alone (untrained KDs are left out).
"""

import json
import shutil
import subprocess
import sys
from textwrap import dedent

import pytest
import yaml

from .helpers import DEMO, PANELS, ROOT
from .test_plugin import run_pytest

TRUTH = yaml.safe_load((DEMO / "ground_truth.yaml").read_text())
HYPOTHESES = f"""
schema_version: 1
panels: [{PANELS}]
hypotheses:
  - id: pert-embedding-nn-hit-rate
    claim: A pathway KD's nearest neighbour in pert_encoder space is another KD of the pathway.
    probe: pert_embedding_coherence
    axes: {{model: all, pathway: all}}
    params: {{statistic: nn_hit_rate, null_model: magnitude_stratified, magnitude: output_shift,
              n_permutations: 2000, seed: 0}}
    pass_rule: {{p_below: 0.05, effect_above: 0.0}}
    expected: &negatives
      - {{where: {{pathway: decoy}}, verdict: fail}}
      - {{where: {{pathway: er_secretory, cell_line: jurkat}}, verdict: fail}}
      - {{where: {{pathway: er_secretory, split: zeroshot}}, verdict: fail}}
  - id: output-shift-coherence
    claim: Pathway KDs shift the predicted expression alike.
    probe: representation_coherence
    axes: {{model: all, pathway: all}}
    params: {{representation: output_shift}}
    pass_rule: {{p_below: 0.05, effect_above: 0.1}}
    expected: *negatives
"""


def _registry(models_dir) -> str:
    cells = DEMO / "cells"
    entry = "cells: {{path: {cells}/{line}.h5ad, obs_column: gene, control_value: non-targeting}}"
    return dedent(f"""
        schema_version: 1
        models:
          hepg2_fewshot:
            model_dir: {models_dir / 'hepg2_fewshot'}
            {entry.format(cells=cells, line='hepg2')}
            cell_line: hepg2
            split: fewshot
          jurkat_fewshot:
            model_dir: {DEMO / 'models/jurkat_fewshot'}
            {entry.format(cells=cells, line='jurkat')}
            cell_line: jurkat
            split: fewshot
        """)


def _record(reports, which="latest") -> dict:
    return json.loads((reports / which / "verdicts.json").read_text())


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """Night 1 on the demo checkpoints; night 2 after hepg2_fewshot's checkpoint was replaced."""
    root = tmp_path_factory.mktemp("nightly")
    shutil.copytree(DEMO / "models/hepg2_fewshot", root / "models/hepg2_fewshot")
    (root / "models.yaml").write_text(_registry(root / "models"))
    (root / "hyp").mkdir()
    (root / "hyp/spec.yaml").write_text(HYPOTHESES)
    options = [f"--models={root / 'models.yaml'}", f"--hypotheses={root / 'hyp'}",
               f"--report-dir={root / 'reports'}", f"--cache-dir={root / 'cache'}"]
    first = run_pytest(*options)
    night1 = _record(root / "reports")
    shutil.rmtree(root / "models/hepg2_fewshot")
    shutil.copytree(DEMO / "models/hepg2_zeroshot", root / "models/hepg2_fewshot")
    second = run_pytest(*options, "--baseline=latest")
    return first, second, night1, _record(root / "reports"), root / "reports"


def _predicted_flips() -> set[str]:
    flips = set()
    for hypothesis in ("pert-embedding-nn-hit-rate", "output-shift-coherence"):
        before, after = TRUTH["expected"][hypothesis]["hepg2_fewshot"], TRUTH["expected"][hypothesis]["hepg2_zeroshot"]
        flips |= {f"{hypothesis}-hepg2_fewshot-{p}" for p in before if before[p] != after[p]}
    return flips


def test_exactly_the_affected_cases_fail_as_regressions(nightly):
    first, second, night1, night2, _ = nightly
    assert first.returncode == 0, first.stdout[-3000:]
    assert second.returncode == 1, second.stdout[-3000:]
    flips = {c["case_id"] for c in night2["cases"] if c["change"]["kind"] == "flip"}
    assert flips == _predicted_flips() == {"pert-embedding-nn-hit-rate-hepg2_fewshot-er_secretory",
                                           "output-shift-coherence-hepg2_fewshot-er_secretory"}
    failed = {line.split("[", 1)[1].split("]", 1)[0] for line in second.stdout.splitlines()
              if line.startswith("FAILED")}
    assert failed == flips
    assert "regression since baseline" in second.stdout and "verdict pass -> fail" in second.stdout
    before = {c["case_id"]: c["outcome"] for c in night1["cases"]}
    assert {c["case_id"]: c["outcome"] for c in night2["cases"] if c["case_id"] not in flips} == {
        k: v for k, v in before.items() if k not in flips}
    assert night2["run"]["counts"]["regressions"] == 2
    kinds = {c["case_id"]: c["change"]["kind"] for c in night2["cases"]}
    assert {k for i, k in kinds.items() if "jurkat" in i} == {"steady"}     # same checkpoint, same numbers
    assert "drift" in {k for i, k in kinds.items() if "hepg2" in i}


def test_the_report_lists_the_changes_and_the_new_checkpoint(nightly):
    *_, night1, night2, reports = nightly
    against = night2["run"]["baseline"]
    assert against["id"] == night1["run"]["id"] and list(against["fingerprint_changes"]) == ["hepg2_fewshot"]
    html = (reports / "latest" / "verdict.html").read_text()
    assert 'id="changes"' in html and html.count('data-change="flip"') == 2
    assert "er_secretory" in html.split('id="changes"')[1].split("</table>")[0]
    assert "new since baseline" in html


def test_unchanged_models_probes_come_from_the_cache(nightly):
    *_, night1, night2, _ = nightly
    assert night1["run"]["cache"]["jurkat_fewshot"]["computed"] > 0
    assert night2["run"]["cache"]["jurkat_fewshot"] == {"reused": night1["run"]["cache"]["jurkat_fewshot"]["computed"],
                                                        "computed": 0}
    assert night2["run"]["cache"]["hepg2_fewshot"]["computed"] > 0


def test_runs_are_kept_and_nothing_promotes_itself(nightly):
    *_, night1, night2, reports = nightly
    kept = sorted(p.name for p in (reports / "runs").iterdir())
    assert kept == sorted([night1["run"]["id"], night2["run"]["id"]])
    assert not (reports / "baseline").exists()


def test_parallel_demo_run_gives_the_serial_verdicts(demo_report, tmp_path):
    """`pytest -n 2` on the whole demo (probe outputs from the serial run's cache) = `pytest -n 0`."""
    cache = demo_report.parent.parent / "cache"
    parallel = run_pytest("-n", "2", f"--report-dir={tmp_path}", f"--cache-dir={cache}")
    assert parallel.returncode == 0, parallel.stdout[-3000:]
    assert "scheduling tests via ModelScheduling" in parallel.stdout

    def cases(folder):
        ignored = ("seconds", "cache")
        return [{k: v for k, v in c.items() if k not in ignored}
                for c in json.loads((folder / "verdicts.json").read_text())["cases"]]

    serial, together = cases(demo_report), cases(tmp_path / "latest")
    assert sorted(c["case_id"] for c in together) == sorted(c["case_id"] for c in serial)
    assert sorted(together, key=lambda c: c["case_id"]) == sorted(serial, key=lambda c: c["case_id"])


def test_the_nightly_script_compares_with_the_promoted_baseline_only(tmp_path):
    shutil.copytree(DEMO / "models/hepg2_fewshot", tmp_path / "models/hepg2_fewshot")
    (tmp_path / "models.yaml").write_text(_registry(tmp_path / "models"))
    (tmp_path / "hyp").mkdir()
    (tmp_path / "hyp/spec.yaml").write_text(HYPOTHESES.split("  - id: output-shift-coherence")[0])
    reports = tmp_path / "reports"

    def night() -> subprocess.CompletedProcess:
        command = ["bash", str(ROOT / "scripts/nightly.sh"), str(tmp_path / "models.yaml"), str(reports), "--",
                   f"--hypotheses={tmp_path / 'hyp'}", f"--cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    first = night()
    assert first.returncode == 0 and "no promoted baseline" in first.stdout, first.stdout[-2000:]
    promote = subprocess.run([sys.executable, "-m", "reports", "promote", str(reports), "latest"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert promote.returncode == 0, promote.stderr
    shutil.rmtree(tmp_path / "models/hepg2_fewshot")
    shutil.copytree(DEMO / "models/hepg2_zeroshot", tmp_path / "models/hepg2_fewshot")
    second = night()
    assert second.returncode == 1 and "1 regression(s)" in second.stdout, second.stdout[-2000:]
    third = night()                       # still against the promoted night, not the failing one
    assert third.returncode == 1 and "1 regression(s)" in third.stdout
    assert (reports / "baseline").resolve() != (reports / "latest").resolve()
    assert len(list((reports / "runs").iterdir())) == 3


def test_the_same_run_twice_gives_identical_statistics(tmp_path):
    """No cache: both runs compute everything; seeds fix every draw, so every number repeats."""
    (tmp_path / "hyp").mkdir()
    (tmp_path / "hyp/spec.yaml").write_text(HYPOTHESES)
    records = []
    for night in ("a", "b"):
        result = run_pytest(f"--hypotheses={tmp_path / 'hyp'}", f"--report-dir={tmp_path / night}", "--no-cache",
                            "-k", "hepg2_fewshot")
        assert result.returncode == 0, result.stdout[-2000:]
        records.append(_record(tmp_path / night))
    first, second = ([{k: v for k, v in c.items() if k != "seconds"} for c in r["cases"]] for r in records)
    assert len(first) == 2 * len(yaml.safe_load(PANELS.read_text())["pathways"]) and first == second
    run = records[0]["run"]
    assert {"torch", "arc-state", "numpy"} <= set(run["versions"]) and "torch_threads" in run["determinism"]
    assert all(c["seed"] is not None for c in records[0]["cases"] if c["verdict"] in ("pass", "fail"))
