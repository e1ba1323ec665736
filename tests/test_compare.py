"""`python -m reports diff`: two runs' records field by field, timing and place aside."""

import copy
import json
import subprocess
import sys

from reports.compare import differences

from .helpers import ROOT

RUN = {"schema_version": 1,
       "run": {"id": "a", "started": "t0", "finished": "t1", "suite_commit": "c1", "cache_dir": "/x/cache",
               "models_registry": "/checkout-a/fixtures/demo/models.yaml",
               "models": {"m": {"model_dir": "/checkout-a/fixtures/demo/m", "fingerprint": "sha256:1"}}},
       "synthesis": {"grids": [{"rows": [{"line": "holds"}]}]},
       "cases": [{"case_id": "h-m-p1", "verdict": "pass", "p": 0.01, "seconds": 1.5, "details": {"z": [1.0, 2.0]}},
                 {"case_id": "h-m-p2", "verdict": "fail", "p": 0.5, "seconds": 0.2, "details": {}}]}


def _other(**changes):
    other = copy.deepcopy(RUN)
    other["run"].update(id="b", started="t2", finished="t3", suite_commit="c2", cache_dir="/y",
                        models_registry="/checkout-b/fixtures/demo/models.yaml")
    other["run"]["models"]["m"]["model_dir"] = "/checkout-b/fixtures/demo/m"
    other["cases"] = list(reversed(other["cases"]))          # order of the cases does not matter
    for case in other["cases"]:
        case["seconds"] *= 3
    for path, value in changes.items():
        target = other
        *parents, last = path.split("/")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return other


def test_timing_ids_case_order_and_the_checkouts_folder_are_not_differences():
    assert differences(RUN, _other()) == []


def test_a_changed_number_verdict_nested_detail_or_synthesis_is_named_with_its_path():
    other = _other(**{"cases/1/p": 0.011, "cases/0/verdict": "pass", "synthesis/grids/0/rows/0/line": "open"})
    other["cases"][1]["details"]["z"][1] = 2.5
    assert differences(RUN, other) == ["synthesis.grids[0].rows[0].line: 'holds' -> 'open'",
                                       "cases.h-m-p1.p: 0.01 -> 0.011", "cases.h-m-p1.details.z[1]: 2.0 -> 2.5",
                                       "cases.h-m-p2.verdict: 'fail' -> 'pass'"]


def test_a_case_or_field_on_one_side_only_and_a_type_change_are_differences():
    other = _other()
    other["cases"].pop(0)
    other["cases"][0]["p"] = 1                    # 0.01 as an int 1: a different value and type
    other["cards"] = {}
    assert differences(RUN, other) == ["cases.h-m-p1.p: 0.01 -> 1", "cases.h-m-p2: only in A", "cards: only in B"]


def test_the_command_exits_1_and_lists_them(tmp_path):
    for name, document in (("a", RUN), ("b", _other(**{"cases/0/p": 0.9}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "verdicts.json").write_text(json.dumps(document))
    result = subprocess.run([sys.executable, "-m", "reports", "diff", str(tmp_path / "a"), str(tmp_path / "b")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0] == "cases.h-m-p2.p: 0.5 -> 0.9"
    assert "1 difference(s)" in result.stdout
