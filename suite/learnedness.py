"""Which KDs a model learned (pure functions on arrays, no models).

A model maps the KDs whose own response it did not learn onto one generic response, and any set of
such KDs looks "coherent". So every KD-set test runs over the KDs a model learned, judged two ways.

**On observed perturbed cells** (the registry's `perturbed:` entry). A KD's observed shift is the
mean of its perturbed cells minus the mean of the screen's control cells; its predicted shift is
the model's, on those same control cells. A KD counts as learned when its prediction, scaled to fit
best, is closer to its observed shift than the best fit of what is *generic*: the least-squares
combination, fitted to the KD's observed shift, of what any KD could be given without being learned,
each computed over the KDs *outside the KD's own program* (the run's panels that hold it):

  mean         the mean observed shift of those KDs: the *mean baseline* of perturbation benchmarks;
  median       their gene-wise median observed shift: what the typical KD does;
  model median the gene-wise median of the model's predictions for them: the model's typical answer,
               where it puts the KDs it learned nothing specific about.

    specific R² = 1 - ||obs - c pred||² / ||obs - generic fit||²,   c = max(0, <obs, pred> / ||pred||²)

over the output genes but the KD's own target: a knockdown lowers its own gene whatever pathway it
belongs to, and small models rarely learn that drop. Why these choices (each one a way the first
version called well-learned programs "not learned", tests/test_learnedness.py):

- a program that many KDs share is part of every other KD's mean, and of the median when it is
  large: a baseline that contains the KD's own program makes a model that learned it look no better
  than the baseline. So the baseline leaves out the KD's program (for a KD in no panel: the KD);
- the model's answer to an empty (all-zero) one-hot is an input it was never trained on, and can be
  anything, one learned program included: it is no baseline (the model's median answer is);
- the generic fit has three free coefficients and the prediction none would compare a fitted curve
  with an unfitted one: a prediction with the right direction but a shrunken size (a program learned
  partly) lost to it. With c fitted, the score is the share of the observed shift that the
  prediction's direction explains beyond what the generic directions explain:
  D = max(0, <obs, p̂>)² - ||P_generic obs||², a quadratic form of rank at most 4.

The numerator and denominator share the observed cells' noise, which pulls the ratio toward 0;
their difference D carries it only linearly. So the 95% interval is that of D over resamples of the
KD's cells and the control cells (the generic directions and the prediction held fixed), divided by
the observed ||obs - generic fit||²: an interval on the R² scale whose sign is that of D. Each KD's
resamples come from its own seeded stream, so a KD's judgement does not depend on which other KDs
are judged.

**Pooled over a set.** With 16 to 32 cells per KD, a program the model learned only partly leaves
each of its KDs *undetermined*. `pooled` asks the same question of a set's shared response: the mean
observed shift of the set's KDs against the mean of their predictions, with the generic directions
computed outside the set and its members' programs; on each gene the mean is over the members whose
own target it is not (the KDs of a complex target the complex's own genes, which carry its program);
the interval resamples every member's cells. A KD-set test (suite/checks/common.scope) pools a panel's
undetermined members and keeps them when the pooled set is learned; members judged *not learned*
never enter it.

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

and a set test uses the learned KDs (and a pooled set's undetermined ones) when observed cells were
given, else every KD but the untrained ones.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

LEVEL = 0.95
STATUSES = ("learned", "not learned", "undetermined", "no cells", "untrained", "not judged")
# A trained one-hot column moves away from torch's uniform initialisation U(-1/sqrt(P), 1/sqrt(P))
# (expected norm sqrt(H / 3P)); on the demo, trained columns sit at 2.7 to 6.4 times that norm and the
# held-out ones at 0.86 to 1.11: a column below twice the initial norm has not been trained.
UNTRAINED_FACTOR = 2.0
GENERIC = ("mean", "median", "model median")     # the generic directions, in the order of `_basis`


def status_of(low: float, high: float) -> str:
    """The verdict of one interval on the specific R² scale."""
    if low > 0:
        return "learned"
    return "not learned" if high < 0 else "undetermined"


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
        """[K] bool: the KDs a set test may use on their own."""
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
        return status_of(self.low[i], self.high[i])

    def counts(self) -> dict[str, int]:
        found = [self.status(i) for i in range(len(self.kds))]
        return {s: found.count(s) for s in STATUSES}


@dataclass(frozen=True)
class Pooled:
    """The judgement of a set of KDs' shared response (`pooled`)."""

    kds: tuple[str, ...]         # the KDs pooled
    score: float                 # specific R² of the set's mean shift
    low: float
    high: float
    n_cells: int                 # perturbed cells pooled

    @property
    def status(self) -> str:
        return status_of(self.low, self.high)

    def to_dict(self) -> dict:
        return {"kds": list(self.kds), "score": round(self.score, 4), "ci": [round(self.low, 4), round(self.high, 4)],
                "n_cells": self.n_cells, "status": self.status}


