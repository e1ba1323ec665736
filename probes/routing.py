"""Routing: how the predicted output depends on the perturbation representation (Option 5, NB05–NB10).

J_k = d mean_c Y_c / d pert_repr, evaluated at KD k's own pert_repr: [G, H] per KD. pert_repr is
added to every cell, so one forward-mode tangent on it moves all cells at once; the basal encoder
does not see it and runs once per cell ordering. Tangents over the H directions are vmapped in
chunks (`direction_chunk`), KDs are batched `kd_chunk` at a time, and rows are written into a
caller's array (a disk memmap at released shapes: 1,035 x 2000 x 328 floats is 2.7 GB).

Everything downstream works from the KD x KD Gram of flattened Jacobians, computed in blocks
(`streaming_gram`). Released models' Jacobians share one dominant component (pairwise cosine
0.9998+ on a random-weight model), so similarities are taken after removing the across-KD mean
(`centered_cosine`), and the SVD axes are those of the centred stack.

Two models' pert_repr spaces are learned separately, so their H axes are not the same axes:
cross-model comparisons use the one-hot Jacobian dY/d onehot = J_k · d pert_repr/d onehot
(NB08), whose axes (output genes x KD vocabulary) two models share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.func import jacfwd, jvp, vmap

from .forward import decode, encode_cells, output_width
from .jacobian import forward_mode_backbone

Progress = Callable[[int, int], None]


@torch.no_grad()
def pert_jacobians(module: torch.nn.Module, cells: torch.Tensor, pert_reprs: torch.Tensor, orderings: torch.Tensor,
                   out: np.ndarray | None = None, kd_chunk: int = 1, direction_chunk: int | None = 64,
                   progress: Progress | None = None, directions: torch.Tensor | None = None) -> np.ndarray:
    """[K, G, r] Jacobians of the cell-averaged prediction with respect to each KD's pert_repr, applied
    to `directions` and averaged over `orderings` [N, S] of the cell set; written into `out` when given.

    `directions` is [r, H] (the same tangents for every KD: `sketch_directions`), [K, r, H] (each KD
    its own), or None: the H unit vectors, the full [K, G, H] Jacobians."""
    n_kds, hidden = pert_reprs.shape
    if directions is None:
        directions = torch.eye(hidden, device=cells.device, dtype=cells.dtype)
    directions = directions.to(device=cells.device, dtype=cells.dtype)
    per_kd = directions.dim() == 3
    width = directions.shape[-2]
    result = out if out is not None else np.zeros((n_kds, output_width(module), width), dtype=np.float32)
    encoded = [tuple(None if part is None else part[None]
                     for part in encode_cells(module, cells[order.to(cells.device)])) for order in orderings]
    with forward_mode_backbone(module, cells, pert_reprs[0]):
        for start in range(0, n_kds, kd_chunk):
            block = pert_reprs[start:start + kd_chunk]
            tangents = directions[start:start + len(block)] if per_kd else directions.expand(len(block), -1, -1)
            total = sum(_block_jacobian(module, one, block, tangents, direction_chunk) for one in encoded)
            result[start:start + len(block)] = (total / len(encoded)).cpu().numpy()
            if progress:
                progress(start + len(block), n_kds)
    return result


def _block_jacobian(module: torch.nn.Module, encoded: tuple, block: torch.Tensor, tangents: torch.Tensor,
                    chunk: int | None) -> torch.Tensor:
    """[B, G, r] for a block of KDs and their tangents [B, r, H]: one forward-mode pass per direction,
    vmapped; `encoded` is forward.encode_cells of the set, with a leading axis of 1."""
    def mean_output(pert_repr: torch.Tensor) -> torch.Tensor:
        cell_repr, basal, batch_repr = (None if part is None else part.expand(len(pert_repr), -1, -1)
                                        for part in encoded)
        return decode(module, cell_repr, pert_repr[:, None, :], basal, batch_repr).mean(dim=1)

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return jvp(mean_output, (block,), (tangent,))[1]

    return vmap(column, in_dims=1, chunk_size=chunk)(tangents).permute(1, 2, 0).double()


Sketch = Literal["rademacher", "gaussian"]


def sketch_directions(size: int, n_directions: int, seed: int, kind: Sketch = "rademacher") -> torch.Tensor:
    """[r, size] random directions scaled by 1/sqrt(r), so that for any two matrices A, B with `size`
    columns the sketched inner product <A V^T, B V^T> is an unbiased estimate of <A, B> (E[V^T V] = I):
    the Gram of sketched Jacobians estimates the Gram of the full ones (Hutchinson's estimator).
    Rademacher signs have the smaller variance of the two; seeded, so copies and reruns share them."""
    rng = np.random.default_rng([seed, size, n_directions])
    draw = (rng.choice([-1.0, 1.0], size=(n_directions, size)) if kind == "rademacher"
            else rng.standard_normal((n_directions, size)))
    return torch.from_numpy(draw / np.sqrt(n_directions)).float()


def direction_groups(n_directions: int, n_groups: int = 8) -> list[np.ndarray]:
    """Contiguous groups of the sketch's directions (iid, so any split is fair) for the jackknife."""
    return [g for g in np.array_split(np.arange(n_directions), min(n_groups, n_directions)) if len(g)]


def group_grams(rows: np.ndarray, groups: list[np.ndarray], chunk: int = 64) -> np.ndarray:
    """[B, K, K] the Gram of the rows' columns (last axis) in each group: they sum to the full Gram."""
    return np.stack([streaming_gram(rows, chunk, columns=g) for g in groups])


def jackknife_se(estimates: np.ndarray) -> float:
    """The jackknife standard error from the leave-one-group-out estimates."""
    estimates = np.asarray(estimates, dtype=float)
    if len(estimates) < 2 or not np.all(np.isfinite(estimates)):
        return float("nan")
    return float(np.sqrt((len(estimates) - 1) / len(estimates) * ((estimates - estimates.mean()) ** 2).sum()))


@torch.no_grad()
def encoder_jacobians(module: torch.nn.Module, onehots: torch.Tensor) -> torch.Tensor:
    """[K, H, P]: d pert_repr / d onehot at each KD's one-hot input."""
    return vmap(jacfwd(module.pert_encoder))(onehots)


@torch.no_grad()
def onehot_tangents(module: torch.nn.Module, onehots: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[K, r, H]: d pert_repr / d onehot at each KD's one-hot input, applied to `directions` [r, P] of
    the one-hot space; as pert_jacobians' per-KD directions they give dY/d onehot along them (NB08's
    one-hot Jacobian) without forming the [K, H, P] encoder Jacobians."""
    def along(onehot: torch.Tensor) -> torch.Tensor:
        return vmap(lambda d: jvp(module.pert_encoder, (onehot,), (d,))[1])(directions)

    return vmap(along)(onehots)


def streaming_gram(rows: np.ndarray, chunk: int = 64, columns: np.ndarray | None = None) -> np.ndarray:
    """[K, K] float64 Gram of the flattened rows, read `chunk` rows at a time (rows may be a memmap);
    with `columns`, of those entries of the rows' last axis only."""
    def read(start: int) -> np.ndarray:
        block = np.asarray(rows[start:start + chunk], dtype=np.float64)
        return (block if columns is None else block[..., columns]).reshape(len(block), -1)

    gram = np.zeros((len(rows), len(rows)))
    for i in range(0, len(rows), chunk):
        a = read(i)
        for j in range(i, len(rows), chunk):
            b = a if j == i else read(j)
            gram[i:i + chunk, j:j + chunk] = a @ b.T
            gram[j:j + chunk, i:i + chunk] = gram[i:i + chunk, j:j + chunk].T
    return gram


def centered_gram(gram: np.ndarray) -> np.ndarray:
    """The Gram of the rows after subtracting their mean row, from the raw Gram alone."""
    return gram - gram.mean(axis=0, keepdims=True) - gram.mean(axis=1, keepdims=True) + gram.mean()


def gram_cosine(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(gram), np.finfo(float).tiny, None))
    return gram / np.outer(norms, norms)


