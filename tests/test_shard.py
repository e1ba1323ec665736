"""Runs over several machines: `--shard I/N` parts that keep each model's cases together, and
`python -m suite.merge`, whose joined run is the single run's record, timing and work tallies aside."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from core.errors import MergeError
from reports.compare import VOLATILE, differences
from suite.merge import merge
from suite.shard import Shard, assign

from .helpers import PANELS, ROOT
from .test_plugin import run_pytest

SPEC = f"""
schema_version: 1
panels: [{PANELS}]
hypotheses:
  - id: pert-embedding-coherence
    claim: Pathway KDs sit together in pert_encoder space.
    probe: pert_embedding_coherence
    axes: {{model: [hepg2_fewshot, jurkat_fewshot], pathway: [ribosome, er_secretory, decoy]}}
    params: {{n_permutations: 499, seed: 0}}
  - id: pert-embedding-cross-line-consistency
    claim: The two lines' models give a pathway's KDs the same nearest KDs.
    probe: pert_embedding_consistency
    axes: {{model_pair: cross_line, pathway: [ribosome, er_secretory, decoy]}}
    params: {{n_permutations: 499, seed: 0}}
"""
# what a part's work differs in from a single run's: its own cache tallies (a pair's second model is
# computed in the part that needs it too), besides the timing fields any two runs differ in
WORK = (*VOLATILE, "run.cache", "cases.*.cache", "run.merged_from")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "hyp").mkdir()
    (root / "hyp/spec.yaml").write_text(SPEC)
    # one disk cache: the parts reuse the probe outputs the whole run computed (the cache tallies are not compared)
    common = [f"--hypotheses={root / 'hyp'}", f"--cache-dir={root / 'cache'}"]
    whole = run_pytest(*common, f"--report-dir={root / 'whole'}")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *common]
    running = [subprocess.Popen([*command, f"--report-dir={root / f'part{i}'}", f"--shard={i}/2"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    parts = [p.communicate(timeout=600)[0] for p in running]
    merged = subprocess.run([sys.executable, "-m", "suite.merge", "--report-dir", str(root / "merged"),
                             str(root / "part1/latest"), str(root / "part2/latest")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    return SimpleNamespace(root=root, whole=whole, parts=parts, merged=merged,
                           record=lambda name: json.loads((root / name / "latest/verdicts.json").read_text()))


def test_two_parts_merged_give_the_single_runs_record(runs):
    assert runs.whole.returncode in (0, 1) and runs.merged.returncode == 0, runs.merged.stderr
    whole, merged = runs.record("whole"), runs.record("merged")
    assert len(merged["cases"]) == len(whole["cases"]) == 9
    assert differences(whole, merged, WORK) == []
    assert [c["q"] for c in merged["cases"]] == [c["q"] for c in whole["cases"]]     # BH over every case
    assert merged["synthesis"] == whole["synthesis"] and merged["run"]["counts"] == whole["run"]["counts"]
    assert (runs.root / "merged/latest/verdict.html").read_text().count('class="card ') == 9


def test_each_part_runs_whole_models_and_loads_only_the_models_its_cases_use(runs):
    parts = [runs.record(f"part{i}") for i in (1, 2)]
    cases = [{c["case_id"] for c in p["cases"]} for p in parts]
    assert not cases[0] & cases[1] and len(cases[0]) + len(cases[1]) == 9
    first_model = [{c["params"].get("model") or c["params"]["model_pair"].split("-vs-")[0] for c in p["cases"]}
                   for p in parts]
    assert not first_model[0] & first_model[1]                      # a model's cases in one part
    loaded = [{name for name, m in p["run"]["models"].items() if "audit" in m} for p in parts]
    # part 1 holds hepg2_fewshot's cases and the pair that starts with it; part 2 jurkat_fewshot's alone
    assert loaded == [{"hepg2_fewshot", "jurkat_fewshot"}, {"jurkat_fewshot"}]
    assert parts[0]["run"]["shard"]["count"] == 2 and len(parts[0]["run"]["shard"]["cases"]) == 9


def _part(index: int, count: int, cases: list[str], whole: list[str]) -> tuple[str, dict]:
    run = {"id": f"r{index}", "started": "t0", "finished": "t1", "models": {}, "shard": {
        "index": index, "count": count, "cases": whole}}
    return f"part{index}", {"run": run, "cases": [{"case_id": c, "p": 0.01, "params": {}, "verdict": "pass"}
                                                 for c in cases]}


@pytest.mark.parametrize("parts, message", [
    ([_part(1, 2, ["a"], ["a", "b"])], "part(s) 2/2 missing"),
    ([_part(1, 2, ["a"], ["a", "b"]), _part(1, 2, ["b"], ["a", "b"])], "part 1/2 given twice"),
    ([_part(1, 2, ["a", "b"], ["a", "b"]), _part(2, 2, ["b"], ["a", "b"])], "case b is in two parts"),
    ([_part(1, 2, ["a"], ["a", "b", "c"]), _part(2, 2, ["b"], ["a", "b", "c"])], "1 missing (c)"),
    ([_part(1, 2, ["a"], ["a", "b"]), _part(2, 2, ["b"], ["a", "x"])], "part of another run"),
    ([("plain", {"run": {}, "cases": []})], "not a part of a sharded run"),
])
def test_parts_that_do_not_make_one_run_are_refused_by_name(parts, message):
    with pytest.raises(MergeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        merge(parts)


def test_models_are_dealt_whole_largest_first_to_the_emptiest_part():
    cases = [SimpleNamespace(case_id=f"{m}-{i}", models=(m,)) for m, n in (("a", 5), ("b", 3), ("c", 3), ("d", 1))
             for i in range(n)]
    parts = assign(cases, 2)
    assert {c.case_id.split("-")[0]: parts[c.case_id] for c in cases} == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert str(Shard.parse(" 2/4 ")) == "2/4"
    for bad in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(pytest.UsageError, match="write I/N"):
            Shard.parse(bad)