@dataclass(frozen=True)
class Screen:
    """A model's observed screen and its predictions for it: everything a judgement reads."""

    kds: tuple[str, ...]
    predicted: np.ndarray                       # [K, G] the model's predicted shift of each KD
    kd_cells: tuple[np.ndarray | None, ...]     # [n_k, G] observed cells of each KD, or None
    controls: np.ndarray                        # [n_c, G] the screen's control cells
    own_gene: np.ndarray                        # [K] column of each KD's own target (-1: not among the genes)
    min_cells: int = 3
    n_boot: int = 200
    seed: int = 0
    source: str = ""                            # where the cells came from, in words

    @cached_property
    def n_cells(self) -> np.ndarray:
        return np.array([0 if c is None else len(c) for c in self.kd_cells])

    @cached_property
    def judged(self) -> np.ndarray:
        """[K] bool: the KDs with enough cells to be judged."""
        return self.n_cells >= self.min_cells

    @cached_property
    def observed(self) -> np.ndarray:
        """[K, G] observed shifts (NaN rows for KDs not judged)."""
        out = np.full(self.predicted.shape, np.nan)
        mean = self.controls.mean(axis=0)
        for i in np.flatnonzero(self.judged):
            out[i] = self.kd_cells[i].mean(axis=0) - mean
        return out

    @cached_property
    def control_draws(self) -> np.ndarray:
        """[n_boot, G] means of bootstrap resamples of the control cells (shared by every KD)."""
        return _resampled_means(self.controls, self.n_boot, np.random.default_rng([self.seed, 0]))

    @cached_property
    def _medians(self) -> tuple[np.ndarray, np.ndarray]:
        return np.median(self.observed[self.judged], axis=0), np.median(self.predicted, axis=0)

    def keep(self, rows: Iterable[int]) -> np.ndarray:
        """[G] 0 at the own targets of these KDs, 1 elsewhere."""
        mask = np.ones(self.predicted.shape[1])
        own = self.own_gene[list(rows)]
        mask[own[own >= 0]] = 0.0
        return mask

    def projected_draws(self, i: int, directions: np.ndarray) -> np.ndarray:
        """[n_boot, D] bootstrap resamples of KD i's observed shift, projected on `directions` [G, D]
        (the KD's own seeded stream, so a KD's draws do not depend on which others are judged)."""
        rng = np.random.default_rng([self.seed, 1, i])
        cells = self.kd_cells[i]
        weights = rng.multinomial(len(cells), np.full(len(cells), 1.0 / len(cells)), size=self.n_boot) / len(cells)
        return weights @ (cells @ directions) - self.control_draws @ directions

    @cached_property
    def _parts(self) -> dict[bytes, np.ndarray]:
        return {}

    def basis(self, outside: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[G, r] orthonormal directions of the generic responses computed over the KDs in `outside`
        (bool [K]), on the genes `mask` keeps."""
        rest = outside & self.judged
        if rest.sum() < 2:
            raise ValueError("fewer than 2 observed KDs outside the program to build a baseline from")
        if outside.sum() >= len(outside) - 1:       # a KD in no panel: one KD moves a median by one rank
            parts = np.stack([self.observed[rest].mean(axis=0), *self._medians], axis=1)
            return orthonormal(parts * mask[:, None])
        key = np.packbits(outside).tobytes()
        if key not in self._parts:          # the KDs of one program share their generic responses
            self._parts[key] = np.stack([self.observed[rest].mean(axis=0), np.median(self.observed[rest], axis=0),
                                         np.median(self.predicted[outside], axis=0)], axis=1)
        return orthonormal(self._parts[key] * mask[:, None])


def orthonormal(columns: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """[G, r] an orthonormal basis of the span of `columns` [G, B] (r <= B: collinear ones dropped)."""
    u, s, _ = np.linalg.svd(columns, full_matrices=False)
    return u[:, s > tol * max(float(s.max(initial=0.0)), 1e-300)]


def gain(projections: np.ndarray) -> np.ndarray:
    """D = max(0, <obs, p̂>)² - ||P_generic obs||² from an observed shift's projections [..., 1 + r] on
    (p̂, the generic basis): how much closer the scaled prediction is than the generic fit."""
    along = np.maximum(projections[..., 0], 0.0)
    return along ** 2 - (projections[..., 1:] ** 2).sum(axis=-1)


def specific_r2(observed: np.ndarray, predicted: np.ndarray, generic: np.ndarray) -> np.ndarray:
    """[K] specific R² of predictions [K, G] for observed shifts [K, G] against the best least-squares
    fit of each KD's generic responses [K, B, G], the prediction scaled by its best c >= 0."""
    out = np.empty(len(observed))
    for k in range(len(observed)):
        q = orthonormal(generic[k].T)
        out[k] = _judge_one(observed[k], predicted[k], q)[0]
    return out


def _judge_one(obs: np.ndarray, pred: np.ndarray, q: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(specific R², ||obs - generic fit||², the directions (p̂, basis) [G, 1 + r]) of one shift."""
    norm = np.linalg.norm(pred)
    unit = pred / norm if norm > 0 else np.zeros_like(pred)
    directions = np.column_stack([unit, q])
    total = float(obs @ obs - ((q.T @ obs) ** 2).sum())
    d = float(gain(directions.T @ obs))
    return (d / total if total > 0 else np.nan), total, directions


def programs_of(kds: Sequence[str], programs: Iterable[Sequence[str]]) -> list[np.ndarray]:
    """[K] for each KD, bool [K]: the KDs of its program (itself and every KD sharing a panel with it)."""
    index = {k: i for i, k in enumerate(kds)}
    groups = [np.array(sorted({index[k] for k in p if k in index}), dtype=int) for p in programs]
    own = [np.zeros(len(kds), dtype=bool) for _ in kds]
    for i in range(len(kds)):
        own[i][i] = True
    for group in groups:
        for i in group:
            own[i][group] = True
    return own


def judge(screen: Screen, untrained: np.ndarray | None = None, programs: Iterable[Sequence[str]] = (),
          source: str = "", background: Collection[str] | None = None) -> Learnedness:
    """Learnedness of every KD of `screen`, each judged against the generic responses of the KDs
    outside its program (`programs`: the run's panels' KD lists), `untrained` [K] from
    `untrained_columns`. With a `background` (suite/background.py) the generic responses are those
    of its KDs only, as they would be of the whole screen."""
    kds = screen.kds
    frame = _frame(kds, background)
    untrained = np.zeros(len(kds), dtype=bool) if untrained is None else untrained
    score, low, high = (np.full(len(kds), np.nan) for _ in range(3))
    if screen.judged.sum() < 3:
        return Learnedness(kds, score, low, high, screen.n_cells, untrained, source)
    own = programs_of(kds, programs)
    tail = (1 - LEVEL) / 2 * 100
    for i in np.flatnonzero(screen.judged):
        mask = screen.keep([i])
        outside = ~own[i]
        if frame is not None:       # a KD of no program is one of the frame's many, as it is of the screen's
            outside = frame if own[i].sum() == 1 else outside & frame
        try:
            q = screen.basis(outside, mask)
        except ValueError:           # a program that holds all but one KD: no baseline outside it
            continue
        score[i], total, directions = _judge_one(screen.observed[i] * mask, screen.predicted[i] * mask, q)
        if not total > 0:
            continue
        draws = gain(screen.projected_draws(i, directions))
        low[i], high[i] = np.percentile(draws, [tail, 100 - tail]) / total
    return Learnedness(kds, score, low, high, screen.n_cells, untrained, source)


def pooled(screen: Screen, members: Sequence[str], programs: Iterable[Sequence[str]] = (),
           background: Collection[str] | None = None) -> Pooled | None:
    """The judgement of the shared response of `members` (KD names of `screen`): their mean observed
    shift against their mean prediction, the generic responses computed outside the set and its
    members' programs, each gene averaged over the members whose own target it is not. None with
    fewer than 2 judged members."""
    index = {k: i for i, k in enumerate(screen.kds)}
    rows = [index[k] for k in members if k in index and screen.judged[index[k]]]
    if len(rows) < 2:
        return None
    own = programs_of(screen.kds, programs)
    outside = ~np.any([own[i] for i in rows], axis=0)
    frame = _frame(screen.kds, background)
    if frame is not None:
        outside &= frame
    # each gene's mean over the members whose own target it is not: the KDs of a complex often target
    # the complex's own genes, which carry its program, so masking every member's target would drop them
    keep = np.stack([screen.keep([i]) for i in rows])                       # [n, G]
    counts = keep.sum(axis=0)
    weights = np.divide(keep, counts, out=np.zeros_like(keep), where=counts > 0)
    mask = (counts > 0).astype(float)
    try:
        q = screen.basis(outside, mask)
    except ValueError:
        return None
    obs = (weights * screen.observed[rows]).sum(axis=0)
    pred = (weights * screen.predicted[rows]).sum(axis=0)
    score, total, directions = _judge_one(obs, pred, q)
    if not total > 0:
        return None
    draws = np.sum([screen.projected_draws(i, directions * w[:, None]) for i, w in zip(rows, weights, strict=True)],
                   axis=0)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(gain(draws), [tail, 100 - tail]) / total
    return Pooled(tuple(screen.kds[i] for i in rows), float(score), float(low), float(high),
                  int(screen.n_cells[rows].sum()))


def _frame(kds: Sequence[str], background: Collection[str] | None) -> np.ndarray | None:
    """[K] bool: the KDs of the background the generic responses come from (None: every KD)."""
    if background is None:
        return None
    chosen = set(background)
    return np.array([k in chosen for k in kds], dtype=bool)


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