def centered_cosine(gram: np.ndarray) -> np.ndarray:
    """Pairwise cosine of the rows after removing the across-row mean."""
    return gram_cosine(centered_gram(gram))


@dataclass(frozen=True)
class Axes:
    """The top singular directions of the centred Jacobian stack."""

    scores: np.ndarray          # [K, n]: each KD's coordinate on each axis
    gene_loadings: np.ndarray   # [n, G]: share of each axis's squared loading on each output gene (rows sum to 1)
    variance_share: np.ndarray  # [n]: share of the stack's centred variance on each axis


def svd_axes(gram: np.ndarray, rows: np.ndarray, n_axes: int, chunk: int = 64, columns: np.ndarray | None = None,
             fit: np.ndarray | None = None) -> Axes:
    """SVD of the centred [K, G*H] stack through its Gram: U and S from the eigenvectors, and each
    right singular vector V_a = sum_k rows[k] U[k, a] / s_a in one streaming pass (the eigenvectors
    are orthogonal to the mean, so the mean row cancels). With `columns`, of those entries of the
    rows' last axis only (`gram` must be theirs). With `fit` (row positions), the axes are those of
    the `fit` rows alone and every row is scored on them: (rows[k] - mean of the fit rows) · V_a, from
    the Gram's columns of the fit rows (for the fit rows, U s exactly)."""
    fit = np.arange(len(gram)) if fit is None else np.asarray(fit)
    values, vectors = np.linalg.eigh(centered_gram(gram[np.ix_(fit, fit)]))
    order = np.argsort(values)[::-1][:n_axes]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    singular = np.sqrt(values)
    safe = np.where(singular > 0, singular, 1.0)
    width = rows.shape[-1] if columns is None else len(columns)
    right = np.zeros((n_axes, *rows.shape[1:-1], width))
    for start in range(0, len(fit), chunk):
        block = np.asarray(rows[fit[start:start + chunk]], dtype=np.float64)
        block = block if columns is None else block[..., columns]
        right += np.einsum("ka,k...->a...", vectors[start:start + chunk], block)
    right /= safe.reshape(-1, *([1] * (rows.ndim - 1)))
    loadings = (right ** 2).reshape(n_axes, rows.shape[1], -1).sum(axis=2)
    loadings /= np.where(loadings.sum(axis=1, keepdims=True) > 0, loadings.sum(axis=1, keepdims=True), 1.0)
    total = max(float(np.trace(centered_gram(gram[np.ix_(fit, fit)]))), np.finfo(float).tiny)
    if len(fit) == len(gram) and (fit == np.arange(len(gram))).all():
        scores = vectors * singular
    else:
        cross = gram[:, fit] @ vectors
        scores = (cross - cross[fit].mean(axis=0)) / safe * (singular > 0)
    return Axes(scores=scores, gene_loadings=loadings, variance_share=values / total)


