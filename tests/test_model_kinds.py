"""Every kind of ST checkpoint in the README's support table, as a real arc-state model_dir
(tests/model_kinds.py): it loads through the registry, the probes' forward pass is arc-state's own
`predict_step` to 1e-5, and a run gives each case a verdict or an inconclusive with its reason,
never an error."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from core.errors import ModelLoadError
from fixtures.arc_state import load_model
from fixtures.registry import load_registry
from probes.forward import arc_state_forward, forward_sets, pert_representations

from .model_kinds import GENES, KINDS, N_BATCHES, N_EMBED, N_GENES, make_model, registry_entry
from .test_plugin import run_pytest

CPU = torch.device("cpu")
SE_INPUT = {"output_embedding", "se_gene_decoder"}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    built = {name: make_model(name, root / name) for name in KINDS}
    registry = root / "models.yaml"
    registry.write_text(yaml.safe_dump({"schema_version": 1,
                                        "models": {name: registry_entry(root / name) for name in KINDS}}))
    return root, built, load_registry(registry)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_probes_forward_is_arc_states_own(kinds, kind):
    _, built, registry = kinds
    model = load_model(registry[kind], CPU)
    in_memory, _ = built[kind]
    cells = model.cells[:8]
    picks = [model.pert_index(k) for k in ("G3", "G7", "non-targeting")]
    with torch.no_grad():
        ours = forward_sets(model.module, cells, pert_representations(model.module, model.pert_onehots[picks]))
        for row, pick in enumerate(picks):
            theirs = arc_state_forward(model.module, cells, model.pert_onehots[pick])
            written = arc_state_forward(in_memory, cells, model.pert_onehots[pick])   # what was trained, unsaved
            assert ours[row].shape == theirs.shape == (8, N_GENES if model.output == "genes" else N_EMBED)
            torch.testing.assert_close(ours[row], theirs, atol=1e-5, rtol=0)
            torch.testing.assert_close(theirs, written, atol=1e-6, rtol=0)
        # the KD moves the prediction (10x the tolerance at least), so the comparison is not between two
        # constant outputs; output_space 'all' passes the KD's effect through a G/8-wide bottleneck
        assert float((ours[0] - ours[2]).abs().max()) > 1e-4


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in SE_INPUT])
def test_targeted_jacobians_are_autograd_through_arc_states_forward(kinds, kind):
    """per-cell dY_c/dX_c[regulator], cell-averaged, against reverse-mode autograd of predict_step."""
    from probes.jacobian import targeted_jacobians

    model = load_model(kinds[2][kind], CPU)
    cells, onehot, regulators = model.cells[:8], model.pert_onehots[model.pert_index("G3")], [16, 17]
    with torch.no_grad():
        reprs = pert_representations(model.module, onehot[None])
    ours = targeted_jacobians(model.module, cells, reprs, regulators, "per_cell", torch.arange(8)[None])[0]
    full = torch.autograd.functional.jacobian(lambda x: arc_state_forward(model.module, x, onehot), cells)
    cell = torch.arange(8)
    direct = full[cell, :, cell][:, :, regulators].mean(dim=0).T          # [R, G]
    assert ours.shape == (2, N_GENES) and float(direct.abs().max()) > 1e-3
    np.testing.assert_allclose(ours, direct.double().numpy(), atol=1e-5 * (1 + float(direct.abs().max())))


@pytest.mark.parametrize("kind", list(KINDS))
def test_pert_jacobians_are_the_chain_rule_through_arc_states_forward(kinds, kind):
    from probes.routing import encoder_jacobians, pert_jacobians

    model = load_model(kinds[2][kind], CPU)
    cells, onehots = model.cells[:8], model.pert_onehots[[model.pert_index("G3"), model.pert_index("G9")]]
    with torch.no_grad():
        reprs = pert_representations(model.module, onehots)
    jac = pert_jacobians(model.module, cells, reprs, torch.arange(8)[None])
    enc = encoder_jacobians(model.module, onehots)
    for k in range(2):
        direct = torch.autograd.functional.jacobian(
            lambda o: arc_state_forward(model.module, cells, o).mean(dim=0), onehots[k]).double().numpy()
        np.testing.assert_allclose(jac[k].astype(np.float64) @ enc[k].double().numpy(), direct,
                                   atol=1e-4 * (1 + np.abs(direct).max()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_says_what_it_reads_and_what_the_probes_read(kinds, kind):
    model = load_model(kinds[2][kind], CPU)
    assert (model.input_genes is None) == (kind in SE_INPUT)
    if kind == "output_embedding":
        assert model.output == "embedding" and model.gene_names == tuple(f"X_state[{i}]" for i in range(N_EMBED))
    else:
        assert model.output == "genes" and model.gene_names == tuple(GENES)
    assert model.inputs["output"] == model.output and model.inputs["reads_genes"] == (kind not in SE_INPUT)
    assert model.cells.shape[1] == (N_EMBED if kind in SE_INPUT else N_GENES) + (N_BATCHES if kind == "batch_encoder"
                                                                                   else 0)
    if kind == "batch_encoder":
        assert "obs['gem_group']" in model.batch_source and model.cells[:, -N_BATCHES:].sum(dim=1).eq(1).all()
    # a decoded model's control expression is predicted, the others' is the cells' own mean
    if model.input_genes == model.gene_names:
        torch.testing.assert_close(torch.as_tensor(model.output_expression),
                                   model.expression.mean(dim=0).double())


def test_the_output_is_chosen_in_the_registry(kinds):
    _, built, registry = kinds
    embedded = load_model(replace(registry["se_gene_decoder"], output="embedding"), CPU)
    assert embedded.output == "embedding" and len(embedded.gene_names) == N_EMBED
    assert embedded.fingerprint != load_model(registry["se_gene_decoder"], CPU).fingerprint    # caches kept apart
    onehot = embedded.pert_onehots[3]
    with torch.no_grad():
        preds = built["se_gene_decoder"][0].predict_step(
            {"ctrl_cell_emb": embedded.cells[:8], "pert_emb": onehot.expand(8, -1)}, 0, padded=False)["preds"]
        ours = forward_sets(embedded.module, embedded.cells[:8], pert_representations(embedded.module, onehot[None]))
    torch.testing.assert_close(ours[0], preds, atol=1e-5, rtol=0)
    with pytest.raises(ModelLoadError, match="'output: genes'.*no 'genes' output.*Fix 'output'"):
        load_model(replace(registry["output_embedding"], output="genes"), CPU)


def test_batch_labels_the_model_never_saw_are_an_error_naming_them(kinds, tmp_path):
    import anndata

    entry = kinds[2]["batch_encoder"]
    cells = anndata.read_h5ad(entry.cells_path)
    cells.obs["gem_group"] = ["b9"] * cells.n_obs
    cells.write_h5ad(tmp_path / "other_batches.h5ad")
    with pytest.raises(ModelLoadError, match=r"obs\['gem_group'\] has batch labels the model was not trained on "
                                             r"\(b9; batch_onehot_map.torch knows b0, b1, b2\)"):
        load_model(replace(entry, cells_path=tmp_path / "other_batches.h5ad"), CPU)
    with pytest.raises(ModelLoadError, match="no column 'lane'.*Set 'cells.batch_column'"):
        load_model(replace(entry, batch_column="lane"), CPU)


def test_an_embedding_of_the_wrong_width_names_the_matrix(kinds):
    entry = kinds[2]["se_gene_decoder"]
    with pytest.raises(ModelLoadError, match=r"obsm/X_hvg has 48 columns.*reads 10-dimensional cell embedding"):
        load_model(replace(entry, matrix="obsm/X_hvg"), CPU)


PANELS = """
schema_version: 1
pathways:
  first:
    kds: [G0, G1, G2, G3, G4]
    genes: [G0, G1, G2, G3, G4, G16, G17]
    regulators: [G16, G17]
    targets: [G18, G19, G20]
    unrelated_kds: [G10, G11, G12, G13, G14, G15, G16, G17, G18, G19]
  second:
    kds: [G5, G6, G7, G8, G9]
    genes: [G5, G6, G7, G8, G9, G21]
    regulators: [G21, G22]
    targets: [G23, G10, G11]
