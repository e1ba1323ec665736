"""The ST forward pass in pieces, batched over perturbations.

arc-state's `StateTransitionPerturbationModel.forward` is

    pert_repr = pert_encoder(onehot)                               # [B, H]
    cell_repr = basal_encoder(cells)                               # [B, S, H]
    seq = cell_repr + pert_repr (+ batch_encoder(batch labels))    # the batch encoder's embeddings, if any
    seq = [batch_token] + seq + [confidence_token]                 # the optional special tokens
    h = transformer_backbone(inputs_embeds=seq).last_hidden_state  # (cells attend only to themselves
                                                                   #  under mask_attn), special tokens dropped
    Y = project_out(h + cell_repr)                                 # predict_residual; else project_out(h);
                                                                   # output_space 'all': final_down_then_up(
                                                                   #   project_out(h) + cells)
    Y = relu(Y)                                                    # when Y is gene expression (or no decoder)
    genes = gene_decoder(Y)                                        # when Y is an embedding arc-state decodes

`forward_sets` reproduces exactly that (tests compare it with arc-state's own `predict_step` for
every model kind the README's support table lists) but takes pert_repr directly, so probes can
differentiate with respect to it and run many KDs in one batch.

Two facts about a model decide what it returns, and both are read here only:
  * its output: "genes" (predicted expression: the model's own output when it predicts genes, the
    gene decoder's when it predicts an embedding) or "embedding" (the model's own output when it
    is an embedding). `set_output` records a loaded model's choice; the default is "genes" where
    the model has them.
  * a batch encoder reads each cell's batch label: such a model's cells carry it as one-hot
    columns after the expression columns (`batch_columns`), so every cell set keeps its labels.
"""

from __future__ import annotations

import torch

from core.errors import ProbeError


def check_supported(module: torch.nn.Module) -> None:
    """Raise ProbeError for model variants whose forward `forward_sets` does not reproduce."""
    if module.hparams.get("finetune_vci_decoder", False):
        raise ProbeError("this model decodes with arc-state's FinetuneVCICountsDecoder (finetune_vci_decoder), "
                         "which the probes do not reproduce; point the registry at a model with the standard "
                         "gene decoder")


# ---- what a model reads and returns --------------------------------------------------------------

def reads_genes(module: torch.nn.Module) -> bool:
    """Whether the model's input columns are genes (X_hvg or X), not a cell embedding (X_state)."""
    return module.hparams.get("embed_key") in ("X_hvg", None)


def decodes_to_genes(module: torch.nn.Module) -> bool:
    """Whether arc-state turns the model's output into gene expression with its gene decoder (the
    condition under which `state tx infer` writes decoded counts)."""
    key, space = module.hparams.get("embed_key"), getattr(module, "output_space", "gene")
    return getattr(module, "gene_decoder", None) is not None and (
        (key not in (None, "X_hvg") and space == "gene") or (key is not None and space == "all"))


def available_outputs(module: torch.nn.Module) -> tuple[str, ...]:
    """The outputs `forward_sets` can give for this model, the default first."""
    own = "genes" if reads_genes(module) else "embedding"
    return ("genes", own) if decodes_to_genes(module) and own != "genes" else (own,)


def set_output(module: torch.nn.Module, output: str | None) -> str:
    """Record which output `forward_sets` gives for this loaded model (None: the default); returns it."""
    choices = available_outputs(module)
    chosen = output or choices[0]
    if chosen not in choices:
        raise ProbeError(f"this model has no '{chosen}' output: it can give {' or '.join(choices)}")
    module.suite_output = chosen
    return chosen


def output_of(module: torch.nn.Module) -> str:
    return getattr(module, "suite_output", None) or available_outputs(module)[0]


def _applies_decoder(module: torch.nn.Module) -> bool:
    return output_of(module) == "genes" and decodes_to_genes(module)


def output_width(module: torch.nn.Module) -> int:
    """The number of columns `forward_sets` returns."""
    return int(module.gene_decoder.gene_dim()) if _applies_decoder(module) else int(module.output_dim)


def batch_columns(module: torch.nn.Module) -> int:
    """How many one-hot batch-label columns follow the expression in this model's cells (0 without a
    batch encoder)."""
    return int(module.batch_dim) if getattr(module, "batch_encoder", None) is not None else 0


def cell_positions(module: torch.nn.Module, n_cells: int) -> slice:
    """Where a set's cells sit in the backbone's sequence (after a prepended batch token)."""
    start = 1 if _batch_token(module) is not None else 0
    return slice(start, start + n_cells)


# ---- the forward pass ----------------------------------------------------------------------------

def pert_representations(module: torch.nn.Module, onehots: torch.Tensor) -> torch.Tensor:
    """[K, pert_dim] one-hots -> [K, H] pert_encoder outputs."""
    return module.pert_encoder(onehots)


