"""Loading real arc-state model_dirs: genes, cells, safety, and every failure explained."""

import os
import pickle
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.errors import ModelLoadError, SpecError, UnsafeCheckpointError
from fixtures.arc_state import load_model
from fixtures.registry import load_registry
from fixtures.safe_load import pickle_load
from probes.forward import arc_state_forward, forward_sets

from .helpers import DEMO

CPU = torch.device("cpu")


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model_copy(tmp_path, demo_registry):
    """A writable copy of the demo's hepg2_fewshot model_dir and its registry entry."""
    entry = demo_registry["hepg2_fewshot"]
    target = tmp_path / "model"
    shutil.copytree(entry.model_dir, target)
    return replace(entry, model_dir=target, checkpoint=target / "checkpoints" / "final.ckpt")


def test_demo_models_load_with_their_genes_and_cells(demo_run):
    hepg2 = demo_run.model("hepg2_fewshot")
    jurkat = demo_run.model("jurkat_fewshot")
    assert len(hepg2.gene_names) == 234 and hepg2.cells.shape == (512, 234)
    assert hepg2.gene_source == "var_dims.pkl gene_names"
    # jurkat's var_dims.pkl lists all 274 measured genes, so the names come from the cells
    assert jurkat.gene_source.startswith("control cells")
    assert hepg2.control_pert == "non-targeting" and len(hepg2.kd_names) == 124
    assert not hepg2.module.training
    assert hepg2.fingerprint.startswith("sha256:") and hepg2.fingerprint != jurkat.fingerprint


def test_decomposed_forward_equals_arc_state_forward(demo_run):
    model = demo_run.model("hepg2_fewshot")
    cells = model.cells[:32]
    onehot = model.pert_onehots[model.pert_index("RPL3")]
    with torch.no_grad():
        reference = arc_state_forward(model.module, cells, onehot)
        ours = forward_sets(model.module, cells, model.module.pert_encoder(onehot[None]))[0]
    assert torch.allclose(ours, reference, atol=1e-5)


def test_disallowed_global_in_checkpoint_is_refused_without_running(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = torch.load(model_copy.checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["note"] = Payload(marker)
    torch.save(ckpt, model_copy.checkpoint)
    with pytest.raises(UnsafeCheckpointError, match="posix.system") as info:
        load_model(model_copy, CPU)
    assert "trusted: true" in str(info.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker)))   # the payload is real: unrestricted loading runs it
    assert marker.exists()


