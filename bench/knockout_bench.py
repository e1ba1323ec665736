"""In-silico knockouts: a loop of single forward passes against the batched probe, in one run.

    .venv/bin/python -m bench.knockout_bench [--device cpu|cuda] [--skip-released-shapes]

Loop: for each KO gene, zero it in the cell set and run arc-state's own forward once (the notes'
way). Batched: probes.knockout.knockout_matrix, many knocked-out copies of the set per forward.
Both on the same cells and genes; the script checks they agree, then prints times and the ratio.
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
from probes.forward import arc_state_forward
from probes.knockout import knockout_matrix
from suite.session import RunContext

from .shapes import released_shape_model

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def loop(module, cells: torch.Tensor, onehot: torch.Tensor, genes: list[int]) -> np.ndarray:
    base = arc_state_forward(module, cells, onehot).mean(dim=0)
    rows = []
    for gene in genes:
        knocked = cells.clone()
        knocked[:, gene] = 0.0
        rows.append((arc_state_forward(module, knocked, onehot).mean(dim=0) - base).double().cpu().numpy())
    return np.stack(rows)


def bench(label: str, module, cells: torch.Tensor, onehot: torch.Tensor, n_genes: int) -> dict:
    genes = list(range(n_genes))
    identity = torch.arange(len(cells))[None]
    with torch.no_grad():
        rep = module.pert_encoder(onehot[None])[0]
    knockout_matrix(module, cells, rep, genes[:2], identity)          # warm up both paths
    loop(module, cells, onehot, genes[:2])
    start = time.perf_counter()
    slow = loop(module, cells, onehot, genes)
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = knockout_matrix(module, cells, rep, genes, identity)
    batched_s = time.perf_counter() - start
    gap = float(np.abs(slow - fast).max())
    print(f"{label} | {n_genes} KO genes | loop {loop_s:.2f} s | batched {batched_s:.2f} s "
          f"(ratio {loop_s / batched_s:.1f}) | max |difference| {gap:.1e}", flush=True)
    return {"model": label, "ko_genes": n_genes, "loop_s": loop_s, "batched_s": batched_s,
            "ratio": loop_s / batched_s, "max_abs_difference": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-released-shapes", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "knockout.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    demo = RunContext(load_registry(ROOT / "fixtures/demo/models.yaml"), device).model("hepg2_fewshot")
    rows = [bench("demo model (G=200, 32 cells)", demo.module, sample_cells(demo.cells, 32, 0),
                  demo.pert_onehots[demo.pert_index(demo.control_pert)], 200)]
    if not args.skip_released_shapes:
        module = released_shape_model().to(device)
        rows.append(bench("released shapes (G=2000, H=328, GPT2 8x8, 64 cells)", module,
                          torch.rand(64, 2000, device=device) * 3, torch.eye(1036, device=device)[0], 200))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