@dataclass(frozen=True)
class RoutingComparison:
    """Per-KD agreement of two models' one-hot Jacobians on their shared genes and KD vocabulary."""

    correlation: np.ndarray     # [K] Pearson r of the flattened one-hot Jacobians
    divergence: np.ndarray      # [K] ||A - B|| / mean(||A||, ||B||)


def compare_onehot_routing(jac_a: np.ndarray, enc_a: torch.Tensor, jac_b: np.ndarray, enc_b: torch.Tensor,
                           genes_a: list[int], genes_b: list[int], vocab_a: list[int], vocab_b: list[int],
                           chunk: int = 64) -> RoutingComparison:
    """Compare, KD by KD, dY/d onehot = J_k · E_k of two models, restricted to the shared output
    genes (`genes_*` index J's rows) and shared KD vocabulary (`vocab_*` index E's columns); `chunk`
    KDs at a time (the Jacobians may be a memmap)."""
    correlation, divergence = np.zeros(len(jac_a)), np.zeros(len(jac_a))
    for start in range(0, len(jac_a), chunk):
        rows = slice(start, start + chunk)
        a = _onehot_jacobians(jac_a[rows], enc_a[rows], genes_a, vocab_a)
        b = _onehot_jacobians(jac_b[rows], enc_b[rows], genes_b, vocab_b)
        ca, cb = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):     # a constant Jacobian has no correlation: NaN
            correlation[rows] = (ca * cb).sum(axis=1) / np.sqrt((ca * ca).sum(axis=1) * (cb * cb).sum(axis=1))
        size = (np.linalg.norm(a, axis=1) + np.linalg.norm(b, axis=1)) / 2
        divergence[rows] = np.linalg.norm(a - b, axis=1) / np.maximum(size, 1e-300)
    return RoutingComparison(correlation, divergence)