"""
SPEC = """
schema_version: 1
panels: [panels/kinds.yaml]
hypotheses:
  - id: pert-embedding
    claim: Pathway KDs sit together in pert_encoder space.
    probe: pert_embedding_coherence
    axes: {model: all, pathway: all}
    params: {n_permutations: 99, min_members: 3}
  - id: output-coherence
    claim: Pathway KDs shift the output alike.
    probe: representation_coherence
    axes: {model: all, pathway: all}
    params: {representation: output_shift, n_permutations: 99, min_members: 3}
  - id: targeted
    claim: The pathway's targets follow its regulators under its KDs.
    probe: targeted_jacobian
    axes: {model: all, pathway: [first]}
    params: {mode: per_cell, n_permutations: 99, min_members: 3, n_unrelated: 8}
  - id: knockout
    claim: A pathway's genes have similar KO profiles.
    probe: knockout_coherence
    axes: {model: all, pathway: [first]}
    params: {n_permutations: 99, min_members: 2}
  - id: routing
    claim: KDs with similar ΔY have similar dY/d(pert_repr) Jacobians.
    probe: routing_output_correlation
    axes: {model: all}
    params: {n_permutations: 99}
  - id: axes-genes
    claim: A top SVD axis of the Jacobians loads on the pathway's genes.
    probe: routing_axes
    axes: {model: [output_embedding, se_gene_decoder, gpt2], pathway: [first]}
    params: {by: gene_loadings, n_permutations: 99, min_members: 3}
