"""A probe family is one module plus one YAML file: a toy family installed from a temporary folder
runs end to end, and its card, its side of the synthesis and its record fields reach the report.
The registry refuses a module that is not a family, and two families that claim one probe."""

import json
import os
import subprocess
import sys
import types
from textwrap import dedent

import numpy as np
import pytest

from core.errors import FamilyError
from suite import families
from suite.families import CHECKS, Card, Check, Family, Registry

from .helpers import PANELS, ROOT

TOY_FAMILY = '''
"""A toy probe family: are a pathway's KDs' predicted shifts larger than random KD sets'?"""
from dataclasses import dataclass

import numpy as np

from suite.families import Card, Check, Family
from suite.verdicts import Evidence


@dataclass(frozen=True)
class ToyParams:
    toy_cells: int = 16
    n_permutations: int = 199
    seed: int = 0

    LIMITS = {"toy_cells": (2, 1000), "n_permutations": (99, 100_000), "seed": (0, 2 ** 32 - 1)}


def shift_norms(case, ctx):
    p = case.spec.params
    name = case.axes["model"]
    model = ctx.model(name)
    norms = ctx.stored("toy_shift_norms", name,
                       lambda: np.linalg.norm(ctx.output_shifts(name, p.toy_cells, p.seed, 1), axis=1),
                       cells=p.toy_cells, seed=p.seed)
    kds = list(model.kd_names)
    rows = np.array([model.pert_index(k) for k in kds])
    members = np.array([i for i, k in enumerate(kds) if k in case.spec.panels[case.axes["pathway"]].kds])
    values = norms[rows]
    observed = float(values[members].mean() - values.mean())
    rng = np.random.default_rng(p.seed)
    null = np.array([values[rng.choice(len(kds), len(members), replace=False)].mean() - values.mean()
                     for _ in range(p.n_permutations)])
    return Evidence(statistic="toy: mean shift norm of the pathway's KDs - of all KDs", value=observed,
                    effect=observed, ci=None, p=float((1 + np.sum(null >= observed)) / (1 + len(null))),
                    n={"members": len(members), "kds": len(kds)}, null="toy label permutation", seed=p.seed,
                    details={"toy_norm": float(values[members].mean()), "members": [kds[i] for i in members]})


FAMILY = Family("toy", (
    Check("toy_shift_norm", ("model", "pathway"), ToyParams, shift_norms, "toy: pathway KDs move the output most",
          side="organized"),
), Card(settings=("toy_cells",), partial="toy_card.html.j2"))
'''

TOY_CARD = '<p class="toy-card">toy norm of {{ case.params.pathway }}: {{ d.toy_norm | num(4) }}</p>\n'