def test_disallowed_global_in_var_dims_is_refused_without_running(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    (model_copy.model_dir / "var_dims.pkl").write_bytes(pickle.dumps({"gene_names": [], "x": Payload(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="var_dims.pkl"):
        load_model(model_copy, CPU)
    assert not marker.exists()


def test_var_dims_with_numpy_strings_is_allowed(tmp_path):
    path = tmp_path / "var_dims.pkl"
    path.write_bytes(pickle.dumps({"gene_names": list(np.array(["A", "B"])), "pert_dim": np.int64(3)}))
    assert pickle_load(path, trusted=False, what="var_dims.pkl")["gene_names"] == ["A", "B"]


def test_truncated_checkpoint_says_so(model_copy):
    data = model_copy.checkpoint.read_bytes()
    model_copy.checkpoint.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(model_copy, CPU)


def test_missing_files_name_what_to_do(model_copy, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(replace(model_copy, model_dir=tmp_path / "nope"), CPU)
    with pytest.raises(ModelLoadError, match=r"available: final.ckpt"):
        load_model(replace(model_copy, checkpoint=model_copy.model_dir / "checkpoints" / "best.ckpt"), CPU)
    (model_copy.model_dir / "pert_onehot_map.pt").unlink()
    with pytest.raises(ModelLoadError, match="lacks pert_onehot_map.pt"):
        load_model(model_copy, CPU)


def test_gene_file_of_the_wrong_length_is_an_error(model_copy, tmp_path):
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(f"G{i}" for i in range(199)))
    with pytest.raises(ModelLoadError, match="lists 199 genes but the model has 234 inputs"):
        load_model(replace(model_copy, genes_path=genes), CPU)


def test_unresolvable_gene_basis_says_what_to_supply(model_copy, tmp_path):
    """var_dims lists the full gene list and the cells carry no names of the right width."""
    import anndata as ad

    cells = ad.read_h5ad(model_copy.cells_path)
    wide = ad.AnnData(np.hstack([cells.X, cells.X[:, :40]]), obs=cells.obs)
    wide.var_names = [f"G{i}" for i in range(274)]
    wide.write_h5ad(tmp_path / "wide.h5ad")
    var_dims = pickle.loads((model_copy.model_dir / "var_dims.pkl").read_bytes())
    var_dims["gene_names"] = [f"G{i}" for i in range(274)]
    (model_copy.model_dir / "var_dims.pkl").write_bytes(pickle.dumps(var_dims))
    with pytest.raises(ModelLoadError, match="Add 'genes: <file>'") as info:
        load_model(replace(model_copy, cells_path=tmp_path / "wide.h5ad"), CPU)
    assert "234 genes" in str(info.value) and "274" in str(info.value)


def test_gene_names_come_from_the_cells_uns_where_newer_arc_state_puts_them(model_copy, tmp_path):
    """var_dims.pkl lists every measured gene (274), and the cells hold an obsm/X_hvg matrix without a
    highly_variable column, whose 234 columns uns["X_hvg_var_names"] names: the names come from uns."""
    import anndata as ad

    genes = [str(g) for g in pickle.loads((model_copy.model_dir / "var_dims.pkl").read_bytes())["gene_names"]]
    cells = ad.read_h5ad(model_copy.cells_path)
    measured = ad.AnnData(np.hstack([np.asarray(cells[:, genes].X), np.asarray(cells.X[:, :40])]), obs=cells.obs)
    measured.var_names = genes + [f"EXTRA{i}" for i in range(40)]
    measured.obsm["X_hvg"] = np.asarray(cells[:, genes].X)
    measured.uns["X_hvg_var_names"] = np.array(genes)
    measured.write_h5ad(tmp_path / "measured.h5ad")
    var_dims = pickle.loads((model_copy.model_dir / "var_dims.pkl").read_bytes())
    var_dims["gene_names"] = list(measured.var_names)               # the full list: not the input genes
    (model_copy.model_dir / "var_dims.pkl").write_bytes(pickle.dumps(var_dims))
    model = load_model(replace(model_copy, cells_path=tmp_path / "measured.h5ad", matrix="obsm/X_hvg"), CPU)
    assert model.gene_source == f"{tmp_path / 'measured.h5ad'}: uns['X_hvg_var_names']"
    assert list(model.gene_names) == genes
    controls = np.asarray(cells[:, genes].X)[(cells.obs["gene"] == "non-targeting").to_numpy()]
    assert torch.equal(model.cells, torch.as_tensor(controls))


def test_gene_name_sources_that_agree_are_fine_and_the_first_one_is_named(model_copy, tmp_path):
    genes = [str(g) for g in pickle.loads((model_copy.model_dir / "var_dims.pkl").read_bytes())["gene_names"]]
    (tmp_path / "genes.txt").write_text("\n".join(genes))
    model = load_model(replace(model_copy, genes_path=tmp_path / "genes.txt"), CPU)
    assert model.gene_source == f"registry genes file {tmp_path / 'genes.txt'}" and list(model.gene_names) == genes


def test_cells_problems_are_explained(model_copy, tmp_path):
    import anndata as ad

    with pytest.raises(ModelLoadError, match="Did you mean 'gene'"):
        load_model(replace(model_copy, obs_column="genes"), CPU)
    with pytest.raises(ModelLoadError, match="did you mean 'non-targeting'"):
        load_model(replace(model_copy, control_value="non_targeting"), CPU)
    cells = ad.read_h5ad(model_copy.cells_path)
    cells.X[3, 7] = np.nan
    cells.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(ModelLoadError, match="1 NaN or infinite values"):
        load_model(replace(model_copy, cells_path=tmp_path / "nan.h5ad"), CPU)


def test_registry_paths_and_environment(write, monkeypatch, tmp_path):
    text = """
    schema_version: 1
    models:
      m1:
        model_dir: ${ST_TEST_MODELS}/hepg2
        cells: {path: cells.h5ad, obs_column: gene, control_value: non-targeting}
        cell_line: hepg2
        split: fewshot
    """
    path = write("models.yaml", text)
    with pytest.raises(SpecError, match=r"\$\{ST_TEST_MODELS\} is not set") as info:
        load_registry(path)
    assert info.value.line == 4
    monkeypatch.setenv("ST_TEST_MODELS", "/data/st")
    entry = load_registry(path)["m1"]
    assert str(entry.model_dir) == "/data/st/hepg2"
    assert entry.checkpoint == entry.model_dir / "checkpoints" / "final.ckpt"
    assert entry.cells_path == tmp_path / "cells.h5ad" and entry.trusted is False
    with pytest.raises(SpecError, match="did you mean 'cell_line'"):
        load_registry(write("models.yaml", text.replace("cell_line:", "cellline:")))


def test_demo_registry_points_at_the_bundled_models(demo_registry):
    assert set(demo_registry) == {"hepg2_fewshot", "jurkat_fewshot", "hepg2_zeroshot"}
    assert all(e.model_dir.parent == DEMO / "models" for e in demo_registry.values())


def test_the_perturbed_entry_defaults_to_the_cells_entry(write):
    registry = write("r.yaml", f"""
        schema_version: 1
        models:
          a:
            model_dir: {DEMO / 'models/hepg2_fewshot'}
            cells: {{path: {DEMO / 'cells/hepg2.h5ad'}, obs_column: gene, control_value: non-targeting}}
            perturbed: {{min_cells: 5}}
            cell_line: hepg2
            split: fewshot
          b:
            model_dir: {DEMO / 'models/hepg2_fewshot'}
            cells: {{path: {DEMO / 'cells/hepg2.h5ad'}, obs_column: gene, control_value: non-targeting}}
            perturbed: {{path: screen.h5ad, obs_column: sgRNA_target}}
            cell_line: hepg2
            split: fewshot
        """)
    entries = load_registry(registry)
    a, b = entries["a"].perturbed, entries["b"].perturbed
    assert (a.path, a.obs_column, a.control_value, a.min_cells) == (str(DEMO / "cells/hepg2.h5ad"), "gene",
                                                                    "non-targeting", 5)
    assert b.path == str(registry.parent / "screen.h5ad") and b.obs_column == "sgRNA_target"


@pytest.mark.parametrize("change, message", [
    ({"path": "/nowhere/screen.h5ad"}, "perturbed-cells file not found. Fix 'perturbed.path'"),
    ({"obs_column": "guide"}, "Columns: gene, cell_type, gem_group. Fix 'perturbed.obs_column'"),
    ({"control_value": "NT"}, "no cells have gene == 'NT'"),
])
def test_perturbed_cell_problems_name_the_field(demo_registry, change, message):
    from suite.session import RunContext

    entry = demo_registry["hepg2_fewshot"]
    broken = replace(entry, perturbed=replace(entry.perturbed, **change))
    ctx = RunContext({"hepg2_fewshot": broken}, CPU)
    with pytest.raises(ModelLoadError) as info:
        ctx.learnedness("hepg2_fewshot")
    assert message in str(info.value)
    if "control" in message:
        assert "Fix 'perturbed.control_value'" in str(info.value)


def test_a_random_weight_model_written_as_a_model_dir_loads_through_the_registry(tmp_path):
    """bench/shapes.write_model_dir: what the benchmarks point the suite at, loaded as a user's run is."""
    from bench.shapes import write_model_dir
    from fixtures.arc_state import load_model
    from fixtures.registry import load_registry
    from probes.forward import forward_sets

    from .helpers import tiny_state_model

    module = tiny_state_model("GPT2", genes=12, perts=5, cells=8, seed=7)
    genes, perts = [f"G{i}" for i in range(12)], ["non-targeting", "KD1", "KD2", "KD3", "KD4"]
    cells = np.random.default_rng(0).random((20, 12)).astype(np.float32)
    registry = load_registry(write_model_dir(module, tmp_path / "random_model", genes, perts, cells))
    loaded = load_model(registry["random_model"], torch.device("cpu"))
    assert loaded.pert_names == tuple(perts) and loaded.gene_names == tuple(genes)
    assert loaded.control_pert == "non-targeting" and loaded.cells.shape == (20, 12)
    onehot = loaded.pert_onehots[[2]]
    with torch.no_grad():
        ours = forward_sets(loaded.module, loaded.cells[:8], loaded.module.pert_encoder(onehot))
        theirs = forward_sets(module, torch.as_tensor(cells[:8]), module.pert_encoder(torch.eye(5)[[2]]))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
