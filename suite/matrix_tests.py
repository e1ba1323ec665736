"""Tests on KD x KD similarity matrices, whose entries are not independent samples.

mantel            Pearson r between the off-diagonal entries of two symmetric matrices; the null
                  permutes the rows and columns of one together (KD labels), one-sided (greater).
                  Checked against scikit-bio's `mantel` in the suite's tests.
group_contrast    mean similarity of same-group pairs minus different-group pairs; the null
                  permutes the group labels (group sizes kept).
auroc             the probability that a random member scores above a random non-member;
                  auroc_ci its DeLong interval on the logit scale (the percentile bootstrap of KDs
                  covers 0.88-0.90 at 8 members, this 0.92-0.96: tests/test_coverage.py).
label_test        AUROC of per-KD scores between two groups of KDs, against permutations of the KD
                  labels: every enumeration when there are few enough, else `n_permutations` draws.
                  The KD is the unit: values that share a KD are never counted as separate samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import norm, rankdata

from .stats import exact_p


@dataclass(frozen=True)
class MatrixTestResult:
    observed: float
    p: float
    null: np.ndarray
    n_pairs: int


def mantel(x: np.ndarray, y: np.ndarray, n_permutations: int, rng: np.random.Generator) -> MatrixTestResult:
    upper = np.triu_indices(len(x), 1)
    zx, zy = _standardized(x, upper), _standardized(y, upper)
    observed = float((zx[upper] * zy[upper]).mean())
    null = np.array([(zx[np.ix_(order, order)][upper] * zy[upper]).mean()
                     for order in (rng.permutation(len(x)) for _ in range(n_permutations))])
    return MatrixTestResult(observed, exact_p(null, observed), null, len(upper[0]))


def _standardized(m: np.ndarray, upper: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """m with its off-diagonal entries z-scored (diagonal 0), so a permuted copy keeps mean 0, sd 1."""
    values = m[upper]
    sd = values.std()
    if sd == 0:
        raise ValueError("a similarity matrix with constant off-diagonal entries has no correlation")
    out = np.zeros_like(m, dtype=np.float64)
    out[upper] = (values - values.mean()) / sd
    return out + out.T


def group_contrast(sim: np.ndarray, labels: np.ndarray, n_permutations: int,
                   rng: np.random.Generator) -> MatrixTestResult:
    upper = np.triu_indices(len(sim), 1)
    values = sim[upper]
    observed = _contrast(values, labels, upper)
    null = np.array([_contrast(values, rng.permutation(labels), upper) for _ in range(n_permutations)])
    return MatrixTestResult(observed, exact_p(null, observed), null, len(values))


def _contrast(values: np.ndarray, labels: np.ndarray, upper: tuple[np.ndarray, np.ndarray]) -> float:
    same = labels[upper[0]] == labels[upper[1]]
    if same.all() or not same.any():
        return float("nan")
    return float(values[same].mean() - values[~same].mean())


def auroc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """NaN scores are left out; nan when either group is empty."""
    valid = ~np.isnan(scores)
    scores, is_member = scores[valid], is_member[valid]
    n_in, n_out = int(is_member.sum()), int((~is_member).sum())
    if n_in == 0 or n_out == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[is_member].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def auroc_ci(scores: np.ndarray, is_member: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """DeLong's variance of the AUROC (structural components of members and non-members), the
    interval taken on the logit scale so it stays inside (0, 1). Under perfect separation DeLong's
    variance is 0: the interval then runs from a Wald bound with Hanley and McNeil's variance at the
    nearest attainable AUROC, (mn - 1/2) / mn, to the estimate."""
    a, b = scores[is_member], scores[~is_member]
    psi = (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])
    value = float(psi.mean())
    variance = psi.mean(axis=1).var(ddof=1) / len(a) + psi.mean(axis=0).var(ddof=1) / len(b)
    z = float(norm.ppf(0.5 + level / 2))
    if variance == 0:
        top = 1 - 0.5 / psi.size              # AUROC 0 is AUROC 1 with the groups swapped
        m, n = (len(a), len(b)) if value > 0.5 else (len(b), len(a))
        q1, q2 = top / (2 - top), 2 * top**2 / (1 + top)
        hanley = (top * (1 - top) + (m - 1) * (q1 - top**2) + (n - 1) * (q2 - top**2)) / psi.size
        reach = z * np.sqrt(max(hanley, 0.0))
        return (max(0.0, top - reach), value) if value > 0.5 else (value, min(1.0, 1 - top + reach))
    half = z * np.sqrt(variance) / (value * (1 - value))
    centre = np.log(value / (1 - value))
    low, high = (float(1 / (1 + np.exp(-x))) for x in (centre - half, centre + half))
    return low, high


@dataclass(frozen=True)
class LabelTest:
    auroc: float
    null: np.ndarray
    p: float
    smallest_p: float        # the smallest p these group sizes can give: 1 / C(n, n_in)
    exact: bool              # every relabeling enumerated


ENUMERATE_UP_TO = 50_000


def label_test(scores: np.ndarray, is_member: np.ndarray, n_permutations: int, rng: np.random.Generator) -> LabelTest:
    """One-sided (members score higher) permutation test of the KD labels on per-KD scores."""
    n, n_in = len(scores), int(is_member.sum())
    ranks = rankdata(scores)
    offset, scale = n_in * (n_in + 1) / 2, n_in * (n - n_in)
    observed = float((ranks[is_member].sum() - offset) / scale)
    count = math.comb(n, n_in)
    if count <= ENUMERATE_UP_TO:
        groups = np.fromiter((i for c in combinations(range(n), n_in) for i in c), dtype=int).reshape(count, n_in)
        null = (ranks[groups].sum(axis=1) - offset) / scale
        p = float(np.mean(null >= observed - 1e-12))
    else:
        groups = np.argsort(rng.random((n_permutations, n)), axis=1)[:, :n_in]
        null = (ranks[groups].sum(axis=1) - offset) / scale
        p = exact_p(null, observed)
    return LabelTest(observed, null, p, 1.0 / count, count <= ENUMERATE_UP_TO)


def pair_bootstrap_ci(statistic: Callable[[np.ndarray, np.ndarray], float], n_items: int, rng: np.random.Generator,
                      n_boot: int, level: float = 0.95) -> tuple[float, float] | None:
    """CI of a statistic over item pairs by resampling items (KDs) with replacement: statistic(i, j)
    gets the pairs of the resample, without pairs of an item with its own copy."""
    values = []
    for _ in range(n_boot):
        picks = rng.integers(0, n_items, n_items)
        a, b = np.triu_indices(n_items, 1)
        i, j = picks[a], picks[b]
        keep = i != j
        value = statistic(i[keep], j[keep])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
