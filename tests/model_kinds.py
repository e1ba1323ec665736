"""Tiny real arc-state models of every kind the README's support table lists, written as model_dirs.

Each is built with arc-state's own `StateTransitionPerturbationModel` constructor, trained for a few
steps with its own `training_step` on synthetic cells (so training moves the KDs' pert_encoder
columns, as `state tx train` would), and saved in the layout `state tx train` writes: config.yaml,
var_dims.pkl, pert_onehot_map.pt, batch_onehot_map.torch, checkpoints/final.ckpt, with control
cells in an .h5ad (HVG expression in X and obsm/X_hvg, an SE-like embedding in obsm/X_state, batch
labels in obs/gem_group, the HVG names in uns/X_hvg_var_names).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

N_GENES, N_EMBED, N_BATCHES, HIDDEN, SET_LEN, N_CELLS = 48, 10, 3, 16, 8, 48
GENES = [f"G{i}" for i in range(N_GENES)]
KDS = [f"G{i}" for i in range(20)]
PERTS = ["non-targeting", *KDS]


@dataclass(frozen=True)
class Kind:
    """One row of the support table: the constructor arguments that make the kind."""

    backbone: str = "GPT2"
    embed_key: str | None = "X_hvg"
    output_space: str = "gene"
    decoder: bool = False                 # a gene decoder from the model's embedding output to the HVGs
    kwargs: dict = field(default_factory=dict)

    @property
    def reads_genes(self) -> bool:
        return self.embed_key in ("X_hvg", None)


KINDS = {
    "gpt2": Kind(),
    "llama": Kind(backbone="llama"),
    "lora": Kind(kwargs={"lora": {"enable": True, "r": 4, "alpha": 8, "target": "auto"}}),
    "confidence_token": Kind(kwargs={"confidence_token": True}),
    "batch_token": Kind(kwargs={"use_batch_token": True, "basal_mapping_strategy": "batch"}),
    "batch_encoder": Kind(kwargs={"batch_encoder": True}),
    "mask_attn": Kind(backbone="llama", kwargs={"mask_attn": True}),
    "output_all": Kind(embed_key=None, output_space="all"),
    "output_embedding": Kind(embed_key="X_state", output_space="embedding"),
    "se_gene_decoder": Kind(embed_key="X_state", output_space="gene", decoder=True),
}


def build(kind: Kind, seed: int = 0) -> torch.nn.Module:
    """The kind's model from arc-state's constructor, in train mode (random weights)."""
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    if kind.backbone == "GPT2":
        backbone = dict(n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=SET_LEN, vocab_size=4)
    else:
        backbone = dict(bidirectional_attention=True, max_position_embeddings=SET_LEN + 2, hidden_size=HIDDEN,
                        intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=HIDDEN // 2, use_cache=False, vocab_size=4)
    width = N_GENES if kind.reads_genes else N_EMBED
    extra_tokens = int(bool(kind.kwargs.get("confidence_token"))) + int(bool(kind.kwargs.get("use_batch_token")))
    decoder_cfg = (dict(latent_dim=width, gene_dim=N_GENES, hidden_dims=[32], dropout=0.0) if kind.decoder else None)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = StateTransitionPerturbationModel(
            input_dim=width, hidden_dim=HIDDEN, output_dim=width, pert_dim=len(PERTS), batch_dim=N_BATCHES,
            gene_dim=N_GENES, hvg_dim=N_GENES, embed_key=kind.embed_key, output_space=kind.output_space,
            transformer_backbone_key=kind.backbone, transformer_backbone_kwargs=backbone, cell_set_len=SET_LEN,
            extra_tokens=extra_tokens, n_encoder_layers=2, n_decoder_layers=2, predict_residual=True,
            decoder_cfg=decoder_cfg, gene_decoder_bool=kind.decoder, control_pert="non-targeting", dropout=0.0,
            gene_names=GENES, **kind.kwargs)
    return model


@dataclass(frozen=True)
class Cells:
    hvg: np.ndarray          # [n, N_GENES]
    embedding: np.ndarray    # [n, N_EMBED]
    batches: np.ndarray      # [n] batch labels, text


def synthetic_cells(n: int = N_CELLS, seed: int = 0) -> Cells:
    rng = np.random.default_rng(seed)
    hvg = rng.gamma(2.0, 1.0, (n, N_GENES)).astype(np.float32)
    embedding = (hvg @ rng.normal(0, 0.3, (N_GENES, N_EMBED))).astype(np.float32)
    return Cells(hvg, embedding, np.array([f"b{i % N_BATCHES}" for i in range(n)]))


def train_briefly(model: torch.nn.Module, kind: Kind, cells: Cells, steps: int = 120, seed: int = 0) -> None:
    """A few steps of arc-state's own training_step: every KD gets a shift of its own, so training
    moves the KDs' pert_encoder columns (the checkpoint-side sign that a KD was trained)."""
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0, 1.0, (len(PERTS), N_GENES)).astype(np.float32)
    shifts[0] = 0.0
    inputs = cells.hvg if kind.reads_genes else cells.embedding
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    model.train()
    for step in range(steps):
        sets = rng.integers(0, len(inputs), (4, SET_LEN))
        perts = rng.integers(0, len(PERTS), 4)
        target_genes = np.maximum(cells.hvg[sets] + shifts[perts][:, None, :], 0)
        target = target_genes if kind.reads_genes else cells.embedding[sets] + target_genes[..., :N_EMBED] * 0.1
        batch = {"ctrl_cell_emb": torch.as_tensor(inputs[sets]).reshape(-1, inputs.shape[1]),
                 "pert_cell_emb": torch.as_tensor(target, dtype=torch.float32).reshape(-1, target.shape[-1]),
                 "pert_emb": torch.eye(len(PERTS))[np.repeat(perts, SET_LEN)],
                 "batch": torch.eye(N_BATCHES)[np.repeat(rng.integers(0, N_BATCHES, 4), SET_LEN)]}
        if kind.decoder:
            batch["pert_cell_counts"] = torch.as_tensor(target_genes, dtype=torch.float32).reshape(-1, N_GENES)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # Lightning's "self.log outside a Trainer"
            loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def make_model(kind_name: str, folder: Path, seed: int = 0) -> tuple[torch.nn.Module, Cells]:
    """Build, train and write one kind as a model_dir in `folder`; returns the in-memory model."""
    kind = KINDS[kind_name]
    model = build(kind, seed)
    cells = synthetic_cells(seed=seed)
    train_briefly(model, kind, cells, seed=seed)
    write_model_dir(model, kind, folder, cells)
    return model, cells


