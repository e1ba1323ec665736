"""The catalogue of wrong inputs: each gives the suite's own kind of error, naming the file or field
and what to do, and none leaves a run record, cache entry or baseline half-written.

Each row makes one mistake on a fresh copy of real demo files and names the error class and
the phrases its message must carry. Runs killed or racing each other are at the end.
"""

import csv
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.errors import (
    Inconclusive,
    ModelLoadError,
    ProbeError,
    SpecError,
    UnknownNameError,
    UnsafeCheckpointError,
)
from fixtures.arc_state import load_model, model_fingerprint
from fixtures.registry import load_registry
from fixtures.sae import load_sae
from probes.embeddings import sample_cells, select_cells
from probes.knockout import load_knockout_matrix
from reports.junit import to_junit
from reports.record import to_csv, write_run
from suite import plugin
from suite.baseline import load_baseline
from suite.cache import ArrayCache, CacheWarning
from suite.cases import ModelInfo, expand_all
from suite.checks.common import resolve_members
from suite.keeper import RECORD_LOST, RecordKeeper
from suite.matrix_tests import mantel
from suite.panels import Panel, load_panels
from suite.session import RunContext
from suite.spec import load_spec_dir, load_spec_file
from suite.verdicts import Evidence, PassRule, decide

from .helpers import DEMO, PANELS, ROOT
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
    Mistake("registry-output-choice", _registry(REGISTRY.format(key="model_dir")
                                                + "    cell_line: x\n    split: x\n    output: gene\n"), SpecError,
            ("{tmp}/models.yaml, line 9", "field 'models.m.output'", "genes", "embedding")),
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
            ModelLoadError, ("{tmp}/cells.h5ad", "84 of the model's 234 input genes", "Use cells measured on")),
    Mistake("nan-in-cells", _model(lambda tmp, e: _cells(tmp, e, _nan)), ModelLoadError,
            ("{tmp}/cells.h5ad", "NaN or infinite")),
    Mistake("no-control-marker", _model(lambda tmp, e: replace(e, control_value="non_targeting")), ModelLoadError,
            ("did you mean 'non-targeting'",)),
    Mistake("gene-file-of-the-wrong-length", _model(
        lambda tmp, e: (tmp / "genes.txt").write_text("".join(f"G{i}\n" for i in range(199)))
        and replace(e, genes_path=tmp / "genes.txt")),
        ModelLoadError, ("{tmp}/genes.txt", "lists 199 genes but the model has 234 inputs")),
    Mistake("sae-of-the-wrong-width", _wide_sae, ModelLoadError,
            ("{tmp}/sae", "reads 128 features but layer 0 of model 'm' has 64", "Fix 'sae.path' or 'sae.layer'")),
    Mistake("ko-matrix-of-the-wrong-shape", _ko_matrix, ModelLoadError, ("{tmp}/ko.npy", "shape (2, 5)",
                                                                          "must be [2, 4]")),
]


# ---- beyond the first 22: encodings, file kinds, sizes, duplicates, non-finite numbers, baselines --------

def _spec_bytes(data: bytes) -> Callable[[Path], Callable[[], object]]:
    def make(tmp: Path):
        (tmp / "spec.yaml").write_bytes(data)
        return lambda: load_spec_file(tmp / "spec.yaml")
    return make


def _fifo(tmp: Path):
    os.mkfifo(tmp / "spec.yaml")
    return lambda: load_spec_dir(tmp)


def _folder_named_yaml(tmp: Path):
    (tmp / "spec.yaml").mkdir()
    return lambda: load_spec_dir(tmp)


def _laughs(levels: int) -> str:
    """The billion-laughs shape: each level an alias list of ten of the level below."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "definitions:\n" + "\n".join("  " + line for line in lines) + "\n" + GOOD


def _panel(text: str, suffix: str = ".yaml", data: bytes | None = None) -> Callable[[Path], Callable[[], object]]:
    def make(tmp: Path):
        path = tmp / f"panels{suffix}"
        path.write_bytes(data) if data is not None else path.write_text(text)
        return lambda: load_panels([path])
    return make


PANEL = """schema_version: 1
pathways:
  ribosome:
    kds: {kds}
