"""Which KDs a model learned (pure functions on arrays, no models).

A model maps the KDs whose own response it did not learn onto one generic response, and any set of
such KDs looks "coherent". So every KD-set test runs over the KDs a model learned, judged two ways.

**On observed perturbed cells** (the registry's `perturbed:` entry). A KD's observed shift is the
mean of its perturbed cells minus the mean of the screen's control cells; its predicted shift is
the model's, on those same control cells. A KD counts as learned when its prediction is closer to
its observed shift than the best *generic* prediction is, the least-squares combination fitted to
the KD's observed shift of what any KD could be given without being learned:

  mean     the mean observed shift of the other KDs: the *mean baseline* of perturbation benchmarks;
  median   the gene-wise median observed shift over KDs: what the typical KD does, the shared
           (generic) component, which a few strong programs cannot pull away as they pull the mean;
  default  the model's own answer for an empty perturbation (a zero one-hot): where it puts the KDs
           it knows nothing about.

So a KD whose response is the shared one, stronger or weaker, gets no credit for it, and

    specific R² = 1 - ||obs - pred||² / ||obs - generic fit||²

over the output genes but the KD's own target: a knockdown lowers its own gene whatever pathway it
belongs to, small models rarely learn that drop, and it would decide the score of every KD whose
downstream response is small.

The numerator and denominator share the observed cells' noise, which pulls the ratio toward 0;
their difference D = ||obs - generic fit||² - ||obs - pred||² carries it only linearly. So the 95%
interval is that of D over resamples of the KD's cells and the control cells (the generic responses
held fixed), divided by the observed ||obs - generic fit||²: an interval on the R² scale whose sign
is that of D.

**From the checkpoint alone.** A KD whose one-hot column of the pert_encoder's first layer is still
at its initial scale was never moved by training (a KD held out of training, or without cells in
it): its pert_encoder output is the encoder's default, whatever its name. Such a KD is *untrained*.

A KD is

    learned        observed cells: the interval lies above 0
    not learned    observed cells: the interval lies below 0
    undetermined   observed cells: the interval straddles 0 (too few cells, or too weak a response)
    no cells       observed cells were given, but fewer than `min_cells` for this KD
    untrained      its encoder column never moved from its initialisation
    not judged     no observed cells were given and training moved its column

and a set test uses the learned KDs when observed cells were given, else every KD but the
untrained ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
STATUSES = ("learned", "not learned", "undetermined", "no cells", "untrained", "not judged")
# A trained one-hot column moves away from torch's uniform initialisation U(-1/sqrt(P), 1/sqrt(P))
# (expected norm sqrt(H / 3P)); on the demo, trained columns sit at 2.7 to 6.4 times that norm and the
# held-out ones at 0.86 to 1.11: a column below twice the initial norm has not been trained.
UNTRAINED_FACTOR = 2.0


@dataclass(frozen=True)
class Learnedness:
    """Per KD of one model: how it was judged, and what the judgement says."""

    kds: tuple[str, ...]
    score: np.ndarray            # [K] specific R² on observed cells (NaN: not judged on cells)
    low: np.ndarray              # [K] lower end of the 95% interval
    high: np.ndarray             # [K] upper end
    n_cells: np.ndarray          # [K] observed cells of each KD
    untrained: np.ndarray        # [K] bool: the KD's encoder column never moved from its initialisation
    source: str                  # how the KDs were judged, in words
    observed: bool = True        # judged on observed cells

    @property
    def usable(self) -> np.ndarray:
        """[K] bool: the KDs a set test may use."""
        if self.observed:
            return (np.nan_to_num(self.low, nan=-np.inf) > 0) & ~self.untrained
        return ~self.untrained

    def status(self, i: int) -> str:
        if self.untrained[i]:
            return "untrained"
        if not self.observed:
            return "not judged"
        if not np.isfinite(self.score[i]):
            return "no cells"
        if self.low[i] > 0:
            return "learned"
        return "not learned" if self.high[i] < 0 else "undetermined"

    def counts(self) -> dict[str, int]:
        found = [self.status(i) for i in range(len(self.kds))]
        return {s: found.count(s) for s in STATUSES}


def specific_r2(observed: np.ndarray, predicted: np.ndarray, generic: np.ndarray) -> np.ndarray:
    """[..., K] specific R² of predictions [..., K, G] for observed shifts [..., K, G], against the best
    least-squares combination of each KD's generic responses [K, B, G]."""
    gain, total = _gain(observed, predicted, generic)
    return gain / np.where(total > 0, total, np.nan)