TOY_HYPOTHESIS = f"""
schema_version: 1
panels: [{PANELS}]
hypotheses:
  - id: toy-norm
    claim: Ribosome KDs move the output more than random KD sets.
    probe: toy_shift_norm
    axes: {{model: [hepg2_fewshot], pathway: [ribosome]}}
    params: {{toy_cells: 12, seed: 3}}
    pass_rule: {{p_below: 0.05, effect_above: 0.0}}
"""


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "toy_family.py").write_text(TOY_FAMILY)
    (folder / "plugins" / "toy_card.html.j2").write_text(TOY_CARD)
    (folder / "hyp").mkdir()
    (folder / "hyp" / "toy.yaml").write_text(dedent(TOY_HYPOTHESIS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "plugins"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:randomly",
                             "-o", "probe_families=toy_family", f"--hypotheses={folder / 'hyp'}",
                             f"--report-dir={folder / 'reports'}", "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return result, folder / "reports" / "latest"


def test_a_toy_family_from_a_folder_runs_end_to_end_and_reaches_every_part_of_the_report(toy_run):
    result, report = toy_run
    assert "test_hypothesis[toy-norm-hepg2_fewshot-ribosome]" in result.stdout, result.stdout + result.stderr
    document = json.loads((report / "verdicts.json").read_text())
    (case,) = document["cases"]
    assert case["probe"] == "toy_shift_norm" and case["side"] == "organized"
    assert case["verdict"] in ("pass", "fail") and case["params"]["toy_cells"] == 12 and case["seed"] == 3
    assert case["details"]["members"] and 0 < case["details"]["toy_norm"]
    assert case["n"]["kds"] == 124 and case["n"]["members"] == len(case["details"]["members"])
    assert document["cards"]["toy_shift_norm"]["family"] == "toy"
    # the synthesis reads the toy probe as the organized side of hepg2_fewshot x ribosome
    columns = [c for grid in document["synthesis"]["grids"] for c in grid["columns"]]
    assert {"hypothesis": "toy-norm", "probe": "toy_shift_norm", "side": "organized"} in columns
    html = (report / "verdict.html").read_text()
    card = html.split('id="case-toy-norm-hepg2_fewshot-ribosome"')[1].split("</article>")[0]
    assert f'<p class="toy-card">toy norm of ribosome: {case["details"]["toy_norm"]:.4g}</p>' in card
    assert "toy_cells 12 ·" in card            # the family's settings line
    assert "toy label permutation" in card


def test_the_toy_statistic_is_the_one_its_numbers_say(toy_run):
    """The toy's record against a computation of its own: the members' mean norm minus all KDs'."""
    import torch

    from fixtures.registry import load_registry
    from suite.session import RunContext

    _, report = toy_run
    (case,) = json.loads((report / "verdicts.json").read_text())["cases"]
    ctx = RunContext(load_registry(ROOT / "fixtures/demo/models.yaml"), torch.device("cpu"))
    model = ctx.model("hepg2_fewshot")
    norms = np.linalg.norm(ctx.output_shifts("hepg2_fewshot", 12, 3, 1), axis=1)
    values = norms[[model.pert_index(k) for k in model.kd_names]]
    members = [model.kd_names.index(k) for k in case["details"]["members"]]
    assert case["value"] == pytest.approx(values[members].mean() - values.mean(), rel=1e-6)


def test_built_in_families_are_found_without_a_list_to_edit():
    assert set(CHECKS.families()) == {"pert_embedding", "representation", "targeted_jacobian", "knockout",
                                      "routing", "model_audit", "sae_patching", "sae_conserved"}
    assert CHECKS.cards()["knockout_cross_line"]["reference"] == "mean_r_all_genes"


def _module(name, family=None):
    module = types.ModuleType(name)
    module.__file__ = f"/somewhere/{name}.py"
    if family is not None:
        module.FAMILY = family
    return module


def _family(name, probe):
    return Family(name, (Check(probe, ("model",), object, lambda case, ctx: None, "a probe"),), Card())


def test_the_registry_refuses_what_is_not_a_family_and_probes_claimed_twice():
    registry = Registry()
    registry._builtin = True                   # this test's registry starts empty
    with pytest.raises(FamilyError, match="defines no FAMILY"):
        registry.add(_module("plain"))
    with pytest.raises(FamilyError, match="'nowhere_family' cannot be imported"):
        registry.load("nowhere_family")
    registry.add(_module("one", _family("one", "probe_a")))
    with pytest.raises(FamilyError, match="names probes another family has: probe_a"):
        registry.add(_module("two", _family("two", "probe_a")))
    with pytest.raises(FamilyError, match="two probe families are named 'one'"):
        registry.add(_module("again", _family("one", "probe_b")))
    assert list(registry) == ["probe_a"]


def test_families_of_the_entry_point_group_are_registered(monkeypatch):
    module = _module("toy_entry", _family("entry", "probe_entry"))
    monkeypatch.setitem(sys.modules, "toy_entry", module)
    point = types.SimpleNamespace(value="toy_entry")
    monkeypatch.setattr(families, "entry_points", lambda group: [point] if group == families.ENTRY_POINTS else [])
    registry = Registry()
    registry.discover()
    assert registry["probe_entry"].summary == "a probe" and "pert_embedding_coherence" in registry


def test_a_built_in_familys_partial_draws_its_own_numbers_and_nothing_when_they_are_absent():
    """The routing card says Pearson's r beside a Spearman Mantel test (NB07 read both)."""
    from reports.html import _card, _environment

    card = CHECKS.cards()["routing_output_correlation"]
    case = {"case_id": "r-m", "verdict": "pass", "probe": "routing_output_correlation", "claim": "c", "reason": "x",
            "params": {"method": "spearman", "seed": 0}, "details": {"pearson_r": 0.41234}}
    html = str(_card(_environment(), case, card))
    assert "Pearson r of the same pairs: 0.4123 (the test above is Spearman's)" in html
    assert "method spearman ·" in html
    plain = str(_card(_environment(), {**case, "details": {}, "params": {"method": "pearson"}}, card))
    assert "Pearson r of the same pairs" not in plain and 'class="family"' not in plain
