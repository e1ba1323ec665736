"""torch's thread count beside other work: torch's default (every core) against `--threads auto`.

    .venv/bin/python -m bench.threads_bench [--kds N]

Workload: the demo's per-cell targeted Jacobians (probes/jacobian.py) of one model, N KDs x 3
regulators on 32 control cells, 8 cell orderings: the probe family that suffered most. It runs on an
idle machine and then beside one other CPU-bound torch process (a matmul loop at torch's default
threads, what a second xdist worker or a shared node's neighbour is), once with torch's default
threads and once with the count `fixtures.device.size_threads("auto", 1)` chooses, in one run. The
script checks the answers agree, then prints seconds and the ratios to the idle run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from fixtures.device import size_threads
from fixtures.registry import load_registry
from probes.audit import random_orderings
from probes.embeddings import sample_cells
from probes.jacobian import targeted_jacobians
from suite.session import RunContext, pert_reprs

ROOT = Path(__file__).resolve().parent.parent
REGULATORS = ("TRAPPC3", "SRP54", "RPL5")


def _neighbour(seconds: float) -> None:
    """Another CPU-bound torch process at torch's default thread count."""
    a = torch.rand(512, 512)
    end = time.time() + seconds
    while time.time() < end:
        a = (a @ a).clamp_(-1, 1)


def _workload(n_kds: int) -> tuple[float, np.ndarray]:
    ctx = RunContext(load_registry(ROOT / "fixtures/demo/models.yaml"), torch.device("cpu"))
    model = ctx.model("hepg2_fewshot")
    cells = sample_cells(model.cells, 32, 0)
    reprs = pert_reprs(model, list(model.kd_names[:n_kds]))
    genes = [model.gene_names.index(g) for g in REGULATORS]
    start = time.perf_counter()
    jac = targeted_jacobians(model.module, cells, reprs, genes, "per_cell", random_orderings(32, 8, 0))
    return time.perf_counter() - start, jac


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kds", type=int, default=12)
    args = parser.parse_args()
    default = torch.get_num_threads()
    _workload(1)                                   # load once, warm the paths
    idle, reference = _workload(args.kds)
    rows = {"idle, torch default": idle}
    neighbour = multiprocessing.get_context("spawn").Process(target=_neighbour, args=(3 * idle + 60,))
    neighbour.start()
    try:
        time.sleep(2.0)
        torch.set_num_threads(default)
        rows["beside a neighbour, torch default"], jac = _workload(args.kds)
        assert np.allclose(jac, reference, rtol=1e-5, atol=1e-7)
        chosen = size_threads("auto", 1)
        rows[f"beside a neighbour, --threads auto = {chosen}"], jac = _workload(args.kds)
        assert np.allclose(jac, reference, rtol=1e-5, atol=1e-7)
    finally:
        neighbour.terminate()
        neighbour.join()
    print(f"per-cell targeted Jacobians, {args.kds} KDs x {len(REGULATORS)} regulators, 32 cells, 8 orderings; "
          f"torch default threads {default}")
    for label, seconds in rows.items():
        print(f"  {label:70s} {seconds:7.2f} s   {seconds / idle:5.2f}x idle")


if __name__ == "__main__":
    main()
