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
largest pre-activations per row and passes them through ReLU, as SAELens does. decode(f) =
f @ W_dec + b_dec, SAELens's reconstruction; an SAE saved without W_dec can be read but not
patched (probes/patching.py).
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
    W_dec: torch.Tensor | None = None    # [d_sae, d_in]; None when the file has no decoder

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def to(self, device: torch.device) -> SparseAutoencoder:
        return SparseAutoencoder(self.W_enc.to(device), self.b_enc.to(device), self.b_dec.to(device),
                                 self.activation, self.k, self.apply_b_dec_to_input, self.source,
                                 None if self.W_dec is None else self.W_dec.to(device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] activations -> [..., d_sae] sparse features."""
        centred = x - self.b_dec if self.apply_b_dec_to_input else x
        pre = centred @ self.W_enc + self.b_enc
        if self.activation == "relu":
            return torch.relu(pre)
        top = torch.topk(pre, k=self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """[..., d_sae] features -> [..., d_in] reconstruction."""
        if self.W_dec is None:
            raise ValueError(f"the SAE {self.source} has no decoder (W_dec)")
        return features @ self.W_dec + self.b_dec
