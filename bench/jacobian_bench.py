"""Targeted Jacobians: the seed notebook's loop against the suite's probe, in one run.

    .venv/bin/python -m bench.jacobian_bench [--device cpu|cuda] [--skip-released-shapes]

Seed style (seed note 002, NB03): for every (regulator, target, KD) triple, one forward and one
backward through arc-state's predict_step. The probe: one forward-mode pass per KD gives every
target at once. Both compute the set-mode sensitivity on the same cells; the script checks that
they agree, then prints both times and their ratio (and the per-cell mode's time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fixtures.registry import load_registry
from probes.embeddings import sample_cells
from probes.jacobian import targeted_jacobians
from suite.session import RunContext

from .shapes import released_shape_model

ROOT = Path(__file__).resolve().parent.parent
# (regulators, targets, KDs) by gene index; the same panels on both models
SECRETORY = (["TRAPPC3", "TRAPPC5", "SRP54"], ["SEC24A", "ARFGEF2", "MFGE8"],
             ["TRAPPC3", "TRAPPC5", "SRP54", "MYC", "MAX", "PAXBP1"])


def panels(gene_names: list[str]) -> dict[str, tuple[list[int], list[int]]]:
    """Three regulators with 3 targets (the notes' secretory panel) and with 30 targets."""
    index = {g: i for i, g in enumerate(gene_names)}
    regs = [index.get(g, i) for i, g in enumerate(SECRETORY[0])]
    small = [index.get(g, 10 + i) for i, g in enumerate(SECRETORY[1])]
    wide = small + [i for i in range(40, 200) if i not in regs + small][:27]
    return {"3 regulators x 3 targets": (regs, small), "3 regulators x 30 targets": (regs, wide)}


def seed_style(module, onehots: torch.Tensor, cells: torch.Tensor, regulators: list[int],
               targets: list[int]) -> np.ndarray:
    """The notebook's compute_targeted_jacobian, once per (KD, regulator, target) triple."""
    out = np.zeros((len(onehots), len(regulators), len(targets)))
    for k, onehot in enumerate(onehots):
        for r, reg in enumerate(regulators):
            for t, tgt in enumerate(targets):
                ctrl = cells.clone().detach().requires_grad_(True)
                batch = {"ctrl_cell_emb": ctrl, "pert_emb": onehot.expand(len(cells), -1)}
                preds = module.predict_step(batch, batch_idx=0, padded=False)["preds"]
                preds[:, tgt].mean().backward()
                out[k, r, t] = ctrl.grad[:, reg].mean().item()
    return out


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def bench_model(label: str, module, onehots: torch.Tensor, cells: torch.Tensor, gene_names: list[str]) -> list[dict]:
    identity = torch.arange(len(cells))[None]
    with torch.no_grad():
        reprs = module.pert_encoder(onehots)
    targeted_jacobians(module, cells, reprs[:1], [0], "set", identity)     # warm both paths once
    seed_style(module, onehots[:1], cells, [0], [0])
    rows = []
    for name, (regs, targets) in panels(gene_names).items():
        seed, seed_s = timed(seed_style, module, onehots, cells, regs, targets)
        ours, ours_s = timed(targeted_jacobians, module, cells, reprs, regs, "set", identity)
        _, cell_s = timed(targeted_jacobians, module, cells, reprs, regs, "per_cell", identity)
        gap = float(np.abs(ours[:, :, targets] - seed).max())
        rows.append({"model": label, "panel": name, "kds": len(onehots), "triples": seed.size, "seed_style_s": seed_s,
                     "probe_set_s": ours_s, "probe_per_cell_s": cell_s, "ratio_seed_over_probe": seed_s / ours_s,
                     "max_abs_difference": gap})
        print(f"{label} | {name} x {len(onehots)} KDs = {seed.size} triples | seed-style loop {seed_s:.2f} s | "
              f"probe, set mode {ours_s:.2f} s (ratio {seed_s / ours_s:.1f}) | probe, per-cell mode {cell_s:.2f} s "
              f"| max |difference| {gap:.1e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-released-shapes", action="store_true", help="only the demo model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "jacobian.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    demo = RunContext(load_registry(ROOT / "fixtures/demo/models.yaml"), device).model("hepg2_fewshot")
    onehots = demo.pert_onehots[[demo.pert_index(k) for k in SECRETORY[2]]]
    rows = bench_model("demo model (G=200, H=64, 2 layers, 32 cells)", demo.module, onehots,
                       sample_cells(demo.cells, demo.cell_set_len, seed=0), list(demo.gene_names))
    if not args.skip_released_shapes:
        module = released_shape_model().to(device)
        cells = torch.rand(64, 2000, device=device) * 3
        rows += bench_model("released shapes (G=2000, H=328, GPT2 8x8, 64 cells, random weights)", module,
                            torch.eye(1036, device=device)[:6], cells, [str(i) for i in range(2000)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
