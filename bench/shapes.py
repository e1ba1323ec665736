"""Randomly initialised arc-state models at the shapes of released checkpoints, for benchmarks."""

from __future__ import annotations

import contextlib
import io

import torch


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
