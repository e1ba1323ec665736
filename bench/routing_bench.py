"""dY/d(pert_repr) Jacobians at released-model shapes: the seed's call against the probe, in one run.

    .venv/bin/python -m bench.routing_bench [--device cpu|cuda] [--kds N]

Model: a randomly initialised arc-state ST model at ST-HVG-Replogle's shapes (G = 2000, H = 328,
GPT2 8 layers x 8 heads, 4-layer encoders), one set of 64 cells. Seed style (seed note 003):
torch.autograd.functional.jacobian of the cell-averaged prediction with respect to pert_repr, one
KD at a time. The probe: probes.routing.pert_jacobians. The script checks they agree, then prints
per-KD times, their ratio, peak memory of each (a fresh process each, so peaks do not mix), the
projected time for 1,035 KDs, and the FLOP/s the probe achieves (H forward-equivalents of useful
work per KD) against a batched forward pass of the same model on the same device.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from probes.forward import forward_sets
from probes.routing import kd_chunk, pert_jacobians

from .shapes import released_shape_model

ROOT = Path(__file__).resolve().parent.parent
CELLS, RELEASED_KDS = 64, 1035


def _setup(device: torch.device):
    module = released_shape_model(cells=CELLS).to(device)
    generator = torch.Generator().manual_seed(0)
    cells = (torch.rand(CELLS, 2000, generator=generator) * 3).to(device)
    with torch.no_grad():
        reprs = module.pert_encoder(torch.eye(1036)[:8].to(device))
    return module, cells, reprs


def seed_style(module, cells: torch.Tensor, pert_repr: torch.Tensor) -> np.ndarray:
    """Seed note 003's call: autograd.functional.jacobian of mean_c Y_c with respect to pert_repr."""
    return torch.autograd.functional.jacobian(
        lambda p: forward_sets(module, cells, p[None])[0].mean(dim=0), pert_repr).double().cpu().numpy()


def _measure(method: str, device_name: str, n_kds: int, queue) -> None:
    """Runs in a fresh process: per-KD time, peak memory above the set-up, and the Jacobians."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    module, cells, reprs = _setup(device)
    identity = torch.arange(CELLS)[None]
    before = _peak_bytes(device)
    if method == "probe":
        pert_jacobians(module, cells, reprs[:1], identity, kd_chunk=kd_chunk(device, CELLS, 328))   # warm-up
    start = time.perf_counter()
    if method == "seed":
        jac = np.stack([seed_style(module, cells, reprs[k]) for k in range(n_kds)])
    else:
        jac = pert_jacobians(module, cells, reprs[:n_kds], identity, kd_chunk=kd_chunk(device, CELLS, 328))
    _sync(device)
    seconds = (time.perf_counter() - start) / n_kds
    queue.put({"per_kd_s": seconds, "peak_mib": (_peak_bytes(device) - before) / 2 ** 20, "jacobians": jac})


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _in_fresh_process(method: str, device: str, n_kds: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(method, device, n_kds, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def forward_flops(device: torch.device) -> tuple[float, float]:
    """(FLOPs of one forward pass of a 64-cell set, FLOP/s of a batched forward of 32 sets)."""
    module, cells, reprs = _setup(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward_sets(module, cells, reprs[:1])
    per_set = float(counter.get_total_flops())
    batch = reprs[:1].expand(32, -1)
    with torch.no_grad():
        forward_sets(module, cells, batch)
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            forward_sets(module, cells, batch)
        _sync(device)
    return per_set, 32 * 3 * per_set / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kds", type=int, default=2, help="KDs timed per method (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "routing.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    seed = _in_fresh_process("seed", args.device, args.kds)
    probe = _in_fresh_process("probe", args.device, args.kds)
    gap = float(np.abs(seed["jacobians"] - probe["jacobians"]).max())
    scale = float(np.abs(seed["jacobians"]).max())
    per_set, forward_rate = forward_flops(device)
    jacobian_rate = 328 * per_set / probe["per_kd_s"]
    row = {"device": str(device), "kds_timed": args.kds, "seed_style_per_kd_s": seed["per_kd_s"],
           "probe_per_kd_s": probe["per_kd_s"], "ratio": seed["per_kd_s"] / probe["per_kd_s"],
           "seed_style_peak_mib": seed["peak_mib"], "probe_peak_mib": probe["peak_mib"],
           "projected_1035_kds_seed_style_h": seed["per_kd_s"] * RELEASED_KDS / 3600,
           "projected_1035_kds_probe_min": probe["per_kd_s"] * RELEASED_KDS / 60,
           "forward_gflop_per_set": per_set / 1e9, "batched_forward_gflops": forward_rate / 1e9,
           "jacobian_gflops": jacobian_rate / 1e9, "jacobian_over_forward_flops": jacobian_rate / forward_rate,
           "max_abs_difference": gap, "max_abs_jacobian": scale}
    print(f"released shapes (G=2000, H=328, GPT2 8x8, {CELLS} cells, random weights) on {device}\n"
          f"  seed-style functional.jacobian {seed['per_kd_s']:.2f} s/KD, peak +{seed['peak_mib']:.0f} MiB, "
          f"1,035 KDs ~ {row['projected_1035_kds_seed_style_h']:.1f} h\n"
          f"  probe (forward mode, vmapped)  {probe['per_kd_s']:.2f} s/KD, peak +{probe['peak_mib']:.0f} MiB, "
          f"1,035 KDs ~ {row['projected_1035_kds_probe_min']:.1f} min\n"
          f"  ratio {row['ratio']:.1f}x | max |difference| {gap:.1e} (max |J| {scale:.1e})\n"
          f"  one forward of a set: {per_set / 1e9:.2f} GFLOP; batched forward {forward_rate / 1e9:.1f} GFLOP/s; "
          f"Jacobian {jacobian_rate / 1e9:.1f} GFLOP/s of useful work ({row['jacobian_over_forward_flops']:.2f} of "
          "the forward's)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
