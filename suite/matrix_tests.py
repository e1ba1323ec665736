"""Tests on KD x KD similarity matrices, whose entries are not independent samples.

mantel            Pearson r (or Spearman: Pearson r of the entries' ranks) between the off-diagonal
                  entries of two symmetric matrices; the null permutes the rows and columns of one
                  together (KD labels), one-sided (greater). Checked against scikit-bio's `mantel`,
                  both methods, in the suite's tests.
group_contrast    mean similarity of same-group pairs minus different-group pairs; the null
                  permutes the group labels (group sizes kept).
auroc             the probability that a random member scores above a random non-member;
                  auroc_ci its DeLong interval on the logit scale (the percentile bootstrap of KDs
                  covers 0.88-0.90 at 8 members, this 0.92-0.96: tests/test_coverage.py).
mantel_ci, group_contrast_ci
                  intervals of those two statistics from the leave-one-KD-out jackknife (pairs that
                  share a KD are not independent, so the KD is what is left out); the bootstrap of
                  KDs covered the Mantel r 0.99 at 30 KDs, the jackknife 0.97 (tests/test_coverage.py).
label_test        AUROC of per-KD scores between two groups of KDs, against permutations of the KD
                  labels: every enumeration when there are few enough, else `n_permutations` draws.
                  The KD is the unit: values that share a KD are never counted as separate samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import norm, rankdata

from core.errors import Inconclusive

from .stats import exact_p


@dataclass(frozen=True)
class MatrixTestResult:
    observed: float
    p: float
    null: np.ndarray
    n_pairs: int


def mantel(x: np.ndarray, y: np.ndarray, n_permutations: int, rng: np.random.Generator,
           method: str = "pearson") -> MatrixTestResult:
    if method == "spearman":      # permuting KD labels permutes the entries, so ranking once is exact
        x, y = ranked_entries(x), ranked_entries(y)
    upper = np.triu_indices(len(x), 1)
    zx, zy = _standardized(x, upper), _standardized(y, upper)
    observed = float((zx[upper] * zy[upper]).mean())
    null = np.array([(zx[np.ix_(order, order)][upper] * zy[upper]).mean()
                     for order in (rng.permutation(len(x)) for _ in range(n_permutations))])
    return MatrixTestResult(observed, exact_p(null, observed), null, len(upper[0]))


def ranked_entries(m: np.ndarray) -> np.ndarray:
    """m with its off-diagonal entries replaced by their average ranks (diagonal 0), symmetric."""
    upper = np.triu_indices(len(m), 1)
    out = np.zeros_like(m, dtype=np.float64)
    out[upper] = rankdata(m[upper])
    return out + out.T


def _standardized(m: np.ndarray, upper: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """m with its off-diagonal entries z-scored (diagonal 0), so a permuted copy keeps mean 0, sd 1."""
    values = m[upper]
    sd = values.std()
    if not sd > 0:
        raise Inconclusive("a similarity matrix has constant off-diagonal entries (every KD pair alike), so its "
                           "correlation with another is undefined; the model may not separate these KDs at all")
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
    smallest_p: float        # the smallest p these group sizes can give: 1 / (number of relabelings)
    exact: bool              # every relabeling enumerated


ENUMERATE_UP_TO = 50_000


def label_test(scores: np.ndarray, is_member: np.ndarray, n_permutations: int, rng: np.random.Generator,
               strata: np.ndarray | None = None) -> LabelTest:
    """One-sided (members score higher) permutation test of the KD labels on per-KD scores.

    With `strata` (a group id per KD), labels are permuted within each stratum only: a design that
    matched each member with comparison KDs of similar magnitude makes the labels exchangeable only
    inside the matched groups, and a free permutation then reads the matching itself as a null."""
    n, n_in = len(scores), int(is_member.sum())
    ranks = rankdata(scores)
    offset, scale = n_in * (n_in + 1) / 2, n_in * (n - n_in)
    observed = float((ranks[is_member].sum() - offset) / scale)
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    blocks = [(np.flatnonzero(strata == s), int(is_member[strata == s].sum())) for s in np.unique(strata)]
    blocks = [(where, k) for where, k in blocks if 0 < k < len(where)]     # a stratum of one label never moves
    fixed = np.setdiff1d(np.flatnonzero(is_member), np.concatenate([w for w, _ in blocks] or [np.zeros(0, int)]))
    count = math.prod(math.comb(len(where), k) for where, k in blocks)
    if count <= ENUMERATE_UP_TO:
        per_block = [where[np.array(list(combinations(range(len(where)), k)), dtype=int)] for where, k in blocks]
        picks = np.indices([len(b) for b in per_block]).reshape(len(per_block), -1)   # every combination of choices
        groups = np.hstack([np.broadcast_to(fixed, (count, len(fixed))),
                            *(block[pick] for block, pick in zip(per_block, picks, strict=True))]).astype(int)
        null = (ranks[groups].sum(axis=1) - offset) / scale
        p = float(np.mean(null >= observed - 1e-12))
    else:
        picks = [where[np.argsort(rng.random((n_permutations, len(where))), axis=1)[:, :k]] for where, k in blocks]
        groups = np.hstack([np.broadcast_to(fixed, (n_permutations, len(fixed))), *picks])
        null = (ranks[groups].sum(axis=1) - offset) / scale
        p = exact_p(null, observed)
    return LabelTest(observed, null, p, 1.0 / count, count <= ENUMERATE_UP_TO)


def mantel_ci(x: np.ndarray, y: np.ndarray, level: float = 0.95, method: str = "pearson"
              ) -> tuple[float, float] | None:
    """Normal interval of the Mantel r (Pearson r of the off-diagonal entries) with the leave-one-KD-out
    jackknife's standard error, from pair sums: leaving KD i out removes row i's pairs. Spearman: the
    entries are ranked once over all pairs, not again for each KD left out (that would cost K times
    more; tests/test_matrix_tests.py compares the two standard errors)."""
    if method == "spearman":
        x, y = ranked_entries(x), ranked_entries(y)
    n = len(x)
    if n < 4:
        return None
    off = ~np.eye(n, dtype=bool)
    x, y = np.where(off, x, 0.0), np.where(off, y, 0.0)
    # totals over unordered pairs, and what each KD's own pairs contribute to them
    sums = {name: (float(m.sum()) / 2, m.sum(axis=1)) for name, m in
            (("x", x), ("y", y), ("xx", x * x), ("yy", y * y), ("xy", x * y))}
    pairs = n * (n - 1) / 2
    full = _pearson_from_sums({k: v[0] for k, v in sums.items()}, pairs)
    left_out = _pearson_from_sums({k: total - row for k, (total, row) in sums.items()}, pairs - (n - 1))
    return jackknife_interval(full, left_out, level)


def group_contrast_ci(sim: np.ndarray, labels: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Normal interval of the same-group minus different-group mean similarity with the
    leave-one-KD-out jackknife's standard error."""
    n = len(sim)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    different = labels[:, None] != labels[None, :]
    if n < 4 or same.sum() < 2 * 2 or not different.any():
        return None
    parts = []
    for mask in (same, different):
        values = np.where(mask, sim, 0.0)
        total, count = float(values.sum()) / 2, float(mask.sum()) / 2
        row, row_count = values.sum(axis=1), mask.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append((total / count, (total - row) / (count - row_count)))
    full = parts[0][0] - parts[1][0]
    return jackknife_interval(full, parts[0][1] - parts[1][1], level)


def _pearson_from_sums(s: dict, n: float):
    cov = s["xy"] - s["x"] * s["y"] / n
    var_x, var_y = s["xx"] - s["x"] ** 2 / n, s["yy"] - s["y"] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt(var_x * var_y)


def jackknife_interval(full: float, left_out: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Normal interval of `full` with the jackknife standard error of its leave-one-unit-out values."""
    left_out = np.asarray(left_out, dtype=float)
    if not np.isfinite(full) or not np.all(np.isfinite(left_out)):
        return None
    n = len(left_out)
    se = float(np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2)))
    z = norm.ppf(0.5 + level / 2)
    return float(full) - z * se, float(full) + z * se
