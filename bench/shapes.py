"""Randomly initialised arc-state models at the shapes of released checkpoints, for benchmarks."""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch
import yaml


def released_shape_model(genes: int = 2000, hidden: int = 328, layers: int = 8, heads: int = 8, cells: int = 64,
                         perts: int = 1036, seed: int = 0) -> torch.nn.Module:
    """ST-HVG-Replogle's shapes: G = 2000 HVGs, H = 328, GPT2 8 layers x 8 heads, 4-layer encoders."""
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    torch.manual_seed(seed)
    backbone = dict(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=cells, vocab_size=8)
    with contextlib.redirect_stdout(io.StringIO()):
        model = StateTransitionPerturbationModel(
            input_dim=genes, hidden_dim=hidden, output_dim=genes, pert_dim=perts, gene_dim=genes,
            embed_key="X_hvg", output_space="gene", transformer_backbone_key="GPT2",
            transformer_backbone_kwargs=backbone, cell_set_len=cells, n_encoder_layers=4, n_decoder_layers=4,
            predict_residual=True)
    return model.eval()


def write_model_dir(module: torch.nn.Module, folder: Path, gene_names: list[str], pert_names: list[str],
                    control_cells: np.ndarray, control: str = "non-targeting") -> Path:
    """Save `module` as an arc-state model_dir (config.yaml, var_dims.pkl, pert_onehot_map.pt,
    checkpoints/final.ckpt in Lightning's layout) with its control cells in cells.h5ad, so benchmarks
    reach a random-weight model through the registry as a user's checkpoint would. Returns the
    registry YAML written beside it."""
    import anndata
    import lightning
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    hparams = dict(module.hparams) | {"control_pert": control, "gene_names": list(gene_names)}
    if getattr(module, "gene_decoder", None) is None:    # else arc-state's loader rebuilds one from decoder_cfg
        hparams["gene_decoder_bool"] = False
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": lightning.__version__}, folder / "checkpoints" / "final.ckpt")
    config = {"data": {"kwargs": {"embed_key": hparams.get("embed_key", "X_hvg"), "output_space": "gene",
                                  "control_pert": control, "pert_col": "gene"}},
              "model": {"name": "state", "kwargs": {"transformer_backbone_key": hparams["transformer_backbone_key"],
                                                    "cell_set_len": hparams["cell_set_len"],
                                                    "hidden_dim": hparams["hidden_dim"]}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    dims = {"input_dim": len(gene_names), "output_dim": len(gene_names), "gene_dim": len(gene_names),
            "hvg_dim": len(gene_names), "pert_dim": len(pert_names), "gene_names": list(gene_names),
            "pert_names": list(pert_names)}
    with open(folder / "var_dims.pkl", "wb") as handle:
        pickle.dump(dims, handle)
    torch.save({name: torch.eye(len(pert_names))[i] for i, name in enumerate(pert_names)},
               folder / "pert_onehot_map.pt")
    cells = anndata.AnnData(X=np.asarray(control_cells, dtype=np.float32),
                            obs=pd.DataFrame({"gene": [control] * len(control_cells)},
                                             index=[f"cell{i}" for i in range(len(control_cells))]),
                            var=pd.DataFrame(index=list(gene_names)))
    cells.write_h5ad(folder / "cells.h5ad")
    registry = folder / "models.yaml"
    registry.write_text(yaml.safe_dump({"schema_version": 1, "models": {folder.name: {
        "model_dir": str(folder), "cells": {"path": str(folder / "cells.h5ad"), "obs_column": "gene",
                                            "control_value": control},
        "cell_line": "random", "split": "random"}}}))
    return registry
