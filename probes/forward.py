"""The ST forward pass in pieces, batched over perturbations.

arc-state's `StateTransitionPerturbationModel.forward` for gene-space models is

    pert_repr = pert_encoder(onehot)                       # [B, H]
    cell_repr = basal_encoder(cells)                       # [B, S, H]
    h = transformer_backbone(inputs_embeds=cell_repr + pert_repr).last_hidden_state
    Y = relu(project_out(h + cell_repr))                   # predict_residual; else project_out(h)

`forward_sets` reproduces exactly that (tests compare it with `module.forward`) but takes
pert_repr directly, so probes can differentiate with respect to it and run many KDs in
one batch. Model variants it does not reproduce are refused by `check_supported`.
"""

from __future__ import annotations

import torch

from core.errors import ProbeError


def check_supported(module: torch.nn.Module) -> None:
    """Raise ProbeError for model variants whose forward `forward_sets` does not reproduce."""
    hp = module.hparams
    problems = []
    if getattr(module, "batch_encoder", None) is not None:
        problems.append("a batch encoder (needs per-cell batch labels)")
    if getattr(module, "use_batch_token", False) and getattr(module, "batch_token", None) is not None:
        problems.append("a batch token")
    if getattr(module, "output_space", "gene") == "all":
        problems.append("output_space 'all'")
    if hp.get("mask_attn", False):
        problems.append("mask_attn")
    if problems:
        raise ProbeError(f"this model uses {', '.join(problems)}, which the probes do not support yet")


def pert_representations(module: torch.nn.Module, onehots: torch.Tensor) -> torch.Tensor:
    """[K, pert_dim] one-hots -> [K, H] pert_encoder outputs."""
    return module.pert_encoder(onehots)


def forward_sets(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor) -> torch.Tensor:
    """Predicted expression for cell sets under perturbation representations.

    cells: [B, S, G] (or [S, G], shared by every perturbation); pert_repr: [B, H] added to
    every cell of its set, or [B, S, H]. Returns [B, S, G].
    """
    if cells.dim() == 2:
        cells = cells.expand(pert_repr.shape[0], *cells.shape)
    if pert_repr.dim() == 2:
        pert_repr = pert_repr[:, None, :]
    return decode(module, module.basal_encoder(cells), pert_repr)


def decode(module: torch.nn.Module, cell_repr: torch.Tensor, pert_repr: torch.Tensor) -> torch.Tensor:
    """Everything after the basal encoder: cell_repr [B, S, H] plus pert_repr [B, 1 or S, H] -> [B, S, G].
    Probes that differentiate with respect to pert_repr start here, so the encoder runs once."""
    hidden = backbone(module, cell_repr + pert_repr)
    out = module.project_out(hidden + cell_repr) if module.predict_residual else module.project_out(hidden)
    return _final_activation(module, out)


def backbone(module: torch.nn.Module, seq_input: torch.Tensor) -> torch.Tensor:
    """The transformer over each set, with arc-state's optional confidence token appended."""
    token = getattr(module, "confidence_token", None)
    if token is not None:
        seq_input = token.append_confidence_token(seq_input)
    hidden = module.transformer_backbone(inputs_embeds=seq_input).last_hidden_state
    return hidden[:, :-1, :] if token is not None else hidden


def _final_activation(module: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    embed_key = module.hparams.get("embed_key")
    if embed_key in ("X_hvg", None) or getattr(module, "gene_decoder", None) is None:
        return module.relu(out)
    return out


def arc_state_forward(module: torch.nn.Module, cells: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """One set through arc-state's own `forward` (the reference the pieces must match)."""
    batch = {"ctrl_cell_emb": cells, "pert_emb": onehot.expand(cells.shape[0], -1)}
    out = module.forward(batch, padded=False)
    return out[0] if isinstance(out, tuple) else out
