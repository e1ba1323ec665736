"""SAE feature patching: one forward pass per feature set against the batched probe, in one run.

    .venv/bin/python -m bench.patching_bench [--device cpu|cuda] [--skip-released-shapes]

Loop: for each feature set (the chosen one and the null's matched random sets), patch it with a
hook of its own and run the forward pass once (probes/patching.patched_outputs). Batched:
probes.patching.masked_effects, `chunk` feature sets per forward, each batch element patched with
its own mask. Both on the same cells, KD and feature sets; the script checks they agree, then prints
the time per KD and feature set, the ratio, and the cost per KD of sae_feature_patching's defaults
(200 feature sets x 4 evaluation cell sets x the model's orderings).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fixtures.registry import load_registry
from probes.forward import forward_sets
from probes.patching import Intervention, feature_masks, masked_effects, patched_outputs
from probes.sae import SparseAutoencoder
from suite.session import RunContext

from .shapes import released_shape_model

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def loop(module, cells: torch.Tensor, rep: torch.Tensor, sae, layer: int, feature_sets) -> torch.Tensor:
    own = forward_sets(module, cells, rep[None]).mean(dim=1)
    return torch.stack([(patched_outputs(module, cells, rep[None], sae, layer, Intervention(tuple(f))).mean(dim=1)
                         - own)[0] for f in feature_sets])


def random_sae(d_in: int, expansion: int = 8, k: int = 32, seed: int = 0, device="cpu") -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    d_sae = expansion * d_in
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
    return SparseAutoencoder(w_dec.T.clone(), torch.zeros(d_sae), torch.zeros(d_in), "topk", k, True, "random",
                             w_dec).to(torch.device(device))


def measure(name: str, module, cells: torch.Tensor, rep: torch.Tensor, sae, layer: int, n_sets: int, n_features: int,
            orderings: int) -> dict:
    g = torch.Generator().manual_seed(1)
    feature_sets = [torch.randperm(sae.d_sae, generator=g)[:n_features].tolist() for _ in range(n_sets)]
    masks = feature_masks(feature_sets, sae.d_sae, cells.device)
    start = time.perf_counter()
    looped = loop(module, cells, rep, sae, layer, feature_sets)
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = masked_effects(module, cells[None], rep[None], sae, layer, masks, torch.arange(len(cells))[None])
    batched_s = time.perf_counter() - start
    gap = float((torch.from_numpy(batched[:, 0]).to(looped) - looped).abs().max())
    per_kd = batched_s * 200 / n_sets * 4 * orderings        # the defaults: 200 feature sets, 4 cell sets
    return {"model": name, "feature_sets": n_sets, "loop_s": round(loop_s, 3), "batched_s": round(batched_s, 3),
            "speedup": round(loop_s / batched_s, 1), "max_abs_difference": gap, "orderings": orderings,
            "default_cost_per_kd_s": round(per_kd, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-released-shapes", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ctx = RunContext(load_registry(ROOT / "fixtures/demo/models.yaml"), device)
    model = ctx.model("hepg2_fewshot")
    sae, layer = ctx.sae("hepg2_fewshot")
    cells = model.cells[: model.cell_set_len]
    rep = model.module.pert_encoder(model.pert_onehots[model.pert_index("RPL3")][None])[0].detach()
    rows = [measure("demo (H 64, 2 layers, 32 cells, 200 genes; SAE 512, k 32)", model.module, cells, rep, sae,
                    layer, 200, 8, ctx.n_orderings("hepg2_fewshot", None))]
    if not args.skip_released_shapes:
        module = released_shape_model().to(device)
        cells = torch.rand(64, 2000, generator=torch.Generator().manual_seed(0)).to(device)
        rep = module.pert_encoder(torch.eye(module.pert_dim, device=device)[:1])[0].detach()
        rows.append(measure("released shapes (H 328, 8 layers, 64 cells, 2000 genes; SAE 2624, k 32, layer 4)",
                            module, cells, rep, random_sae(328, device=args.device), 4, 40, 8, 1))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