"""


def _baseline(text: str | None = None, data: bytes | None = None) -> Callable[[Path], Callable[[], object]]:
    def make(tmp: Path):
        (tmp / "run").mkdir()
        path = tmp / "run" / "verdicts.json"
        path.write_bytes(data) if data is not None else path.write_text(text)
        return lambda: load_baseline(tmp / "run")
    return make


def _record(cases: list) -> str:
    return json.dumps({"schema_version": 1, "run": {"id": "r1", "models": {}}, "cases": cases})


def _poison_weights(value: float):
    def change(tmp: Path, entry) -> None:
        checkpoint = torch.load(entry.checkpoint, weights_only=True)
        state = checkpoint["state_dict"]
        key = next(k for k, v in state.items() if v.is_floating_point() and "pert_encoder" in k)
        state[key] = torch.full_like(state[key], value)
        torch.save(checkpoint, entry.checkpoint)
    return change


def _poison_pert_map(tmp: Path, entry) -> None:
    path = entry.model_dir / "pert_onehot_map.pt"
    pert_map = torch.load(path, weights_only=False)     # the demo's own file
    first = next(iter(pert_map))
    pert_map[first] = torch.full_like(torch.as_tensor(pert_map[first], dtype=torch.float32), float("nan"))
    torch.save(pert_map, path)


def _shuffled_with_a_duplicate(cells):
    cells = cells[:, np.random.default_rng(0).permutation(cells.n_vars)].copy()
    names = list(cells.var_names)
    names[1] = names[0]
    cells.var_names = names
    return cells


def _scaled(cells):
    cells.X = np.asarray(cells.X.toarray() if hasattr(cells.X, "toarray") else cells.X) * 1e30
    return cells


def _probe_on_cells(edit):
    """A probe (the ΔY pass every family uses) on a model whose cells load but make its outputs non-finite."""
    def make(tmp: Path):
        entry = load_registry(DEMO / "models.yaml")["hepg2_fewshot"]
        entry = _cells(tmp, entry, edit)
        ctx = RunContext({"hepg2_fewshot": entry}, CPU)
        return lambda: ctx.output_shifts("hepg2_fewshot", 16, 0, n_orderings=1)
    return make


def _sae_with(value: float):
    def make(tmp: Path):
        from .test_representations import _weights, _write_saelens

        weights = _weights(d_in=64, d_sae=128)
        weights["b_enc"][3] = value
        _write_saelens(tmp / "sae", weights, {"architecture": "topk", "d_in": 64, "d_sae": 128, "k": 8})
        return lambda: load_sae(tmp / "sae")
    return make


def _ko_files(matrix: np.ndarray, genes: str):
    def make(tmp: Path):
        np.save(tmp / "ko.npy", matrix)
        (tmp / "genes.txt").write_text(genes)
        return lambda: load_knockout_matrix(tmp / "ko.npy", tmp / "genes.txt", ("A", "B", "C", "D"))
    return make


def _write_sae_cfg(tmp: Path, cfg: dict) -> Path:
    from .test_representations import _weights, _write_saelens

    _write_saelens(tmp / "sae", _weights(d_in=64, d_sae=128), cfg)
    return tmp / "sae"


def _decide(**numbers):
    base = dict(statistic="mean cosine", value=0.2, effect=0.2, ci=(0.1, 0.3), p=0.01, n={"kds": 5}, null="x", seed=0)
    return lambda tmp: lambda: decide(Evidence(**(base | numbers)), PassRule())


def _var_dims_genes(entry) -> list[str]:
    import pickle

    return [str(g) for g in pickle.loads((entry.model_dir / "var_dims.pkl").read_bytes())["gene_names"]]


def _swapped_var_dims_genes(entry) -> bytes:
    genes = _var_dims_genes(entry)
    genes[0], genes[1] = genes[1], genes[0]
    return "".join(f"{g}\n" for g in genes).encode()


def _uns_hvg_reversed(entry):
    def edit(cells):
        cells.uns["X_hvg_var_names"] = np.array(_var_dims_genes(entry)[::-1])
        return cells
    return edit


def _gene_file(data: bytes | None = None, folder: bool = False):
    def change(tmp: Path, entry):
        path = tmp / "genes.txt"
        path.mkdir() if folder else path.write_bytes(data)
        return replace(entry, genes_path=path)
    return change


INFOS = [ModelInfo("hepg2_fewshot", "hepg2", "fewshot", "gpt2"),
         ModelInfo("jurkat_fewshot", "jurkat", "fewshot", "gpt2")]

def _routing_spec(probe: str, axes: str, params: str = "", expected: str = "") -> str:
    """One routing hypothesis over the demo panels; `expected` is its indented expectation block."""
    return f"""
schema_version: 1
panels: [{PANELS}]
hypotheses:
  - id: routes
    claim: The pathway's KDs route alike in two models.
    probe: {probe}
    axes: {{{axes}}}
    params: {{{params}}}
{expected}"""


def _pair_spec(pairs: str, where: str) -> str:
    return _routing_spec("routing_consistency", f"model_pair: {pairs}, pathway: [ribosome]",
                         expected=f"    expected:\n      - where: {{{where}}}\n        verdict: fail\n")


def _expanded(text: str) -> Callable[[Path], Callable[[], object]]:
    def make(tmp: Path):
        (tmp / "spec.yaml").write_text(text)
        return lambda: expand_all(load_spec_file(tmp / "spec.yaml"), INFOS)
    return make


def _audit_spec(rule: str) -> str:
    return f"""
schema_version: 1
hypotheses:
  - id: audit
    claim: The model is deterministic.
    probe: model_audit
    axes: {{model: all}}
    params: {{aspect: determinism}}
    pass_rule: {rule}
