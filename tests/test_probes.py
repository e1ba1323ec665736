"""Probes agree with plain, unbatched calls of arc-state's own model."""

import numpy as np
import torch

from probes.embeddings import output_shifts, pert_embeddings, sample_cells
from probes.forward import arc_state_forward


def test_pert_embeddings_are_the_pert_encoder_outputs(demo_run):
    model = demo_run.model("jurkat_fewshot")
    emb = pert_embeddings(model.module, model.pert_onehots)
    i = model.pert_index("PSMA1")
    with torch.no_grad():
        single = model.module.pert_encoder(model.pert_onehots[i][None])[0].double().numpy()
    assert emb.shape == (125, 64) and np.allclose(emb[i], single, atol=1e-6)


def test_batched_output_shift_equals_unbatched_forward_passes(demo_run):
    model = demo_run.model("hepg2_fewshot")
    cells = sample_cells(model.cells, 32, seed=1)
    control = model.pert_index(model.control_pert)
    shifts = output_shifts(model.module, model.pert_onehots, control, cells, chunk_size=7)
    with torch.no_grad():
        for kd in ("RPL3", "SEC61A1", "MYC"):
            i = model.pert_index(kd)
            plain = arc_state_forward(model.module, cells, model.pert_onehots[i]).mean(0) \
                - arc_state_forward(model.module, cells, model.pert_onehots[control]).mean(0)
            assert np.allclose(shifts[i], plain.double().numpy(), atol=1e-5)
    assert np.allclose(shifts[control], 0.0)


def test_cell_sampling_is_seeded(demo_run):
    cells = demo_run.model("hepg2_fewshot").cells
    assert torch.equal(sample_cells(cells, 16, 3), sample_cells(cells, 16, 3))
    assert not torch.equal(sample_cells(cells, 16, 3), sample_cells(cells, 16, 4))
