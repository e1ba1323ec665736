"""A Replogle-sized Perturb-seq screen as an .h5ad in the real layout, and how much memory reading it takes.

    python -m bench.screen --out /tmp/screen.h5ad            # write 300,000 cells (~4 min, ~4 GB)
    python -m bench.screen --out /tmp/screen.h5ad --read     # then read it as a registry's `perturbed:` entry

The layout is the one arc-state trains on: sparse CSR counts of every measured gene in `X`
(8,000 genes here), the log-normalised highly variable genes dense in `obsm/X_hvg` (2,000),
`var.highly_variable` naming them, and `obs.gene` the KD of each cell (2,000 KDs and
non-targeting controls). Counts are synthetic (negative binomial around a per-gene mean, each KD
shifting a program of 40 genes); what this file is for is size and layout. X and X_hvg are written
block by block with h5py, so the generator never holds the screen either.

`--read` reads what a model with 2,000 HVG outputs reads (fixtures.cells.read_observed_cells on
obsm/X_hvg, grouped by KD, and the controls of X for an all-gene input), and prints the seconds and
the peak resident memory of each, beside the size of the densified matrices it did not build.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def write_screen(path: Path, n_cells: int = 300_000, n_genes: int = 8_000, n_hvg: int = 2_000, n_kds: int = 2_000,
                 control_share: float = 0.05, seed: int = 0, block: int = 20_000) -> Path:
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i:05d}" for i in range(n_genes)])
    hvg = np.sort(rng.choice(n_genes, n_hvg, replace=False))
    kds = [str(g) for g in genes[rng.choice(n_genes, n_kds, replace=False)]]
    n_controls = int(n_cells * control_share)
    labels = np.array(["non-targeting"] * n_controls + [kds[i] for i in rng.integers(0, n_kds, n_cells - n_controls)])
    labels = labels[rng.permutation(n_cells)]
    programs = {kd: rng.choice(n_genes, 40, replace=False) for kd in kds}
    mean = np.exp(rng.normal(-2.5, 1.2, n_genes)).astype(np.float32)     # most genes rarely detected

    var = pd.DataFrame({"highly_variable": np.isin(np.arange(n_genes), hvg)}, index=genes)
    obs = pd.DataFrame({"gene": pd.Categorical(labels)}, index=[f"cell{i}" for i in range(n_cells)])
    skeleton = ad.AnnData(X=sp.csr_matrix((n_cells, n_genes), dtype=np.float32), obs=obs, var=var)
    skeleton.uns["X_hvg_var_names"] = genes[hvg]
    skeleton.write_h5ad(path)

    with h5py.File(path, "r+") as f:
        del f["X"]
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = x.create_dataset("data", (0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
        indices = x.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = [np.zeros(1, dtype=np.int64)]
        obsm = f["obsm"] if "obsm" in f else f.create_group("obsm")
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        x_hvg = obsm.create_dataset("X_hvg", (n_cells, n_hvg), dtype=np.float32, chunks=(1024, n_hvg))
        x_hvg.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for start in range(0, n_cells, block):
            rows = labels[start:start + block]
            rate = np.repeat(mean[None], len(rows), axis=0)
            for kd in set(rows.tolist()) - {"non-targeting"}:
                rate[np.ix_(rows == kd, programs[kd])] *= 0.4
            counts = rng.poisson(rate * rng.gamma(2.0, 0.5, rate.shape).astype(np.float32)).astype(np.float32)
            part = sp.csr_matrix(counts)
            offset = data.shape[0]
            data.resize((offset + part.nnz,))
            indices.resize((offset + part.nnz,))
            data[offset:] = part.data
            indices[offset:] = part.indices
            indptr.append(part.indptr[1:].astype(np.int64) + offset)
            totals = counts.sum(axis=1, keepdims=True)
            x_hvg[start:start + len(rows)] = np.log1p(counts[:, hvg] / np.maximum(totals, 1) * 1e4)
        x.create_dataset("indptr", data=np.concatenate(indptr))
    return path


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def read_like_a_model(path: Path) -> None:
    from fixtures.cells import read_control_cells, read_observed_cells

    before = _peak_gb()
    t = time.perf_counter()
    cells = read_observed_cells(path, "gene", "non-targeting", "obsm/X_hvg", None)
    seconds = time.perf_counter() - t
    n, width = cells.matrix.shape
    print(f"every cell, obsm/X_hvg grouped by KD: {n:,} x {width:,} in {seconds:.1f} s; peak RSS {_peak_gb():.2f} GB "
          f"(before {before:.2f} GB; the matrix itself {cells.matrix.nbytes / 2**30:.2f} GB)")
    del cells
    t = time.perf_counter()
    controls = read_control_cells(path, "gene", "non-targeting", "X", None)
    seconds = time.perf_counter() - t
    dense = n * len(controls.file_genes) * 4 / 2 ** 30
    print(f"control cells of sparse X: {controls.matrix.shape[0]:,} x {controls.matrix.shape[1]:,} in {seconds:.1f} s; "
          f"peak RSS {_peak_gb():.2f} GB (all of X densified would be {dense:.1f} GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cells", type=int, default=300_000)
    parser.add_argument("--read", action="store_true", help="read an existing file as a model would")
    args = parser.parse_args()
    if not args.read:
        t = time.perf_counter()
        write_screen(args.out, n_cells=args.cells)
        print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GB) in {time.perf_counter() - t:.0f} s")
    else:
        read_like_a_model(args.out)


if __name__ == "__main__":
    main()
