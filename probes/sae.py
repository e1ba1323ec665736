"""Sparse autoencoders over backbone activations (read from disk by fixtures/sae.py, without a
SAELens dependency).

Two on-disk forms:
  * a SAELens folder: cfg.json + sae_weights.safetensors (W_enc [d_in, d_sae], b_enc [d_sae],
    b_dec [d_in], W_dec [d_sae, d_in]). cfg.json gives d_in, d_sae and the activation: SAELens 6
    writes `"architecture": "topk"` with `"k"`; older versions write `"activation_fn_str"`
    ("relu" or "topk") with `"activation_fn_kwargs": {"k": ...}`;
  * a plain .pt state dict with the same tensor names; the registry then says `activation`
    (topk | relu) and `k`.

encode(x) = activation((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc); TopK keeps the k
largest pre-activations per row and passes them through ReLU, as SAELens does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseAutoencoder:
    W_enc: torch.Tensor          # [d_in, d_sae]
    b_enc: torch.Tensor          # [d_sae]
    b_dec: torch.Tensor          # [d_in]
    activation: str              # "topk" | "relu"
    k: int | None
    apply_b_dec_to_input: bool = True
    source: str = ""

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def to(self, device: torch.device) -> SparseAutoencoder:
        return SparseAutoencoder(self.W_enc.to(device), self.b_enc.to(device), self.b_dec.to(device),
                                 self.activation, self.k, self.apply_b_dec_to_input, self.source)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] activations -> [..., d_sae] sparse features."""
        centred = x - self.b_dec if self.apply_b_dec_to_input else x
        pre = centred @ self.W_enc + self.b_enc
        if self.activation == "relu":
            return torch.relu(pre)
        top = torch.topk(pre, k=self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