def write_model_dir(model: torch.nn.Module, kind: Kind, folder: Path, cells: Cells) -> None:
    import anndata
    import lightning
    import pandas as pd

    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    hparams = dict(model.hparams)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 1, "global_step": 25,
                "pytorch-lightning_version": lightning.__version__}, folder / "checkpoints" / "final.ckpt")
    config = {"data": {"kwargs": {"embed_key": kind.embed_key, "output_space": kind.output_space,
                                  "control_pert": "non-targeting", "pert_col": "gene", "batch_col": "gem_group"}},
              "model": {"name": "state", "kwargs": {"transformer_backbone_key": kind.backbone,
                                                    "cell_set_len": SET_LEN, "hidden_dim": HIDDEN,
                                                    **{k: v for k, v in kind.kwargs.items() if k != "lora"}}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    width = N_GENES if kind.reads_genes else N_EMBED
    dims = {"input_dim": width, "output_dim": width, "gene_dim": N_GENES, "hvg_dim": N_GENES,
            "pert_dim": len(PERTS), "batch_dim": N_BATCHES, "gene_names": list(GENES), "pert_names": list(PERTS)}
    with open(folder / "var_dims.pkl", "wb") as handle:
        pickle.dump(dims, handle)
    torch.save({name: torch.eye(len(PERTS))[i] for i, name in enumerate(PERTS)}, folder / "pert_onehot_map.pt")
    torch.save({f"b{i}": torch.eye(N_BATCHES)[i] for i in range(N_BATCHES)}, folder / "batch_onehot_map.torch")
    n = len(cells.hvg)
    adata = anndata.AnnData(X=cells.hvg, obs=pd.DataFrame({"gene": ["non-targeting"] * n, "gem_group": cells.batches},
                                                          index=[f"cell{i}" for i in range(n)]),
                            var=pd.DataFrame({"highly_variable": [True] * N_GENES}, index=GENES))
    adata.obsm["X_hvg"] = cells.hvg
    adata.obsm["X_state"] = cells.embedding
    adata.uns["X_hvg_var_names"] = np.array(GENES, dtype=object)
    adata.write_h5ad(folder / "cells.h5ad")


def registry_entry(folder: Path, **extra) -> dict:
    return {"model_dir": str(folder), "cells": {"path": str(folder / "cells.h5ad"), "obs_column": "gene",
                                                "control_value": "non-targeting"},
            "cell_line": "synthetic", "split": "other", **extra}
