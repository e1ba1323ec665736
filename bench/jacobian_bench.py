"""Targeted Jacobians: the seed notebook's loop against the suite's probe, in one run.

    .venv/bin/python -m bench.jacobian_bench [--device cpu|cuda] [--skip-released-shapes]

Seed style (seed note 002, NB03): for every (regulator, target, KD) triple, one forward and one
backward through arc-state's predict_step. The probe: forward mode, every target at once, KDs and
cell orderings batched into one vmapped pass. "Before batching" is the probe's previous algorithm
(probes.jacobian.targeted_jacobians_reference: one pass per KD and ordering, the model's own GELU),
kept as the reference. The script checks that all agree (set mode with the seed's loop, both modes
with the reference), then prints the times and their ratios side by side.
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
from probes.jacobian import targeted_jacobians, targeted_jacobians_reference
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


def bench_model(label: str, module, onehots: torch.Tensor, cells: torch.Tensor, gene_names: list[str],
                orderings: int) -> list[dict]:
    orders = torch.stack([torch.randperm(len(cells), generator=torch.Generator().manual_seed(s))
                          for s in range(orderings)]).to(cells.device)
    with torch.no_grad():
        reprs = module.pert_encoder(onehots)
    targeted_jacobians(module, cells, reprs[:1], [0], "set", orders[:1])     # warm every path once
    targeted_jacobians_reference(module, cells, reprs[:1], [0], "set", orders[:1])
    seed_style(module, onehots[:1], cells, [0], [0])
    rows = []
    for name, (regs, targets) in panels(gene_names).items():
        seed, seed_s = timed(seed_style, module, onehots, cells, regs, targets)
        row = {"model": label, "panel": name, "kds": len(onehots), "orderings": orderings, "triples": seed.size,
               "seed_style_s": seed_s}
        for mode in ("set", "per_cell"):
            ours, ours_s = timed(targeted_jacobians, module, cells, reprs, regs, mode, orders)
            before, before_s = timed(targeted_jacobians_reference, module, cells, reprs, regs, mode, orders)
            row |= {f"{mode}_probe_s": ours_s, f"{mode}_before_batching_s": before_s,
                    f"{mode}_speedup_over_before": before_s / ours_s,
                    f"{mode}_max_abs_difference_from_before": float(np.abs(ours - before).max())}
            if mode == "set":       # the seed's loop sees the cells in their given order
                identity = torch.arange(len(cells), device=cells.device)[None]
                given = targeted_jacobians(module, cells, reprs, regs, "set", identity)
                row["set_max_abs_difference_from_seed_style"] = float(np.abs(given[:, :, targets] - seed).max())
        rows.append(row)
        print(f"{label} | {name} x {len(onehots)} KDs x {orderings} ordering(s); seed-style loop (1 ordering) "
              f"{seed_s:.2f} s, max |diff| from the probe {row['set_max_abs_difference_from_seed_style']:.1e}")
        for mode in ("set", "per_cell"):
            print(f"  {mode:8s} probe {row[f'{mode}_probe_s']:.2f} s | before batching "
                  f"{row[f'{mode}_before_batching_s']:.2f} s | speedup {row[f'{mode}_speedup_over_before']:.1f}x | "
                  f"max |diff| {row[f'{mode}_max_abs_difference_from_before']:.1e}", flush=True)
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
                       sample_cells(demo.cells, demo.cell_set_len, seed=0), list(demo.gene_names), orderings=8)
    if not args.skip_released_shapes:
        module = released_shape_model().to(device)
        cells = torch.rand(64, 2000, device=device) * 3
        rows += bench_model("released shapes (G=2000, H=328, GPT2 8x8, 64 cells, random weights)", module,
                            torch.eye(1036, device=device)[:6], cells, [str(i) for i in range(2000)], orderings=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