"""


@pytest.mark.slow
def test_a_run_over_every_kind_gives_verdicts_or_reasons_never_errors(kinds):
    root = kinds[0]
    (root / "hyp/panels").mkdir(parents=True, exist_ok=True)
    (root / "hyp/panels/kinds.yaml").write_text(PANELS)
    (root / "hyp/spec.yaml").write_text(SPEC)
    result = run_pytest(f"--hypotheses={root / 'hyp'}", f"--models={root / 'models.yaml'}",
                        f"--report-dir={root / 'reports'}", f"--cache-dir={root / 'cache'}")
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((root / "reports/latest/verdicts.json").read_text())
    cases = {c["case_id"]: c for c in record["cases"]}
    assert len(cases) == len(KINDS) * 7 + 3
    # routing_axes reads output genes only by gene loadings: the params decide what the check needs
    assert "does not apply" in cases["axes-genes-output_embedding-first"]["reason"]
    assert all("does not apply" not in (cases[f"axes-genes-{k}-first"]["reason"] or "")
               and cases[f"axes-genes-{k}-first"]["verdict"] != "error" for k in ("se_gene_decoder", "gpt2"))
    assert [c["case_id"] for c in cases.values() if c["verdict"] == "error"] == []
    for kind in KINDS:
        mine = [c for c in cases.values() if c["params"]["model"] == kind]
        gene_level = [c for c in mine if c["probe"] in ("targeted_jacobian", "knockout_coherence")]
        if kind in SE_INPUT:
            assert all(c["verdict"] == "inconclusive" and "does not apply" in c["reason"]
                       and "no gene-level inputs" in c["reason"] for c in gene_level), gene_level
        else:
            assert not any("does not apply" in (c["reason"] or "") for c in mine)
        # the representation side and whole-model routing apply to every kind: pert_encoder cosine, ΔY and
        # dY/d(pert_repr) in the output space
        coherence = [c for c in mine if c["probe"] in ("pert_embedding_coherence", "representation_coherence",
                                                      "routing_output_correlation")]
        assert all(c["verdict"] in ("pass", "fail") for c in coherence), [(c["case_id"], c["reason"])
                                                                          for c in coherence]
        assert {c["outputs"][kind] for c in mine} == {"embedding" if kind == "output_embedding" else "genes"}
        inputs = record["run"]["models"][kind]["audit"]["inputs"]
        assert inputs["output"] == ("embedding" if kind == "output_embedding" else "genes")
        assert inputs["reads_genes"] == (kind not in SE_INPUT)
    page = (root / "reports/latest/verdict.html").read_text()
    assert "reads cell embeddings, probed on its <b>embedding</b>" in page
    assert "reads cell embeddings, probed on its <b>gene expression</b>" in page
    assert "batch labels: " in page and "obs[&#39;gem_group&#39;]" in page
    gene_kinds = [c for c in cases.values() if c["probe"] == "targeted_jacobian"
                  and c["params"]["model"] not in SE_INPUT]
    assert sum(c["verdict"] in ("pass", "fail") for c in gene_kinds) >= len(gene_kinds) - 1, \
        [(c["case_id"], c["reason"]) for c in gene_kinds]


@pytest.mark.parametrize("kind", ["batch_token", "confidence_token", "lora", "llama"])
def test_layer_readouts_read_the_cells_positions_only(kinds, kind):
    """A hidden-state readout (representations, SAE features) takes the cells' positions: after a
    prepended batch token, before an appended confidence token."""
    from probes.representations import Readout, _mean_readout, backbone_blocks

    model = load_model(kinds[2][kind], CPU)
    cells, onehot = model.cells[:8], model.pert_onehots[model.pert_index("G3")]
    captured = []
    hook = backbone_blocks(model.module)[0].register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        try:
            arc_state_forward(model.module, cells, onehot)
        finally:
            hook.remove()
        ours = _mean_readout(model.module, cells, pert_representations(model.module, onehot[None]),
                             Readout("layer", 0))
    full = captured[0][0]
    assert full.shape[0] == 8 + (kind in ("batch_token", "confidence_token"))
    start = 1 if kind == "batch_token" else 0
    torch.testing.assert_close(ours[0], full[start:start + 8].mean(dim=0), atol=1e-5, rtol=1e-5)
