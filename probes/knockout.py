"""In-silico knockouts (Option 4, NB04): what the model predicts when an input gene is removed.

KO row i = mean over cells of Y(cells with X[:, i] = 0, perturbation) - Y(cells, perturbation):
the predicted output shift when gene i's expression is zeroed in every control cell, under a
declared perturbation (the control by default). Many knocked-out copies of the cell set run
through the model in one batched forward; order-averaged for order-sensitive models.
Precomputed matrices (.npy, rows aligned to a gene-list file) are accepted too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.errors import ModelLoadError, close_matches, repeated

from .forward import check_supported, forward_sets, output_width


@torch.no_grad()
def knockout_matrix(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor, genes: list[int],
                    orderings: torch.Tensor, chunk_size: int = 64) -> np.ndarray:
    """[len(genes), G]: the mean output shift of zeroing each gene's input in every cell."""
    check_supported(module)
    rows = np.zeros((len(genes), output_width(module)))
    for order in orderings:
        ordered = cells[order.to(cells.device)]
        base = forward_sets(module, ordered, pert_repr[None])[0].mean(dim=0)
        for start in range(0, len(genes), chunk_size):
            block = genes[start:start + chunk_size]
            knocked = ordered.expand(len(block), *ordered.shape).clone()
            knocked[torch.arange(len(block)), :, torch.tensor(block)] = 0.0
            means = forward_sets(module, knocked, pert_repr.expand(len(block), -1)).mean(dim=1)
            rows[start:start + len(block)] += (means - base).double().cpu().numpy()
    return rows / len(orderings)


def load_knockout_matrix(path: Path, genes_path: Path, model_genes: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """A precomputed [n_genes, G] KO matrix and its row genes, checked against the model's genes."""
    try:
        matrix = np.load(path, allow_pickle=False)
        genes = [g.strip() for g in Path(genes_path).read_text(encoding="utf-8-sig").splitlines() if g.strip()]
    except (OSError, ValueError) as exc:     # UnicodeDecodeError is a ValueError
        raise ModelLoadError(f"{path}: cannot read the precomputed KO matrix or its gene list: {exc}") from None
    twice = repeated(genes)
    if twice:
        raise ModelLoadError(f"{genes_path}: lists {', '.join(twice[:5])} more than once; list each knocked-out "
                             "gene once, one row of the KO matrix each")
    if not isinstance(matrix, np.ndarray) or matrix.dtype.kind not in "biuf":
        raise ModelLoadError(f"{path}: the KO matrix must be one real-valued .npy array (np.save), not "
                             f"{getattr(matrix, 'dtype', type(matrix).__name__)}")
    if matrix.ndim != 2 or matrix.shape != (len(genes), len(model_genes)):
        raise ModelLoadError(f"{path}: the KO matrix has shape {matrix.shape}, but {genes_path} lists {len(genes)} "
                             f"genes and the model predicts {len(model_genes)}: it must be [{len(genes)}, "
                             f"{len(model_genes)}], one row per listed gene, columns in the model's gene order")
    unknown = [g for g in genes if g not in set(model_genes)]
    if unknown:
        hits = close_matches(unknown[0], model_genes)
        hint = f" (did you mean '{hits[0]}'?)" if hits else ""
        raise ModelLoadError(f"{genes_path}: {len(unknown)} KO genes are not among the model's genes, e.g. "
                             f"'{unknown[0]}'{hint}; list the knocked-out input genes by the model's names")
    if not np.isfinite(matrix).all():
        raise ModelLoadError(f"{path}: the KO matrix holds NaN or infinite values")
    return matrix.astype(float), genes
