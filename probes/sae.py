"""Sparse autoencoders over backbone activations, read without a SAELens dependency.

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

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from suite.errors import ModelLoadError


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


def load_sae(path: Path, activation: str | None = None, k: int | None = None) -> SparseAutoencoder:
    """A SAELens folder or a .pt state dict; every problem is a ModelLoadError saying what to do."""
    path = Path(path)
    try:
        if path.is_dir():
            return _load_saelens(path)
        if path.is_file():
            return _load_state_dict(path, activation, k)
    except ModelLoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        # a cfg.json or state dict of a shape no check foresaw (topk without k, numpy arrays, 1-D W_enc)
        raise ModelLoadError(f"{path}: not an SAE this suite can read ({type(exc).__name__}: {exc}). Export it as "
                             "a SAELens folder (cfg.json + sae_weights.safetensors) or a state dict of tensors "
                             "W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in].") from None
    raise ModelLoadError(f"{path}: SAE not found. Point 'sae.path' at a SAELens folder (cfg.json + "
                         "sae_weights.safetensors) or a .pt state dict.")


def _load_saelens(folder: Path) -> SparseAutoencoder:
    from safetensors.torch import load_file

    try:
        cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "sae_weights.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"{folder}: not a readable SAELens folder (cfg.json + sae_weights.safetensors): "
                             f"{type(exc).__name__}: {exc}") from None
    activation, k = _activation_from_cfg(cfg, folder)
    normalize = cfg.get("normalize_activations", "none") or "none"
    if normalize != "none":
        raise ModelLoadError(f"{folder}: normalize_activations '{normalize}' is not supported; export the SAE "
                             "with the normalisation folded into its weights")
    return _build(tensors, activation, k, bool(cfg.get("apply_b_dec_to_input", True)), folder, cfg.get("d_in"))


def _activation_from_cfg(cfg: dict, folder: Path) -> tuple[str, int | None]:
    architecture = cfg.get("architecture", "standard")
    if architecture == "topk":
        return "topk", int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if architecture != "standard":
        raise ModelLoadError(f"{folder}: SAE architecture '{architecture}' is not supported (standard with ReLU "
                             "or TopK, and topk, are)")
    name = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    if name == "topk":
        return "topk", int((cfg.get("activation_fn_kwargs") or {})["k"])
    if name == "relu":
        return "relu", None
    raise ModelLoadError(f"{folder}: SAE activation '{name}' is not supported (relu and topk are)")


def _load_state_dict(path: Path, activation: str | None, k: int | None) -> SparseAutoencoder:
    from fixtures.safe_load import torch_load

    if activation is None or (activation == "topk" and not k):
        raise ModelLoadError(f"{path}: a .pt SAE needs 'activation: topk' with 'k: N', or 'activation: relu', "
                             "in the model's 'sae' entry of the registry")
    state = torch_load(path, trusted=False, what="the SAE state dict")
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict with W_enc, b_enc and b_dec")
    return _build(state, activation, k, True, path, None)


def _build(tensors: dict, activation: str, k: int | None, apply_b_dec: bool, source: Path,
           d_in: int | None) -> SparseAutoencoder:
    missing = [name for name in ("W_enc", "b_enc", "b_dec") if name not in tensors]
    if missing:
        raise ModelLoadError(f"{source}: the SAE lacks {', '.join(missing)} (have {', '.join(sorted(tensors))})")
    sae = SparseAutoencoder(tensors["W_enc"].float(), tensors["b_enc"].float(), tensors["b_dec"].float(),
                            activation, k, apply_b_dec, str(source))
    shapes_ok = sae.b_enc.shape == (sae.d_sae,) and sae.b_dec.shape == (sae.d_in,) and (d_in in (None, sae.d_in))
    if not shapes_ok:
        raise ModelLoadError(f"{source}: SAE tensor shapes disagree (W_enc {tuple(sae.W_enc.shape)}, b_enc "
                             f"{tuple(sae.b_enc.shape)}, b_dec {tuple(sae.b_dec.shape)}, cfg d_in {d_in})")
    if activation == "topk" and not 0 < (k or 0) <= sae.d_sae:
        raise ModelLoadError(f"{source}: TopK k={k} must be between 1 and d_sae={sae.d_sae}")
    bad = [name for name in ("W_enc", "b_enc", "b_dec") if not bool(torch.isfinite(getattr(sae, name)).all())]
    if bad:
        raise ModelLoadError(f"{source}: the SAE's {', '.join(bad)} hold NaN or infinite values; re-export it")
    return sae
