"""Real screens load as they are: rows and columns read from the .h5ad by selection (CSR X by its row
pointers, dense obsm by row ranges), in the layout bench/screen.py writes at Replogle size. Truth is
anndata's own in-memory reading of the same file."""

import anndata as ad
import numpy as np
import pytest

from bench.screen import write_screen
from core.errors import ModelLoadError
from fixtures.cells import read_control_cells, read_observed_cells, read_rows


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    path = write_screen(tmp_path_factory.mktemp("screen") / "screen.h5ad", n_cells=3_000, n_genes=600, n_hvg=150,
                        n_kds=120, block=700)
    return path, ad.read_h5ad(path)


def test_the_generated_screen_has_the_layout_arc_state_trains_on(screen):
    path, adata = screen
    assert adata.shape == (3_000, 600) and adata.obsm["X_hvg"].shape == (3_000, 150)
    assert adata.var["highly_variable"].sum() == 150
    assert list(adata.uns["X_hvg_var_names"]) == list(adata.var_names[adata.var["highly_variable"]])
    assert adata.X.format == "csr" and 0.01 < adata.X.nnz / np.prod(adata.shape) < 0.5
    assert (adata.obs["gene"] == "non-targeting").sum() == 150 and adata.obs["gene"].nunique() > 100
    hvg = adata.var["highly_variable"].to_numpy()
    counts = adata.X.toarray()
    expected = np.log1p(counts[:, hvg] / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4)
    assert np.allclose(adata.obsm["X_hvg"], expected, atol=1e-4)       # X_hvg is X's HVGs, log-normalised


@pytest.mark.parametrize("block", [1, 64, 100_000])
def test_rows_and_columns_read_by_selection_equal_anndatas_reading(screen, block):
    path, adata = screen
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 3_000, 50), [2_999, 0, 7, 7]])       # any order, repeats
    columns = rng.permutation(600)[:40]
    assert np.array_equal(read_rows(path, "X", rows, columns, block=block), adata.X[rows][:, columns].toarray())
    assert np.array_equal(read_rows(path, "obsm/X_hvg", rows, block=block), adata.obsm["X_hvg"][rows])
    assert read_rows(path, "X", np.array([], dtype=int)).shape == (0, 600)


def test_a_screen_is_read_grouped_by_kd_in_the_columns_asked_for(screen):
    path, adata = screen
    hvg_names = tuple(adata.var_names[adata.var["highly_variable"]])
    wanted = hvg_names[::-1][:60]
    cells = read_observed_cells(path, "gene", "non-targeting", "obsm/X_hvg", None, wanted=wanted)
    assert cells.column_names == wanted and cells.matrix.shape == (3_000, 60)
    labels = adata.obs["gene"].astype(str).to_numpy()
    assert sorted(cells.labels.tolist()) == cells.labels.tolist()              # each KD one slice
    columns = [hvg_names.index(g) for g in wanted]
    for kd in ["non-targeting", labels[labels != "non-targeting"][0]]:
        mine = cells.matrix[cells.labels == kd]
        theirs = adata.obsm["X_hvg"][labels == kd][:, columns]
        assert np.array_equal(mine, theirs)                                    # file order kept within a KD
    controls = read_control_cells(path, "gene", "non-targeting", "X", None)
    assert np.array_equal(controls.matrix, adata.X[labels == "non-targeting"].toarray())


def test_a_matrix_stored_by_columns_is_refused_with_the_fix(tmp_path, screen):
    _, adata = screen
    other = adata.copy()
    other.X = other.X.tocsc()
    path = tmp_path / "csc.h5ad"
    other.write_h5ad(path)
    with pytest.raises(ModelLoadError, match=r"csc\.h5ad: X is stored as csc_matrix.*Rewrite it as CSR"):
        read_control_cells(path, "gene", "non-targeting", "X", None)
