"""Learnedness from observed cells (suite/learnedness.py), checked against independent computations
and on planted screens where it is known which KDs a 'model' learned."""

import numpy as np

from suite.learnedness import judge, leave_one_out_mean, specific_r2


def _r2_by_lstsq(obs: np.ndarray, pred: np.ndarray, generic: np.ndarray) -> float:
    """The definition, one KD at a time: 1 - ||obs - pred||^2 / ||obs - best fit of the generic rows||^2."""
    coef, *_ = np.linalg.lstsq(generic.T, obs, rcond=None)
    return 1 - np.sum((obs - pred) ** 2) / np.sum((obs - generic.T @ coef) ** 2)


def test_specific_r2_equals_a_least_squares_fit_per_kd():
    rng = np.random.default_rng(0)
    obs, pred = rng.normal(size=(6, 30)), rng.normal(size=(6, 30))
    generic = rng.normal(size=(6, 2, 30))
    expected = [_r2_by_lstsq(obs[k], pred[k], generic[k]) for k in range(6)]
    assert np.allclose(specific_r2(obs, pred, generic), expected)


def test_the_mean_baseline_leaves_each_kd_out():
    shifts = np.arange(12.0).reshape(4, 3)
    assert np.allclose(leave_one_out_mean(shifts)[1], shifts[[0, 2, 3]].mean(axis=0))


def test_a_prediction_that_is_a_generic_response_scores_at_most_zero():
    rng = np.random.default_rng(1)
    obs, generic = rng.normal(size=(5, 40)), rng.normal(size=(5, 2, 40))
    as_generic = 1.7 * generic[:, 0] - 0.4 * generic[:, 1]         # any mix of the generic responses
    assert (specific_r2(obs, as_generic, generic) <= 1e-12).all()


def _screen(rng, n_learned=20, n_collapsed=20, genes=60, cells=30, controls=300, noise=1.0):
    """Observed cells of a planted screen and a 'model' that learned the first n_learned KDs and
    maps the others onto its generic response g (their observed shift: g plus a private program)."""
    g = np.zeros(genes)
    g[:6] = 1.2
    specific = rng.normal(0, 0.6, (n_learned, genes))
    private = rng.normal(0, 0.25, (n_collapsed, genes))
    truth = np.vstack([specific, g + private])
    predicted = np.vstack([specific + rng.normal(0, 0.05, specific.shape), np.tile(g, (n_collapsed, 1))])
    kd_cells = [t + rng.normal(0, noise, (cells, genes)) for t in truth]
    return truth, predicted, g, kd_cells, rng.normal(0, noise, (controls, genes))


def test_learned_kds_are_told_from_kds_on_the_generic_response():
    rng = np.random.default_rng(2)
    _, predicted, g, kd_cells, controls = _screen(rng)
    table = judge(tuple(f"kd{i}" for i in range(40)), predicted, g, kd_cells, controls, rng)
    status = [table.status(i) for i in range(40)]
    assert status[:20] == ["learned"] * 20
    assert "learned" not in status[20:]
    assert table.counts()["learned"] == 20


def test_kds_with_too_few_cells_are_not_judged():
    rng = np.random.default_rng(3)
    _, predicted, g, kd_cells, controls = _screen(rng)
    kd_cells[0], kd_cells[1] = kd_cells[0][:2], None
    table = judge(tuple(f"kd{i}" for i in range(40)), predicted, g, kd_cells, controls, rng, min_cells=3)
    assert table.status(0) == table.status(1) == "no cells"
    assert not table.usable[:2].any()


def test_a_kd_predicted_no_better_than_generic_is_rarely_called_learned():
    """The decision rule's error rate: KDs whose observed shift *is* the generic response (prediction
    exactly as good as the generic one) are called learned in at most 5% of fresh screens (the
    one-sided level of a 95% interval is 2.5%; the observed cells' noise only pulls R² to 0)."""
    rng = np.random.default_rng(4)
    calls = 0
    for _ in range(30):
        truth, predicted, g, _, controls = _screen(rng)
        truth[20:] = g                                 # no private program: the generic answer is right
        cells = [t + rng.normal(0, 1.0, (30, len(t))) for t in truth]
        table = judge(tuple(f"kd{i}" for i in range(40)), predicted, g, cells, controls, rng, n_boot=200)
        calls += int(table.usable[20:].sum())
    assert calls <= 0.05 * 30 * 20


def test_noise_pulls_the_score_toward_zero_not_past_it():
    """With noisy cells the specific R² of a learned KD is attenuated, never turned negative, and that
    of a collapsed KD stays at or below zero: the sign, which decides, is what noise leaves alone."""
    rng = np.random.default_rng(5)
    truth, predicted, g, kd_cells, controls = _screen(rng, cells=8)
    table = judge(tuple(f"kd{i}" for i in range(40)), predicted, g, kd_cells, controls, rng)
    generic = lambda k: np.stack([leave_one_out_mean(truth)[k], g])  # noqa: E731
    clean = np.array([_r2_by_lstsq(truth[k], predicted[k], generic(k)) for k in range(40)])
    assert (table.score[:20] < clean[:20]).mean() > 0.9 and (table.score[:20] > 0).all()
    assert (table.score[20:] < 0.1).all()


def test_untrained_one_hot_columns_are_those_still_at_their_initial_scale():
    """A freshly built arc-state pert_encoder has every column at torch's initial scale; columns that
    training moved (here: scaled as an optimiser would grow them) are no longer untrained."""
    import torch

    from suite.learnedness import untrained_columns

    from .helpers import tiny_state_model

    model = tiny_state_model("GPT2", perts=40)
    first = model.pert_encoder[0]
    onehots = np.eye(40)
    assert untrained_columns(first.weight.detach().numpy(), onehots).all()
    with torch.no_grad():
        first.weight[:, :10] *= 3.0
    found = untrained_columns(first.weight.detach().numpy(), onehots)
    assert not found[:10].any() and found[10:].all()
    assert untrained_columns(first.weight.detach().numpy(), onehots * 0.5) is None     # not one-hot