def _gain(observed: np.ndarray, predicted: np.ndarray, generic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D, ||obs - generic fit||²): how much closer the prediction is than the best generic fit."""
    gram = np.einsum("kbg,kcg->kbc", generic, generic)
    gram = gram + 1e-9 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(generic.shape[1]) + 1e-30
    coef = np.linalg.solve(gram, np.einsum("...kg,kbg->...kb", observed, generic)[..., None])[..., 0]
    fit = np.einsum("...kb,kbg->...kg", coef, generic)
    total = ((observed - fit) ** 2).sum(axis=-1)
    return total - ((observed - predicted) ** 2).sum(axis=-1), total


def leave_one_out_mean(shifts: np.ndarray) -> np.ndarray:
    """[K, G]: row k is the mean of the other rows (the mean baseline that k is judged against)."""
    return (shifts.sum(axis=0, keepdims=True) - shifts) / (len(shifts) - 1)


def generic_responses(observed: np.ndarray, default: np.ndarray | None) -> np.ndarray:
    """[K, B, G] the generic responses each KD is judged against: the mean of the other KDs' observed
    shifts, the gene-wise median over KDs, and the model's default (when given)."""
    median = np.broadcast_to(np.median(observed, axis=0), observed.shape)
    parts = [leave_one_out_mean(observed), median]
    if default is not None:
        parts.append(np.broadcast_to(default, observed.shape))
    return np.stack(parts, axis=1)


def judge(kds: tuple[str, ...], predicted: np.ndarray, default: np.ndarray | None, kd_cells: list[np.ndarray | None],
          controls: np.ndarray, rng: np.random.Generator, untrained: np.ndarray | None = None,
          own_gene: np.ndarray | None = None, n_boot: int = 200, min_cells: int = 3, source: str = "") -> Learnedness:
    """Learnedness of every KD on observed cells: `predicted` [K, G] shifts, `default` [G] the model's
    shift for an empty perturbation, `kd_cells` the observed cells of each KD ([n_k, G] or None),
    `controls` [n_c, G] the screen's control cells, `untrained` [K] from `untrained_columns`,
    `own_gene` [K] the column of each KD's own target (-1: not among the genes), left out."""
    untrained = np.zeros(len(kds), dtype=bool) if untrained is None else untrained
    keep = np.ones((len(kds), predicted.shape[1]))
    if own_gene is not None:
        hit = own_gene >= 0
        keep[np.flatnonzero(hit), own_gene[hit]] = 0.0
    control_mean = controls.mean(axis=0)
    n_cells = np.array([0 if c is None else len(c) for c in kd_cells])
    judged = np.flatnonzero(n_cells >= min_cells)
    score, low, high = (np.full(len(kds), np.nan) for _ in range(3))
    if len(judged) < 3:
        return Learnedness(kds, score, low, high, n_cells, untrained, source)
    mask = keep[judged]
    observed = (np.stack([kd_cells[i].mean(axis=0) for i in judged]) - control_mean) * mask
    generic = generic_responses(observed, default) * mask[:, None, :]
    gain, total = _gain(observed, predicted[judged] * mask, generic)
    total = np.where(total > 0, total, np.nan)
    score[judged] = gain / total
    control_draws = _resampled_means(controls, n_boot, rng)                       # [B, G]
    boot = np.empty((n_boot, len(judged)))
    for j, i in enumerate(judged):
        draws = (_resampled_means(kd_cells[i], n_boot, rng) - control_draws) * mask[j]      # [B, G]
        boot[:, j] = _gain(draws[:, None, :], (predicted[i] * mask[j])[None], generic[j][None])[0][:, 0]
    tail = (1 - LEVEL) / 2 * 100
    low[judged], high[judged] = np.percentile(boot, [tail, 100 - tail], axis=0) / total
    return Learnedness(kds, score, low, high, n_cells, untrained, source)


def from_checkpoint(kds: tuple[str, ...], untrained: np.ndarray, source: str) -> Learnedness:
    """The judgement without observed cells: only the untrained KDs are known not to be learned."""
    nan = np.full(len(kds), np.nan)
    return Learnedness(kds, nan, nan, nan, np.zeros(len(kds), dtype=int), untrained, source, observed=False)


def untrained_columns(weight: np.ndarray, onehots: np.ndarray) -> np.ndarray | None:
    """[n] bool for one-hot rows [n, P] read by a first layer `weight` [H, P]: is the row's column still
    within UNTRAINED_FACTOR of torch's initial norm sqrt(H / 3P)? None when the rows are not one-hot."""
    if onehots.shape[1] != weight.shape[1] or not (np.isin(onehots, (0.0, 1.0)).all()
                                                   and (onehots.sum(axis=1) == 1).all()):
        return None
    initial = np.sqrt(weight.shape[0] / (3.0 * weight.shape[1]))
    norms = np.linalg.norm(weight[:, onehots.argmax(axis=1)], axis=0)
    return norms < UNTRAINED_FACTOR * initial


def _resampled_means(cells: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, G] means of bootstrap resamples of the rows of `cells`."""
    n = len(cells)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n
    return weights @ cells
