"""The catalogue of wrong inputs: each gives the suite's own kind of error, naming the file or field
and what to do, and none leaves a run record, cache entry or baseline half-written.

Each row makes one mistake on a fresh copy of real demo files and names the error class and
the phrases its message must carry. Runs killed or racing each other are at the end.
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.arc_state import load_model
from fixtures.registry import load_registry
from probes.knockout import load_knockout_matrix
from suite.checks.members import resolve_members
from suite.errors import Inconclusive, ModelLoadError, SpecError, UnknownNameError, UnsafeCheckpointError
from suite.panels import Panel
from suite.session import RunContext
from suite.spec import load_spec_file

from .helpers import DEMO, ROOT
from .test_loading import Payload
from .test_nightly import HYPOTHESES
from .test_spec import GOOD

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Mistake:
    name: str
    make: Callable[[Path], Callable[[], object]]   # tmp folder -> the call that must refuse
    error: type[BaseException]
    says: tuple[str, ...]                          # phrases of the message; {tmp} is the tmp folder


def _spec(text: str) -> Callable[[Path], Callable[[], object]]:
    def make(tmp: Path):
        (tmp / "spec.yaml").write_text(text)
        return lambda: load_spec_file(tmp / "spec.yaml")
    return make


def _registry(text: str) -> Callable[[Path], Callable[[], object]]:
    def make(tmp: Path):
        (tmp / "models.yaml").write_text(text)
        return lambda: load_registry(tmp / "models.yaml")
    return make


def _model(change: Callable[[Path, object], object]) -> Callable[[Path], Callable[[], object]]:
    """change(tmp, entry) edits a copy of hepg2_fewshot's model_dir and returns the entry to load."""
    def make(tmp: Path):
        entry = load_registry(DEMO / "models.yaml")["hepg2_fewshot"]
        shutil.copytree(entry.model_dir, tmp / "model")
        entry = replace(entry, model_dir=tmp / "model", checkpoint=tmp / "model/checkpoints/final.ckpt")
        changed = change(tmp, entry)
        entry = changed if isinstance(changed, type(entry)) else entry
        return lambda: load_model(entry, CPU)
    return make


def _members(names, min_members=3):
    panel = Panel("ribosome", tuple(names), (), file="panels.yaml", line=4)
    kds = ("RPL3", "RPL7", "RPS3", "MYC")
    return lambda tmp: lambda: resolve_members(names, kds, {*kds, "RPL5", "RPL11"}, panel=panel, model="m",
                                               what="KDs", on_unknown="error", min_members=min_members)


def _cells(tmp: Path, entry, edit) -> object:
    import anndata as ad

    cells = ad.read_h5ad(entry.cells_path)
    cells = edit(cells)
    cells.write_h5ad(tmp / "cells.h5ad")
    return replace(entry, cells_path=tmp / "cells.h5ad")


def _nan(cells):
    cells.X[5, 9] = np.inf
    return cells