def forward_sets(module: torch.nn.Module, cells: torch.Tensor, pert_repr: torch.Tensor) -> torch.Tensor:
    """Predicted output for cell sets under perturbation representations.

    cells: [B, S, C] (or [S, C], shared by every perturbation); pert_repr: [B, H] added to
    every cell of its set, or [B, S, H]. Returns [B, S, output_width(module)].
    """
    if cells.dim() == 2:
        cells = cells.expand(pert_repr.shape[0], *cells.shape)
    if pert_repr.dim() == 2:
        pert_repr = pert_repr[:, None, :]
    cell_repr, basal, batch_repr = encode_cells(module, cells)
    return decode(module, cell_repr, pert_repr, basal, batch_repr)


def encode_cells(module: torch.nn.Module, cells: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(basal_encoder output [.., S, H], the expression columns [.., S, G], the batch encoder's
    embeddings [.., S, H] or None) of cells [.., S, C]."""
    width = batch_columns(module)
    basal = cells[..., : cells.shape[-1] - width] if width else cells
    batch_repr = module.batch_encoder(cells[..., -width:].argmax(dim=-1)) if width else None
    return module.basal_encoder(basal), basal, batch_repr


def decode(module: torch.nn.Module, cell_repr: torch.Tensor, pert_repr: torch.Tensor,
           basal: torch.Tensor | None = None, batch_repr: torch.Tensor | None = None) -> torch.Tensor:
    """Everything after the basal encoder: cell_repr [B, S, H] plus pert_repr [B, 1 or S, H] -> [B, S, out].
    Probes that differentiate with respect to pert_repr start here, so the encoder runs once.
    `basal` (the expression) is needed by output_space 'all', `batch_repr` by a batch encoder."""
    seq = cell_repr + pert_repr
    if batch_repr is not None:
        seq = seq + batch_repr
    hidden = backbone(module, seq)
    if getattr(module, "output_space", "gene") == "all" and module.predict_residual:
        if basal is None:
            raise ProbeError("an output_space 'all' model adds its input cells back: pass `basal` to decode")
        out = module.final_down_then_up(module.project_out(hidden) + basal)
    elif module.predict_residual:
        out = module.project_out(hidden + cell_repr)
    else:
        out = module.project_out(hidden)
    if reads_genes(module) or getattr(module, "gene_decoder", None) is None:
        out = module.relu(out)
    return module.gene_decoder(out) if _applies_decoder(module) else out


def backbone(module: torch.nn.Module, seq_input: torch.Tensor) -> torch.Tensor:
    """The transformer over each set [B, S, H], with arc-state's optional batch token (prepended) and
    confidence token (appended); returns the cells' hidden states [B, S, H]."""
    n_cells = seq_input.shape[1]
    batch_token = _batch_token(module)
    if batch_token is not None:
        seq_input = torch.cat([batch_token.expand(seq_input.shape[0], -1, -1), seq_input], dim=1)
    token = getattr(module, "confidence_token", None)
    if token is not None:
        seq_input = token.append_confidence_token(seq_input)
    kwargs = {}
    if module.hparams.get("mask_attn", False):
        kwargs["attention_mask"] = _self_only_mask(module, seq_input)
    hidden = module.transformer_backbone(inputs_embeds=seq_input, **kwargs).last_hidden_state
    return hidden[:, cell_positions(module, n_cells), :]


def _batch_token(module: torch.nn.Module) -> torch.Tensor | None:
    return module.batch_token if getattr(module, "use_batch_token", False) else None


def _self_only_mask(module: torch.nn.Module, seq_input: torch.Tensor) -> torch.Tensor:
    """arc-state's mask_attn: every position attends to itself only. arc-state passes a boolean mask,
    which its backbone's SDPA attention reads as "attend where True"; the same mask written additively
    (0 on the diagonal, the dtype's minimum elsewhere) means the same to SDPA and also to the eager
    attention that forward-mode Jacobians run on (eager would add a boolean mask as 0/1)."""
    size = seq_input.shape[1]
    heads = module.transformer_backbone.config.num_attention_heads
    eye = torch.eye(size, device=seq_input.device, dtype=torch.bool)
    blocked = torch.zeros(size, size, device=seq_input.device, dtype=seq_input.dtype)
    blocked = blocked.masked_fill(~eye, torch.finfo(seq_input.dtype).min)
    return blocked.view(1, 1, size, size).expand(seq_input.shape[0], heads, size, size)


def arc_state_forward(module: torch.nn.Module, cells: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """One set through arc-state's own `predict_step` (the reference the pieces must match): its
    decoded counts where the model's output is decoded genes, else its predictions."""
    width = batch_columns(module)
    batch = {"ctrl_cell_emb": cells[:, : cells.shape[1] - width] if width else cells,
             "pert_emb": onehot.reshape(1, -1).expand(cells.shape[0], -1)}
    if width:
        batch["batch"] = cells[:, -width:]
    out = module.predict_step(batch, 0, padded=False)
    return out["pert_cell_counts_preds"] if _applies_decoder(module) else out["preds"]