@dataclass(frozen=True)
class SketchedComparison:
    """compare_sketched_routing's estimates, and the same with each group of directions left out."""

    estimate: RoutingComparison
    leave_one_out: tuple[RoutingComparison, ...]


def compare_sketched_routing(rows_a: np.ndarray, rows_b: np.ndarray, genes_a: list[int], genes_b: list[int],
                             direction_sums: np.ndarray, n_vocab: int, groups: list[np.ndarray], chunk: int = 64
                             ) -> SketchedComparison:
    """compare_onehot_routing from sketches: rows_* [K, G, r + 1] hold A_k V^T (A_k = J_k E_k on the
    shared KD vocabulary, V = sketch_directions over that vocabulary, the same for both models) and,
    in the last column, A_k 1 (each gene's sum over the vocabulary, exact). The sum gives A's mean
    entry exactly, so the correlation is taken from sketches of the centred A - mean (no difference of
    large numbers), and the divergence from the sketch of A - B itself. `direction_sums` [r] are the
    row sums of V; `groups` split the r directions for the jackknife."""
    n_kds, width = len(rows_a), rows_a.shape[-1] - 1
    size = len(genes_a) * n_vocab
    parts = np.zeros((6, n_kds, len(groups)))        # <a,b>c, <a,a>c, <b,b>c, <a,a>, <b,b>, <a-b,a-b>
    for start in range(0, n_kds, chunk):
        rows = slice(start, start + chunk)
        a = np.asarray(rows_a[rows], dtype=np.float64)[:, genes_a]
        b = np.asarray(rows_b[rows], dtype=np.float64)[:, genes_b]
        sa, sb = a[..., :width], b[..., :width]
        mean_a, mean_b = a[..., width].sum(axis=1) / size, b[..., width].sum(axis=1) / size
        ca = sa - mean_a[:, None, None] * direction_sums[None, None, :]
        cb = sb - mean_b[:, None, None] * direction_sums[None, None, :]
        for g, columns in enumerate(groups):
            for part, (x, y) in enumerate(((ca, cb), (ca, ca), (cb, cb), (sa, sa), (sb, sb), (sa - sb, sa - sb))):
                parts[part, rows, g] = (x[..., columns] * y[..., columns]).sum(axis=(1, 2))

    def comparison(sums: np.ndarray) -> RoutingComparison:
        ab, aa, bb, na, nb, dd = sums
        with np.errstate(invalid="ignore", divide="ignore"):
            correlation = ab / np.sqrt(aa * bb)
        typical = (np.sqrt(na) + np.sqrt(nb)) / 2
        return RoutingComparison(correlation, np.sqrt(dd) / np.maximum(typical, 1e-300))

    # both statistics are ratios of the sums, so leaving a group out needs no rescaling to r directions
    total = parts.sum(axis=2)
    return SketchedComparison(comparison(total), tuple(comparison(total - parts[..., g]) for g in range(len(groups))))


def _onehot_jacobians(jac: np.ndarray, enc: torch.Tensor, genes: list[int], vocab: list[int]) -> np.ndarray:
    """[k, G' * V'] the flattened one-hot Jacobians of a block of KDs."""
    product = np.asarray(jac, dtype=np.float64)[:, genes] @ enc[:, :, vocab].double().cpu().numpy()
    return product.reshape(len(product), -1)


def kd_chunk(device: torch.device, cells: int, hidden: int) -> int:
    """KDs per Jacobian pass, sized so a pass stays near a fixed amount of work: small models gain from
    batching KDs (0.72 s -> 0.48 s for 16 demo KDs on CPU); at released shapes one KD fills a CPU."""
    budget = 2 ** 25 if device.type == "cuda" else 2 ** 19
    return max(1, budget // (cells * hidden * hidden))