def _checkpoint_with_payload(tmp: Path, entry) -> None:
    checkpoint = torch.load(entry.checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["note"] = Payload(tmp / "pwned")
    torch.save(checkpoint, entry.checkpoint)


def _wide_sae(tmp: Path):
    from .test_representations import _weights, _write_saelens

    _write_saelens(tmp / "sae", _weights(d_in=128, d_sae=256), {"architecture": "topk", "d_in": 128, "d_sae": 256,
                                                                "k": 8})
    entry = load_registry(DEMO / "models.yaml")["hepg2_fewshot"]
    registry = {"m": replace(entry, name="m", sae=replace(entry.sae, path=str(tmp / "sae")))}
    return lambda: RunContext(registry, CPU).sae("m")


def _ko_matrix(tmp: Path):
    np.save(tmp / "ko.npy", np.ones((2, 5)))
    (tmp / "genes.txt").write_text("A\nB\n")
    return lambda: load_knockout_matrix(tmp / "ko.npy", tmp / "genes.txt", ("A", "B", "C", "D"))


REGISTRY = """
schema_version: 1
models:
  m:
    {key}: models/hepg2_fewshot
    cells: {{path: cells/hepg2.h5ad, obs_column: gene, control_value: non-targeting}}
"""

CATALOGUE = [
    Mistake("yaml-syntax", _spec(GOOD.replace("claim: Pathway KDs cluster.", "claim: [unclosed")), SpecError,
            ("{tmp}/spec.yaml, line",)),
    Mistake("unknown-probe", _spec(GOOD.replace("pert_embedding_coherence", "pert_embeding_coherence")), SpecError,
            ("field 'hypotheses[0].probe'", "did you mean 'pert_embedding_coherence'")),
    Mistake("unknown-key", _spec(GOOD.replace("claim:", "clam:")), SpecError,
            ("line 6, field 'hypotheses[0].clam'", "did you mean 'claim'")),
    Mistake("duplicate-key", _spec(GOOD.replace("    probe:", "    claim: again\n    probe:")), SpecError,
            ("{tmp}/spec.yaml, line", "claim")),
    Mistake("wrong-type", _spec(GOOD.replace("n_permutations: 199", "n_permutations: many")), SpecError,
            ("field 'hypotheses[0].params.n_permutations'", "expected a whole number")),
    Mistake("threshold-out-of-range", _spec(GOOD.replace("p_below: 0.01", "p_below: 2")), SpecError,
            ("field 'hypotheses[0].pass_rule.p_below'", "out of range [0.0, 1.0]")),
    Mistake("pass-rule-that-tests-nothing",
            _spec(GOOD.replace("{p_below: 0.01}", "{p_below: null, effect_above: null}")), SpecError,
            ("field 'hypotheses[0].pass_rule'", "tests nothing")),
    Mistake("unknown-pathway", _spec(GOOD.replace("[ribosome, decoy]", "[ribosme, decoy]")), SpecError,
            ("field 'hypotheses[0].axes.pathway'", "did you mean 'ribosome'")),
    Mistake("registry-unknown-key", _registry(REGISTRY.format(key="model_dri")), SpecError,
            ("{tmp}/models.yaml, line 5", "did you mean 'model_dir'")),
    Mistake("unknown-gene-symbol", _members(("RPL3", "RPL7", "RPS3X")), UnknownNameError,
            ("panels.yaml, line 4", "RPS3X", "did you mean", "on_unknown: drop")),
    Mistake("too-few-members", _members(("RPL3", "RPL7"), min_members=3), Inconclusive,
            ("only 2 of 2 KDs", "need at least 3")),
    Mistake("kd-missing-from-pert-map", _members(("RPL3", "RPL5", "RPL11")), Inconclusive,
            ("only 1 of 3 KDs", "not in the model: RPL5, RPL11")),
    Mistake("missing-model-dir", _model(lambda tmp, e: replace(e, model_dir=tmp / "nope")), ModelLoadError,
            ("{tmp}/nope does not exist", "Point 'model_dir' at the folder")),
    Mistake("missing-checkpoint", _model(lambda tmp, e: replace(e, checkpoint=e.model_dir / "checkpoints/best.ckpt")),
            ModelLoadError, ("best.ckpt", "available: final.ckpt")),
    Mistake("truncated-checkpoint", _model(lambda tmp, e: e.checkpoint.write_bytes(e.checkpoint.read_bytes()[:9000])),
            ModelLoadError, ("{tmp}/model/checkpoints/final.ckpt", "truncated", "re-copy it")),
    Mistake("not-a-checkpoint", _model(lambda tmp, e: e.checkpoint.write_bytes(b"\x80\x02" + bytes(range(200)) * 4)),
            ModelLoadError, ("{tmp}/model/checkpoints/final.ckpt", "not a PyTorch file", "re-copy it")),
    Mistake("checkpoint-asks-for-a-disallowed-global", _model(_checkpoint_with_payload), UnsafeCheckpointError,
            ("posix.system", "Nothing from the file was run", "trusted: true")),
    Mistake("cells-of-another-gene-count", _model(lambda tmp, e: _cells(tmp, e, lambda c: c[:, :150].copy())),
            ModelLoadError, ("{tmp}/cells.h5ad", "50 of the model's 200 input genes", "Use cells measured on")),
    Mistake("nan-in-cells", _model(lambda tmp, e: _cells(tmp, e, _nan)), ModelLoadError,
            ("{tmp}/cells.h5ad", "NaN or infinite")),
    Mistake("no-control-marker", _model(lambda tmp, e: replace(e, control_value="non_targeting")), ModelLoadError,
            ("did you mean 'non-targeting'",)),
    Mistake("gene-file-of-the-wrong-length", _model(
        lambda tmp, e: (tmp / "genes.txt").write_text("RPL3\n" * 199) and replace(e, genes_path=tmp / "genes.txt")),
        ModelLoadError, ("{tmp}/genes.txt", "lists 199 genes but the model has 200 inputs")),
    Mistake("sae-of-the-wrong-width", _wide_sae, ModelLoadError,
            ("{tmp}/sae", "reads 128 features but layer 0 of model 'm' has 64", "Fix 'sae.path' or 'sae.layer'")),
    Mistake("ko-matrix-of-the-wrong-shape", _ko_matrix, ModelLoadError, ("{tmp}/ko.npy", "shape (2, 5)",
                                                                          "must be [2, 4]")),
]


@pytest.mark.parametrize("mistake", CATALOGUE, ids=[m.name for m in CATALOGUE])
def test_each_mistake_gets_its_own_clear_error(mistake, tmp_path):
    call = mistake.make(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(mistake.error) as info:
        call()
    message = getattr(info.value, "reason", None) or str(info.value)
    for phrase in mistake.says:
        assert phrase.format(tmp=tmp_path) in message, message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before   # nothing written
    assert not (tmp_path / "pwned").exists()                                        # nothing executed


def test_the_catalogue_covers_at_least_twenty_mistakes():
    assert len({m.name for m in CATALOGUE}) == len(CATALOGUE) >= 20


def _suite(*options: str, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_an_unwritable_report_dir_is_refused_before_any_case_runs(tmp_path):
    (tmp_path / "a-file").write_text("")
    run = _suite(f"--report-dir={tmp_path / 'a-file' / 'reports'}", "-k", "ribosome")
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 4, output
    assert f"--report-dir {tmp_path / 'a-file' / 'reports'}: cannot write there" in output
    assert "PASSED" not in output and "passed" not in output


@pytest.fixture
def small_suite(tmp_path):
    (tmp_path / "hyp").mkdir()
    (tmp_path / "hyp/spec.yaml").write_text(HYPOTHESES)
    return (f"--hypotheses={tmp_path / 'hyp'}", f"--report-dir={tmp_path / 'reports'}",
            f"--cache-dir={tmp_path / 'cache'}")


def test_a_run_killed_midway_leaves_no_record_and_a_valid_cache(small_suite, tmp_path):
    run = _suite(*small_suite, "-k", "hepg2_fewshot", start_new_session=True)
    deadline = time.time() + 240
    while not list((tmp_path / "cache").glob("representations-*.npy")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(30)
    assert not (tmp_path / "reports" / "latest").exists()
    assert not [p for p in (tmp_path / "reports").rglob("verdicts.json")]
    entries = [p for p in (tmp_path / "cache").glob("*.npy") if not p.name.startswith(".")]
    assert entries and all(np.load(p).size for p in entries)      # every entry whole
    rerun = _suite(*small_suite, "-k", "hepg2_fewshot")
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    record = json.loads((tmp_path / "reports/latest/verdicts.json").read_text())
    assert sum(c["reused"] for c in record["run"]["cache"].values()) >= 1


def test_two_runs_at_once_both_keep_whole_records(small_suite, tmp_path):
    runs = [_suite(*small_suite, "-k", "hepg2_fewshot"), _suite(*small_suite, "-k", "jurkat")]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    kept = [p for p in (tmp_path / "reports/runs").iterdir()]
    assert len(kept) == 2 and all(json.loads((p / "verdicts.json").read_text())["cases"] for p in kept)
    assert (tmp_path / "reports/latest").resolve() in [p.resolve() for p in kept]
    assert not [p for p in (tmp_path / "reports/runs").iterdir() if p.name.endswith(".partial")]


def test_a_pickled_payload_would_really_run(tmp_path):
    """The catalogue's payload is live: unrestricted unpickling executes it."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran")))  # noqa: S301 - proving the payload, on purpose
    assert (tmp_path / "ran").exists()
