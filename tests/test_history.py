"""Run history, baselines, drift and the probe cache, piece by piece (the whole nightly loop on real
checkpoints is tests/test_nightly.py)."""

import json
import multiprocessing
import os

import numpy as np
import pytest

from core.errors import SpecError
from fixtures.device import worker_gpu
from reports import history
from suite.baseline import compare, load_baseline, regression_message
from suite.cache import ArrayCache
from suite.spec import load_spec_file

from .helpers import PANELS


def _write_run(folder, run_id="r1", verdict="pass"):
    folder.mkdir(parents=True, exist_ok=True)
    case = {"case_id": "c1", "verdict": verdict, "value": 0.5, "effect": 0.2, "p": 0.01}
    (folder / "verdicts.json").write_text(json.dumps({"run": {"id": run_id, "models": {}}, "cases": [case]}))


def test_a_run_is_published_whole_and_latest_follows_it(tmp_path):
    first = history.publish(tmp_path, "r1", lambda out: _write_run(out, "r1"))
    assert first == tmp_path / "runs" / "r1" and (tmp_path / "latest").resolve() == first.resolve()
    second = history.publish(tmp_path, "r2", lambda out: _write_run(out, "r2"))
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert history.run_ids(tmp_path) == ["r1", "r2"]
    assert not (tmp_path / "baseline").exists()          # nothing promotes itself


def test_a_killed_run_leaves_no_record_and_moves_no_pointer(tmp_path):
    history.publish(tmp_path, "r1", lambda out: _write_run(out, "r1"))

    def dies(out):
        _write_run(out, "r2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        history.publish(tmp_path, "r2", dies)
    assert history.run_ids(tmp_path) == ["r1"]
    assert (tmp_path / "latest").resolve() == (tmp_path / "runs" / "r1").resolve()


def test_promote_and_resolve_the_baseline(tmp_path):
    run = history.publish(tmp_path, "20261121-010203-abcd", lambda out: _write_run(out, "x"))
    with pytest.raises(FileNotFoundError, match="promote a run with --update-baseline"):
        history.resolve(tmp_path, "baseline")
    history.promote(tmp_path, run)
    assert history.resolve(tmp_path, "baseline") == run.resolve()
    assert history.resolve(tmp_path, "latest") == run.resolve()
    assert history.resolve(tmp_path, "20261121-010203-abcd") == run.resolve()
    assert history.resolve(tmp_path, str(run / "verdicts.json")) == run.resolve()
    with pytest.raises(FileNotFoundError, match="did you mean '20261121-010203-abcd'"):
        history.resolve(tmp_path, "20261121-010203-abce")


def test_an_old_plain_latest_folder_is_kept_as_a_run(tmp_path):
    _write_run(tmp_path / "latest", "old-run")
    history.publish(tmp_path, "new-run", lambda out: _write_run(out, "new-run"))
    assert history.run_ids(tmp_path) == ["new-run", "old-run"]
    assert json.loads((tmp_path / "runs/old-run/verdicts.json").read_text())["run"]["id"] == "old-run"


def test_flip_drift_new_and_steady():
    old = {"case_id": "c", "verdict": "pass", "value": 0.50, "effect": 0.20, "p": 0.01, "q": 0.02, "ci": None}
    tolerance = {"effect": 0.05}
    assert compare({**old, "effect": 0.23}, old, tolerance).kind == "steady"
    drift = compare({**old, "effect": 0.30}, old, tolerance)
    assert drift.kind == "drift" and drift.moved == {"effect": [0.20, 0.30, 0.05]}
    flip = compare({**old, "verdict": "fail", "effect": 0.01, "p": 0.4, "reason": "p = 0.4 >= 0.05"}, old, tolerance)
    assert flip.kind == "flip" and flip.old["verdict"] == "pass"
    message = regression_message({**old, "verdict": "fail", "effect": 0.01, "p": 0.4}, flip.to_dict(), "r1")
    assert "verdict pass -> fail" in message and "effect: 0.2 -> 0.01" in message and "p: 0.01 -> 0.4" in message
    assert compare(old, None, tolerance).kind == "new"
    assert compare(old, {**old, "verdict": "error"}, tolerance).kind == "new"


def test_load_baseline_reads_cases_and_fingerprints(tmp_path):
    _write_run(tmp_path, "r7", verdict="fail")
    baseline = load_baseline(tmp_path)
    assert baseline.run_id == "r7" and baseline.cases["c1"]["verdict"] == "fail"


def test_tolerance_is_declared_per_hypothesis_and_checked(write):
    text = f"""
        schema_version: 1
        panels: [{PANELS}]
        hypotheses:
          - id: h
            claim: c
            probe: pert_embedding_coherence
            axes: {{model: all, pathway: all}}
            tolerance: {{effect: 0.1, p: 0.02}}
        """
    assert load_spec_file(write("h.yaml", text))[0].tolerance == {"effect": 0.1, "p": 0.02}
    assert load_spec_file(write("d.yaml", text.replace("\n            tolerance: {effect: 0.1, p: 0.02}", "")))[
        0].tolerance == {"effect": 0.05}
    with pytest.raises(SpecError, match="unknown key 'efect'") as info:
        load_spec_file(write("bad.yaml", text.replace("effect: 0.1", "efect: 0.1")))
    assert "line 8, field 'hypotheses[0].tolerance.efect'" in str(info.value)
    assert "did you mean 'effect'?" in str(info.value)
    with pytest.raises(SpecError, match="'p' must be a number >= 0"):
        load_spec_file(write("neg.yaml", text.replace("p: 0.02", "p: -1")))


def test_each_xdist_worker_gets_its_own_gpu_round_robin():
    assert [worker_gpu(f"gw{i}", 3) for i in range(5)] == [0, 1, 2, 0, 1]
    assert worker_gpu(None, 4) == 0 and worker_gpu("master", 2) == 0


def _hammer(root, seed):
    cache = ArrayCache(root)
    for _ in range(30):
        cache.put("shared", np.arange(200_000, dtype=np.float32))
        found = cache.get("shared")
        assert found is None or np.array_equal(found, np.arange(200_000, dtype=np.float32))


def test_concurrent_writers_never_leave_a_partial_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(tmp_path, i)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert np.array_equal(ArrayCache(tmp_path).get("shared"), np.arange(200_000, dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["shared.npy"]


def test_cache_keys_carry_the_library_versions(tmp_path):
    old, new = ArrayCache(tmp_path, salt={"torch": "2.13.0"}), ArrayCache(tmp_path, salt={"torch": "2.14.0"})
    old.put(old.key("output_shifts", fingerprint="abc"), np.ones(3))
    assert new.get(new.key("output_shifts", fingerprint="abc")) is None
    assert old.get(old.key("output_shifts", fingerprint="abc")) is not None
    assert os.listdir(tmp_path)