"""


def _entry_with(**changes):
    def make(tmp: Path):
        entry = replace(load_registry(DEMO / "models.yaml")["hepg2_fewshot"], **changes)
        return lambda: model_fingerprint(entry)
    return make


def _var_dims(value):
    def change(tmp: Path, entry) -> None:
        with open(entry.model_dir / "var_dims.pkl", "wb") as out:
            pickle.dump(value, out)
    return change


def _config_data(text: str):
    def change(tmp: Path, entry) -> None:
        path = entry.model_dir / "config.yaml"
        path.write_text(path.read_text().replace("data:\n", f"data: {text}\nold_data:\n", 1))
    return change


CATALOGUE += [
    # a parameter its check never reads is refused, not silently ignored (each routing check has its own class)
    Mistake("param-the-check-does-not-read",
            _spec(_routing_spec("routing_divergence", "model_pair: cross_line, pathway: [ribosome]", "n_axes: 3")),
            SpecError,
            ("field 'hypotheses[0].params.n_axes'", "unknown")),
    Mistake("whole-model-check-with-a-kd-set-null",
            _spec(_routing_spec("routing_output_correlation", "model: all", "null_model: label_permutation")),
            SpecError,
            ("field 'hypotheses[0].params.null_model'", "unknown")),
]

CATALOGUE += [
    # files that are not what they claim to be
    Mistake("spec-not-utf8", _spec_bytes(GOOD.replace("cluster.", "clüster.").encode("latin-1")), SpecError,
            ("{tmp}/spec.yaml", "not UTF-8 text", "save the file as UTF-8")),
    Mistake("spec-utf16", _spec_bytes(GOOD.encode("utf-16")), SpecError, ("{tmp}/spec.yaml", "not UTF-8 text")),
    Mistake("spec-is-a-fifo", _fifo, SpecError, ("{tmp}/spec.yaml", "not a regular file")),
    Mistake("spec-is-a-folder", _folder_named_yaml, SpecError, ("{tmp}/spec.yaml", "not a regular file")),
    Mistake("spec-too-large", _spec_bytes(GOOD.encode() + b"#" * (9 * 2 ** 20)), SpecError,
            ("{tmp}/spec.yaml", "more than the 8,388,608 a YAML file here may have")),
    Mistake("hypotheses-folder-is-a-file", lambda tmp: (tmp / "h.yaml").write_text(GOOD)
            and (lambda: load_spec_dir(tmp / "h.yaml")), SpecError, ("{tmp}/h.yaml", "is a file, not a folder")),
    Mistake("config-yaml-not-utf8", _model(lambda tmp, e: (e.model_dir / "config.yaml").write_bytes(
        (e.model_dir / "config.yaml").read_bytes() + "# é\n".encode("latin-1"))), ModelLoadError,
            ("{tmp}/model/config.yaml", "config.yaml is not UTF-8 text")),
    Mistake("hypotheses-folder-missing", lambda tmp: lambda: load_spec_dir(tmp / "nope"), SpecError,
            ("{tmp}/nope", "hypotheses folder not found")),
    # YAML that would expand, recurse or run code
    Mistake("alias-bomb", _spec(_laughs(9)), SpecError,
            ("{tmp}/spec.yaml, line 7", "expand to more than 200,000 nodes")),
    Mistake("recursive-alias", _spec("definitions: &loop [*loop]\n" + GOOD), SpecError,
            ("{tmp}/spec.yaml, line 1", "refers to a node that contains it")),
    Mistake("python-tag", _spec(GOOD.replace("claim: Pathway KDs cluster.", "claim: !!python/object/apply:os.system "
                                                                          "['touch pwned']")), SpecError,
            ("{tmp}/spec.yaml, line 6", "not allowed in these files", "refused, never run")),
    Mistake("tab-indent", _spec(GOOD.replace("    claim:", "\tclaim:")), SpecError,
            ("{tmp}/spec.yaml, line 6", "not valid YAML", "'\\t'")),
    Mistake("top-level-list", _spec("- a\n- b\n"), SpecError, ("{tmp}/spec.yaml", "expected a mapping")),
    Mistake("empty-spec", _spec(""), SpecError, ("{tmp}/spec.yaml", "missing required key 'schema_version'")),
    Mistake("schema-version-2", _spec(GOOD.replace("schema_version: 1", "schema_version: 2")), SpecError,
            ("line 2", "schema_version 2 is not supported")),
    # numbers and names out of range
    Mistake("threshold-nan", _spec(GOOD.replace("p_below: 0.01", "p_below: .nan")), SpecError,
            ("field 'hypotheses[0].pass_rule.p_below'", "expected a finite number, got nan")),
    Mistake("threshold-inf", _spec(GOOD.replace("{p_below: 0.01}", "{p_below: 0.01, effect_above: .inf}")),
            SpecError, ("field 'hypotheses[0].pass_rule.effect_above'", "expected a finite number, got inf")),
    Mistake("negative-seed", _spec(GOOD.replace("seed: 3", "seed: -1")), SpecError,
            ("field 'hypotheses[0].params.seed'", "-1 is out of range")),
    Mistake("permutations-zero", _spec(GOOD.replace("n_permutations: 199", "n_permutations: 0")), SpecError,
            ("field 'hypotheses[0].params.n_permutations'", "0 is out of range [99, 1000000]")),
    Mistake("permutations-true", _spec(GOOD.replace("n_permutations: 199", "n_permutations: true")), SpecError,
            ("field 'hypotheses[0].params.n_permutations'", "expected a whole number, got true/false")),
    Mistake("permutations-fraction", _spec(GOOD.replace("n_permutations: 199", "n_permutations: 19.5")),
            SpecError, ("expected a whole number, got a number (19.5)",)),
    Mistake("cell-orderings-zero", _spec(GOOD.replace("seed: 3", "seed: 3, cell_orderings: 0")), SpecError,
            ("field 'hypotheses[0].params.cell_orderings'", "0 is out of range [1, 10000]")),
    Mistake("min-members-one", _spec(GOOD.replace("seed: 3", "seed: 3, min_members: 1")), SpecError,
            ("field 'hypotheses[0].params.min_members'", "1 is out of range")),
    Mistake("control-character-in-id", _spec(GOOD.replace("id: coherence", 'id: "coh\\x07"')), SpecError,
            ("field 'hypotheses[0].id'", "must be lower-case letters")),
    Mistake("empty-claim", _spec(GOOD.replace("claim: Pathway KDs cluster.", "claim: ''")), SpecError,
            ("field 'hypotheses[0].claim'", "expected a non-empty text")),
    Mistake("unknown-verdict", _spec(GOOD.replace("verdict: fail", "verdict: failed")), SpecError,
            ("field 'hypotheses[0].expected.verdict'", "did you mean 'fail'")),
    Mistake("negative-tolerance", _spec(GOOD.replace("    pass_rule:", "    tolerance: {effect: -1}\n    pass_rule:")),
            SpecError, ("field 'hypotheses[0].tolerance.effect'", "must be a number >= 0")),
    Mistake("panel-file-missing", _spec(GOOD.replace("panels: [", "panels: [/nowhere/p.yaml, ")), SpecError,
            ("field 'panels'", "panel file '/nowhere/p.yaml' not found")),
    # panels: a member written twice would count twice
    Mistake("panel-repeats-kds", _panel(PANEL.format(kds="[ACTL8, ACTL8, ACTL8, ACTL8, KRT86, KRT86, KRT86, KRT86]")),
            SpecError, ("{tmp}/panels.yaml, line 4, field 'pathways.ribosome.kds'", "lists ACTL8, KRT86 more than once",
                        "list each member once")),
    Mistake("panel-repeats-genes", _panel(PANEL.format(kds="[RPL3, RPL7, RPS3]") + "    genes: [RPL3, RPL3]\n"),
            SpecError, ("field 'pathways.ribosome.genes'", "lists RPL3 more than once")),
    Mistake("gmt-repeats-a-gene", _panel("", ".gmt", b"ribosome\tdesc\tRPL3\tRPL7\tRPL3\n"), SpecError,
            ("{tmp}/panels.gmt, line 1", "set 'ribosome' lists RPL3 more than once")),
    Mistake("gmt-not-utf8", _panel("", ".gmt", "ribosome\tdésc\tRPL3\tRPL7\n".encode("latin-1")), SpecError,
            ("{tmp}/panels.gmt", "not UTF-8 text")),
    Mistake("gmt-with-spaces", _panel("", ".gmt", b"ribosome desc RPL3 RPL7\n"), SpecError,
            ("{tmp}/panels.gmt, line 1", "separate columns with tabs")),
    Mistake("panel-without-members", _panel("schema_version: 1\npathways:\n  ribosome: {description: x}\n"),
            SpecError, ("lists neither 'kds' nor 'genes'",)),
    Mistake("panel-kds-as-text", _panel(PANEL.format(kds="RPL3, RPL7, RPS3")), SpecError,
            ("field 'pathways.ribosome.kds'", "expected a list")),
    # the registry
    Mistake("registry-not-utf8", lambda tmp: (tmp / "models.yaml").write_bytes(
        REGISTRY.format(key="model_dir").replace("non-targeting", "nön").encode("latin-1"))
        and (lambda: load_registry(tmp / "models.yaml")), SpecError, ("{tmp}/models.yaml", "not UTF-8 text")),
    Mistake("registry-model-twice", _registry(REGISTRY.format(key="model_dir") + REGISTRY.format(
        key="model_dir").split("models:\n")[1]), SpecError, ("{tmp}/models.yaml, line 7", "duplicate key 'm'")),
    Mistake("registry-model-named-by-a-number", _registry(REGISTRY.format(key="model_dir").replace("  m:", "  1:")),
            SpecError, ("model name 1 reads as a YAML int, not a name", "quote it")),
    Mistake("registry-empty", _registry("schema_version: 1\nmodels: {}\n"), SpecError,
            ("{tmp}/models.yaml, line 2", "the registry lists no models")),
    Mistake("registry-model-name-with-space", _registry(REGISTRY.format(key="model_dir").replace("  m:",
                                                                                                 "  'my model':")),
            SpecError, ("model name 'my model' may use letters, digits",)),
    # a model whose numbers cannot be trusted
    Mistake("nan-weights", _model(_poison_weights(float("nan"))), ModelLoadError,
            ("{tmp}/model/checkpoints/final.ckpt has NaN or infinite weights", "pert_encoder",
             "Use an earlier checkpoint")),
    Mistake("inf-weights", _model(_poison_weights(float("inf"))), ModelLoadError,
            ("NaN or infinite weights",)),
    Mistake("nan-in-pert-map", _model(_poison_pert_map), ModelLoadError,
            ("pert_onehot_map.pt holds NaN or infinite values",)),
    Mistake("cells-scaled-to-overflow", _probe_on_cells(_scaled), ProbeError,
            ("model 'hepg2_fewshot'", "output shifts are NaN or infinite", "scale of its cells")),
    Mistake("sae-with-nan", _sae_with(float("nan")), ModelLoadError, ("{tmp}/sae", "b_enc hold NaN or infinite")),
    Mistake("ko-matrix-with-nan", _ko_files(np.full((2, 4), np.nan), "A\nB\n"), ModelLoadError,
            ("{tmp}/ko.npy", "NaN or infinite")),
    Mistake("ko-genes-twice", _ko_files(np.ones((2, 4)), "A\nA\n"), ModelLoadError,
            ("{tmp}/genes.txt", "lists A more than once")),
    Mistake("ko-gene-unknown", _ko_files(np.ones((2, 4)), "A\nZ\n"), ModelLoadError,
            ("{tmp}/genes.txt", "'Z'")),
    # genes: names that cannot be matched, files that cannot be read
    Mistake("cells-shuffled-with-a-duplicate-name", _model(lambda tmp, e: _cells(tmp, e, _shuffled_with_a_duplicate)),
            ModelLoadError, ("{tmp}/cells.h5ad: the cells' column names (X) names 1 gene(s) more than once",
                             "var_names_make_unique")),
    Mistake("gene-file-repeats-a-gene", _model(_gene_file(("RPL3\n" * 2 + "".join(f"G{i}\n" for i in range(198)))
                                                          .encode())),
            ModelLoadError, ("{tmp}/genes.txt: the gene-name file names 1 gene(s) more than once (RPL3)",)),
    Mistake("gene-file-disagrees-with-var-dims", _model(lambda tmp, e: _gene_file(_swapped_var_dims_genes(e))(tmp, e)),
            ModelLoadError, ("differ between registry genes file {tmp}/genes.txt and var_dims.pkl gene_names",
                             "column 0 is", "fix 'genes:'")),
    Mistake("cells-hvg-names-disagree-with-var-dims", _model(lambda tmp, e: _cells(tmp, e, _uns_hvg_reversed(e))),
            ModelLoadError, ("differ between var_dims.pkl gene_names and {tmp}/cells.h5ad: uns['X_hvg_var_names']",
                             "belongs to another model or gene selection")),
    Mistake("gene-file-not-utf8", _model(_gene_file("GÉNE\n".encode("latin-1"))), ModelLoadError,
            ("{tmp}/genes.txt", "not UTF-8 text")),
    Mistake("gene-file-is-a-folder", _model(_gene_file(folder=True)), ModelLoadError,
            ("{tmp}/genes.txt", "not a regular file")),
    Mistake("cells-path-is-a-folder", _model(lambda tmp, e: (tmp / "cells.h5ad").mkdir()
                                             or replace(e, cells_path=tmp / "cells.h5ad")), ModelLoadError,
            ("{tmp}/cells.h5ad", "is not a regular file")),
    Mistake("cells-not-h5ad", _model(lambda tmp, e: (tmp / "cells.h5ad").write_text("gene,value\n")
                                     and replace(e, cells_path=tmp / "cells.h5ad")), ModelLoadError,
            ("{tmp}/cells.h5ad", "not a readable .h5ad")),
    Mistake("cells-obs-column-missing", _model(lambda tmp, e: replace(e, obs_column="guide")), ModelLoadError,
            ("obs has no column 'guide'", "Fix 'cells.obs_column'")),
    Mistake("cells-matrix-missing", _model(lambda tmp, e: replace(e, matrix="obsm/X_pca")), ModelLoadError,
            ("no matrix 'obsm/X_pca'", "Fix 'cells.matrix'")),
    Mistake("model-dir-lacks-var-dims", _model(lambda tmp, e: (e.model_dir / "var_dims.pkl").unlink()),
            ModelLoadError, ("lacks var_dims.pkl", "Copy the whole run folder")),
    # numbers a verdict cannot stand on
    Mistake("nan-statistic", _decide(value=float("nan"), effect=float("nan")), ProbeError,
            ("non-finite numbers", "statistic = nan", "No verdict given")),
    Mistake("inf-ci", _decide(ci=(0.1, float("inf"))), ProbeError, ("CI high = inf",)),
    Mistake("nan-p", _decide(p=float("nan")), ProbeError, ("p = nan",)),
    # tests that cannot be run as asked are inconclusive with the reason, not raw errors
    Mistake("more-cells-than-the-file-has", lambda tmp: lambda: sample_cells(torch.zeros(10, 4), 32, 0), Inconclusive,
            ("asked for 32 control cells but the model's cells file has 10", "'cell_set_size' to at most 10")),
    Mistake("more-cells-than-the-file-has-stratified",
            lambda tmp: lambda: select_cells(torch.zeros(10, 4), 16, 0, "stratified"), Inconclusive,
            ("asked for 16 control cells",)),
    Mistake("constant-similarity-matrix", lambda tmp: lambda: mantel(np.ones((6, 6)), np.eye(6) + 0.1 * np.arange(
        36).reshape(6, 6), 99, np.random.default_rng(0)), Inconclusive, ("constant off-diagonal entries",)),
    # rules and axes that could never do what they say (found by an independent hunt)
    Mistake("p-rule-on-a-probe-without-p", _spec(_audit_spec("{p_below: 0.05}")), SpecError,
            ("field 'hypotheses[0].pass_rule.p_below'", "probe 'model_audit' reports no p-value")),
    Mistake("rule-with-no-passing-value", _spec(GOOD.replace("{p_below: 0.01}", "{statistic_above: 5, "
                                                                             "statistic_below: 1}")), SpecError,
            ("statistic_above 5.0 and statistic_below 1.0 leave no value that passes",)),
    Mistake("p-below-zero", _spec(GOOD.replace("p_below: 0.01", "p_below: 0")), SpecError,
            ("p_below: 0 can never hold",)),
    Mistake("tolerance-nan", _spec(GOOD.replace("    pass_rule:", "    tolerance: {effect: .nan}\n    pass_rule:")),
            SpecError, ("field 'hypotheses[0].tolerance.effect'", "must be a number >= 0")),
    Mistake("number-of-400-digits", _spec(GOOD.replace("p_below: 0.01", "p_below: " + "9" * 400)), SpecError,
            ("field 'hypotheses[0].pass_rule.p_below'", "is too large")),
    Mistake("number-of-5000-digits", _spec(GOOD.replace("seed: 3", "seed: " + "9" * 5000)), SpecError,
            ("{tmp}/spec.yaml", "a value cannot be read")),
    Mistake("id-with-a-trailing-newline", _spec(GOOD.replace("id: coherence", 'id: "coherence\\n"')), SpecError,
            ("field 'hypotheses[0].id'", "must be lower-case letters")),
    Mistake("bare-model-name-on-an-axis", _expanded(GOOD.replace("model: all", "model: hepg2_fewshot")), SpecError,
            ("axis 'model' must be 'all' or a list of names, got 'hepg2_fewshot'", "write model: [hepg2_fewshot]")),
    Mistake("model-paired-with-itself", _expanded(_pair_spec("[[hepg2_fewshot, hepg2_fewshot]]", "pathway: ribosome")),
            SpecError, ("compares a model with itself",)),
    Mistake("where-with-a-list", _spec(GOOD.replace("where: {pathway: decoy}", "where: {pathway: [decoy]}")),
            SpecError, ("field 'hypotheses[0].expected[0].where.pathway'", "must be one value")),
    Mistake("cell-line-on-a-pair-probe", _spec(_pair_spec("cross_line", "cell_line: hepg2")),
            SpecError, ("unknown key 'cell_line'",)),
    Mistake("pathway-name-with-a-control-character", _panel('schema_version: 1\npathways:\n  "ribo\\x07": {kds: [A, B, '
                                                            'C]}\n'), SpecError, ("must be printable text",)),
    Mistake("pathway-named-null", _panel("schema_version: 1\npathways:\n  null: {kds: [A, B, C]}\n"), SpecError,
            ("pathway name 'None' must be printable text",)),
    # files of shapes no check foresaw: still the model, the file and what to do
    Mistake("cells-file-gone-before-the-fingerprint", _entry_with(cells_path=Path("/nowhere/cells.h5ad")),
            ModelLoadError, ("model 'hepg2_fewshot'", "/nowhere/cells.h5ad: control-cells file not found",
                             "Fix 'cells.path'")),
    Mistake("var-dims-a-list", _model(_var_dims([1, 2, 3])), ModelLoadError,
            ("model 'hepg2_fewshot'", "var_dims.pkl holds a list, not the mapping", "re-copy it")),
    Mistake("config-data-as-text", _model(_config_data("hepg2")), ModelLoadError,
            ("model 'hepg2_fewshot'", "cannot use", "unexpected shape")),
    Mistake("unknown-home-folder", _registry(REGISTRY.format(key="model_dir").replace(
        "models/hepg2_fewshot", "~nosuchuser/m\n    cell_line: hepg2\n    split: fewshot")), SpecError,
            ("{tmp}/models.yaml", "'~nosuchuser/m': no such user's home folder")),
    Mistake("sae-topk-without-k", lambda tmp: _write_sae_cfg(tmp, {"architecture": "topk", "d_in": 64, "d_sae": 128})
            and (lambda: load_sae(tmp / "sae")), ModelLoadError, ("{tmp}/sae", "not an SAE this suite can read")),
    Mistake("ko-matrix-as-npz", lambda tmp: np.savez(tmp / "ko.npy.npz", a=np.ones((2, 4))) or os.replace(
        tmp / "ko.npy.npz", tmp / "ko.npy") or (tmp / "genes.txt").write_text("A\nB\n") and (
        lambda: load_knockout_matrix(tmp / "ko.npy", tmp / "genes.txt", ("A", "B", "C", "D"))), ModelLoadError,
            ("{tmp}/ko.npy", "must be one real-valued .npy array")),
    Mistake("baseline-nested-too-deeply", _baseline("[" * 100_000 + "]" * 100_000), SpecError,
            ("not a readable run record",)),
    # baselines: corrupt, truncated, foreign
    Mistake("baseline-not-json", _baseline("{not json"), SpecError,
            ("{tmp}/run/verdicts.json", "not a readable run record", "point --baseline at a run folder")),
    Mistake("baseline-truncated", _baseline(_record([{"case_id": "a", "verdict": "pass"}])[:40]), SpecError,
            ("{tmp}/run/verdicts.json", "not a readable run record")),
    Mistake("baseline-foreign-json", _baseline("[1, 2, 3]"), SpecError,
            ("{tmp}/run/verdicts.json", "not a run record of this suite")),
    Mistake("baseline-case-without-verdict", _baseline(_record([{"case_id": "a"}])), SpecError,
            ("{tmp}/run/verdicts.json, field 'cases[0]'", "no case_id, or a verdict other than")),
    Mistake("baseline-case-twice", _baseline(_record([{"case_id": "a", "verdict": "pass"}] * 2)), SpecError,
            ("case ids recorded twice: a",)),
    Mistake("baseline-not-utf8", _baseline(data=b'{"run": "\xff"}'), SpecError, ("not a readable run record",)),
]


@pytest.mark.filterwarnings("ignore:Variable names are not unique")    # anndata, on the duplicate-name row
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


def test_the_catalogue_covers_at_least_sixty_mistakes():
    assert len({m.name for m in CATALOGUE}) == len(CATALOGUE) >= 60


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---- a run's record survives any one case; outputs are safe for the tools that open them -----------------

def _case(case_id: str, **fields) -> dict:
    return {"case_id": case_id, "hypothesis": case_id.split("-")[0], "probe": "pert_embedding_coherence",
            "claim": "KDs cluster.", "params": {"model": "m", "pathway": "p"}, "verdict": "pass", "reason": "p = 0.01",
            "expected": None, "statistic": "s", "value": 0.5, "effect": 0.5, "ci": [0.1, 0.9], "p": 0.01, "q": 0.02,
            "n": {"kds": 5}, "null": "x", "seed": 0, "details": {}, "threshold": {}, "outcome": "passed",
            "seconds": 1.0} | fields


def _run() -> dict:
    return {"id": "r1", "started": "2026-12-01T00:00:00+00:00", "device": "cpu", "models": {}}


def test_a_case_whose_evidence_cannot_be_drawn_gets_a_plain_card_and_the_others_stay_whole(tmp_path):
    broken = _case("broken-m-p", details={"null_histogram": {"counts": [3, 1], "edges": [None, 0.1, 0.2],
                                                             "observed": None},
                                          "table": ["not", "rows"]})
    cases = [_case("good-m-p"), broken]
    paths = write_run(tmp_path, _run(), cases, None)
    html = paths["html"].read_text()
    good_card, broken_card = (html.split(f'id="case-{c}"')[1].split("</article>")[0]
                              for c in ("good-m-p", "broken-m-p"))
    assert "pass when" in good_card and "could not be drawn" not in good_card
    assert "The evidence of this case could not be drawn" in broken_card and "p = 0.01" in broken_card
    assert [c["case_id"] for c in json.loads(paths["json"].read_text())["cases"]] == ["good-m-p", "broken-m-p"]


def test_a_report_page_that_cannot_be_drawn_still_lists_every_case(tmp_path):
    cases = [_case("a-m-p"), _case("b-m-p", verdict="fail")]
    paths = write_run(tmp_path, _run(), cases, {"rule": "", "grids": 5})     # a synthesis of the wrong shape
    html = paths["html"].read_text()
    assert "The full report could not be drawn" in html
    assert 'id="case-a-m-p"' in html and 'id="case-b-m-p"' in html and "pass when" in html


def test_a_run_whose_record_cannot_be_written_exits_with_its_own_code_and_says_why(tmp_path):
    (tmp_path / "a-file").write_text("")
    state = SimpleNamespace(report_dir=tmp_path / "a-file" / "reports", run_id="r1", started="now", device_choice="cpu",
                            models_path=DEMO / "models.yaml", registry={}, baseline=None, cache_dir=None,
                            calibration=None, update_baseline=False)
    keeper = RecordKeeper(state)
    keeper.records["a-m-p"] = _case("a-m-p")
    session = SimpleNamespace(config=SimpleNamespace(), exitstatus=1)
    keeper.pytest_sessionfinish(session)
    assert session.exitstatus == RECORD_LOST == 6
    lines = []
    writer = SimpleNamespace(write_sep=lambda sep, text, **kw: lines.append(text), write_line=lines.append)
    keeper.pytest_terminal_summary(writer)
    assert lines[0] == "run record NOT written"
    assert "1 case(s) ran but no record of them was kept" in lines[1] and "a-file" in lines[1]
    assert lines[2].startswith("exit code 6")


def test_spreadsheet_formulas_in_names_are_neutralised_in_the_csv():
    cases = [_case("=cmd-m-p", hypothesis="=HYPERLINK(\"http://x\")", params={"model": "m", "pathway": "+1+1"},
                   reason="@SUM(A1)", value=-0.5, effect=-0.25)]
    row = next(csv.DictReader(io.StringIO(to_csv(cases))))
    assert row["case_id"] == "'=cmd-m-p" and row["hypothesis"] == "'=HYPERLINK(\"http://x\")"
    assert row["pathway"] == "'+1+1" and row["reason"] == "'@SUM(A1)"
    assert row["value"] == "-0.5" and row["effect"] == "-0.25"        # numbers stay numbers


def test_junit_stays_well_formed_whatever_the_names():
    cases = [_case("bell\x07-m-p", reason="colour \x1b[31mred\x1b[0m", verdict="fail", outcome="failed")]
    root = ET.fromstring(to_junit(_run(), cases).encode())
    case = root.find("testsuite/testcase")
    assert case.get("name") == "bell\\x07-m-p"
    assert case.find("failure").get("message") == "colour \\x1b[31mred\\x1b[0m"


@pytest.mark.parametrize(("options", "says"), [
    ({"--cell-orderings": 0}, "--cell-orderings 0: give a number of orderings from 1 to 1000"),
    ({"--cell-orderings": -3}, "--cell-orderings -3"),
])
def test_counts_out_of_range_on_the_command_line_are_refused(options, says):
    config = SimpleNamespace(getoption=options.__getitem__)
    with pytest.raises(pytest.UsageError, match=re.escape(says)):
        plugin._cell_orderings(config)


def test_a_corrupt_baseline_is_refused_naming_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "verdicts.json").write_text('{"run": {"id": "r"}, "cases": [{"case_id": "a"}]}')
    config = SimpleNamespace(getoption={"--baseline": str(tmp_path / "run"), "--report-dir": str(tmp_path)}.__getitem__)
    with pytest.raises(pytest.UsageError) as info:
        plugin._baseline(config)
    assert f"{tmp_path / 'run' / 'verdicts.json'}, field 'cases[0]'" in str(info.value)


@pytest.mark.parametrize("part", ["runs", "latest", "baseline"])
def test_a_file_where_the_record_belongs_is_refused_before_any_case_runs(tmp_path, part):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / part).write_text("")
    with pytest.raises(pytest.UsageError) as info:
        plugin._refuse_unwritable(tmp_path / "reports")       # pytest_configure's check: exit 4, nothing run
    assert f"{tmp_path / 'reports' / part} is a file, where the suite keeps" in str(info.value)


@pytest.mark.slow
def test_a_device_that_is_not_there_is_refused_before_any_case_runs(tmp_path):
    run = _suite("--device=cuda:99", f"--report-dir={tmp_path / 'reports'}", "-k", "ribosome")
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 4, output
    assert "--device cuda:99:" in output and "use --device cpu or auto" in output
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled-object"])
def test_a_cache_entry_that_cannot_be_read_is_recomputed_with_a_note(tmp_path, damage):
    cache = ArrayCache(tmp_path)
    key = cache.key("output_shifts", model="m")
    cache.put(key, np.arange(6.0))
    path = tmp_path / f"{key}.npy"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.warns(CacheWarning, match=re.escape(f"cache entry {path} cannot be used")):
        assert cache.array(key, lambda: np.ones(3)).tolist() == [1.0, 1.0, 1.0]
    assert np.load(path).tolist() == [1.0, 1.0, 1.0]          # the recomputed entry replaced it


def test_a_cached_jacobian_stack_of_another_shape_is_recomputed(tmp_path):
    cache = ArrayCache(tmp_path)
    key = cache.key("pert_jacobians", model="m")
    cache.put(key, np.zeros((2, 3), dtype=np.float32))
    with pytest.warns(CacheWarning, match="expected an array of shape \\(4, 3\\)"):
        found = cache.filled(key, (4, 3), lambda out: out.fill(7.0))
    assert found.shape == (4, 3) and float(found.min()) == 7.0


def test_hypothesis_files_are_found_whatever_the_case_of_their_suffix_and_editor_locks_are_not(tmp_path):
    (tmp_path / "SHOUT.YAML").write_text(GOOD)
    (tmp_path / ".#SHOUT.yaml").symlink_to(tmp_path / "nowhere")     # what emacs leaves while a file is edited
    assert [s.id for s in load_spec_dir(tmp_path)] == ["coherence"]
