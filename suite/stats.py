"""The suite's statistics: pure functions on arrays, no models and no pytest.

Pairwise similarities are not independent samples, so set-level claims are tested
against nulls of whole random sets (label permutation, or permutation within strata of
similar effect magnitude), with the exact permutation p = (1 + #null >= observed) / (1 + n).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.stats import binom, false_discovery_control, hypergeom, rankdata
from scipy.stats import t as t_dist

SetStatistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class PermutationResult:
    observed: float
    null: np.ndarray          # the statistic on each null set
    p: float

    @property
    def null_mean(self) -> float:
        return float(self.null.mean())

    @property
    def null_sd(self) -> float:
        return float(self.null.std(ddof=1))

    @property
    def z(self) -> float:
        sd = self.null_sd
        return float((self.observed - self.null_mean) / sd) if sd > 0 else float("nan")


def cosine_similarity_matrix(x: np.ndarray) -> np.ndarray:
    """[n, d] rows -> [n, n] cosine similarities; zero rows get similarity 0."""
    unit = unit_rows(x)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def related_pairs(n: int, groups: Iterable[Sequence[int]]) -> np.ndarray:
    """[n, n] True where two distinct positions share one of `groups` (the other panels of a run):
    pairs left out of a set's mean pairwise cosine, in the members and in every null set alike."""
    related = np.zeros((n, n), dtype=bool)
    for group in groups:
        idx = np.asarray(group, dtype=int)
        related[np.ix_(idx, idx)] = True
    np.fill_diagonal(related, False)
    return related


def mean_pairwise(sim: np.ndarray, members: Sequence[int], related: np.ndarray | None = None) -> float:
    """Mean of sim[i, j] over unordered pairs of distinct positions in `members`, pairs that are
    `related` left out (nan when no pair is left)."""
    idx = np.asarray(members)
    block = sim[np.ix_(idx, idx)]
    upper = np.triu_indices(len(idx), k=1)
    keep = idx[upper[0]] != idx[upper[1]]
    if related is not None:
        keep &= ~related[idx[upper[0]], idx[upper[1]]]
    return float(block[upper][keep].mean()) if keep.any() else float("nan")


def mean_pairwise_many(sim: np.ndarray, sets: np.ndarray, related: np.ndarray | None = None,
                       chunk: int = 512) -> np.ndarray:
    """[n_sets] mean_pairwise of each row of `sets`, vectorised (nan for a set with no pair left)."""
    sets = np.asarray(sets)
    i, j = np.triu_indices(sets.shape[1], k=1)
    out = np.empty(len(sets))
    for start in range(0, len(sets), chunk):
        block = sets[start:start + chunk]
        keep = block[:, i] != block[:, j]
        if related is not None:
            keep &= ~related[block[:, i], block[:, j]]
        counted = keep.sum(axis=1)
        total = (sim[block[:, i], block[:, j]] * keep).sum(axis=1)
        out[start:start + chunk] = np.divide(total, counted, out=np.full(len(block), np.nan), where=counted > 0)
    return out


def within_many(x: np.ndarray, sets: np.ndarray, related: np.ndarray | None = None, chunk: int = 256) -> np.ndarray:
    """[n_sets] the `within` of within_and_background for each row of `sets`, vectorised."""
    unit, sets = unit_rows(x), np.asarray(sets)
    if related is not None:
        return mean_pairwise_many(unit @ unit.T, sets, related)
    m = sets.shape[1]
    out = np.empty(len(sets))
    for start in range(0, len(sets), chunk):
        block = unit[sets[start:start + chunk]]                      # [chunk, m, D]
        summed = block.sum(axis=1)
        out[start:start + chunk] = ((summed * summed).sum(axis=1) - (block * block).sum(axis=(1, 2))) / (m * (m - 1))
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x, dtype=float), where=norms > 0)


def upper_pairs(related: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the related pairs with i < j: what within_and_background subtracts, computed once
    by a caller that calls it many times (a bootstrap) on one K x K matrix."""
    return np.nonzero(np.triu(related, k=1))


def within_and_background(x: np.ndarray, members: Sequence[int], related: np.ndarray | None = None,
                          pairs: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """(mean cosine among members, mean cosine over all pairs of rows) without the full matrix:
    the all-pairs mean is (||sum of unit rows||^2 - n) / (n (n - 1)). `related` pairs are left out of
    both means (their dot products are subtracted from the all-pairs sum); `pairs` is
    upper_pairs(related), when the caller has it."""
    unit = unit_rows(x)
    n = len(unit)
    total = unit.sum(axis=0)
    pair_sum, n_pairs = (float(total @ total) - float((unit * unit).sum())) / 2, n * (n - 1) / 2
    idx = np.asarray(members)
    if related is not None:
        ri, rj = upper_pairs(related) if pairs is None else pairs
        pair_sum -= float(np.einsum("ij,ij->", unit[ri], unit[rj]))
        n_pairs -= len(ri)
        distinct, position = np.unique(idx, return_inverse=True)     # a repeated member is not its own pair
        block = unit[distinct]
        return mean_pairwise(block @ block.T, position, related[np.ix_(distinct, distinct)]), pair_sum / n_pairs
    block = unit[idx]
    m = len(block)
    summed = block.sum(axis=0)
    within = (float(summed @ summed) - float((block * block).sum())) / (m * (m - 1))
    return within, pair_sum / n_pairs


def nn_hit_rate(sim: np.ndarray, members: Sequence[int], candidates: Sequence[int]) -> float:
    """Fraction of members whose nearest neighbour among `candidates` is another member."""
    cand = np.asarray(candidates)
    member_set = set(int(m) for m in members)
    hits = 0
    for m in members:
        others = cand[cand != m]
        nearest = others[np.argmax(sim[m, others])]
        hits += int(nearest) in member_set
    return hits / len(members)


def nn_hit_rate_many(sim: np.ndarray, sets: np.ndarray, candidates: Sequence[int]) -> np.ndarray:
    """[n_sets] nn_hit_rate of each row of `sets` (members among the candidates), vectorised: every
    item's nearest candidate is found once."""
    cand, sets = np.asarray(candidates), np.asarray(sets)
    block = sim[:, cand].astype(float, copy=True)
    block[cand, np.arange(len(cand))] = -np.inf                    # an item is not its own neighbour
    nearest = cand[np.argmax(block, axis=1)]                       # first maximum, as nn_hit_rate takes it
    return (nearest[sets][:, :, None] == sets[:, None, :]).any(axis=2).mean(axis=1)


def knn_table(sim: np.ndarray, k: int, columns: np.ndarray | None = None) -> np.ndarray:
    """[n, k] indices of each item's k most similar other items (among `columns` when given)."""
    others = sim.astype(float, copy=True)
    np.fill_diagonal(others, -np.inf)
    if columns is not None:
        outside = np.ones(len(sim), dtype=bool)
        outside[np.asarray(columns)] = False
        others[:, outside] = -np.inf
    return np.argsort(-others, axis=1, kind="stable")[:, :k]


def neighbour_agreement(nn_a: np.ndarray, nn_b: np.ndarray, members: Sequence[int],
                        relabel: np.ndarray | None = None) -> float:
    """Mean Jaccard overlap of the members' k-NN sets in A and in B.

    With `relabel` (a permutation), item i of B is read as B's item relabel[i]: the
    neighbours of i become relabel^-1 of the neighbours of relabel[i].
    """
    inverse = np.argsort(relabel) if relabel is not None else None
    scores = []
    for m in members:
        near_b = nn_b[m] if relabel is None else inverse[nn_b[relabel[m]]]
        a, b = set(nn_a[m].tolist()), set(near_b.tolist())
        scores.append(len(a & b) / len(a | b))
    return float(np.mean(scores))


def neighbour_jaccards(nn_a: np.ndarray, nn_b: np.ndarray) -> np.ndarray:
    """[n] each item's Jaccard overlap of its k-NN sets in A and in B (neighbour_agreement of one item)."""
    return np.array([len(set(a.tolist()) & set(b.tolist())) / len(set(a.tolist()) | set(b.tolist()))
                     for a, b in zip(nn_a, nn_b, strict=True)])


def profile_correlations(sim_a: np.ndarray, sim_b: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """[n] each item's Spearman correlation between its similarities to every other item in A and
    in B (its own entry left out): does the item keep its place among all the others across the two
    models? Unlike a k-NN overlap it asks nothing of the order inside a block of near-identical items.
    With `columns`, its similarities to those items only (a background sample of all of them)."""
    n = len(sim_a)
    if columns is None:
        off = ~np.eye(n, dtype=bool)
        ranks = [rankdata(sim[off].reshape(n, n - 1), axis=1) for sim in (sim_a, sim_b)]
    else:
        own = np.arange(n)[:, None] == np.asarray(columns)[None, :]
        ranks = [rankdata(np.where(own, np.nan, sim[:, columns]), axis=1, nan_policy="omit") for sim in (sim_a, sim_b)]
    centred = [r - np.nanmean(r, axis=1, keepdims=True) for r in ranks]
    norms = np.sqrt(np.nansum(centred[0] ** 2, axis=1) * np.nansum(centred[1] ** 2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.nansum(centred[0] * centred[1], axis=1) / norms, 0.0)


def average_linkage_clusters(x: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster labels (1..n_clusters) of rows by average-linkage hierarchical clustering on cosine distance."""
    distance = np.clip(1.0 - (unit_rows(x) @ unit_rows(x).T)[np.triu_indices(len(x), k=1)], 0.0, 2.0)
    return fcluster(linkage(distance, method="average"), t=n_clusters, criterion="maxclust")


def cluster_enrichment(labels: np.ndarray, members: Sequence[int]) -> list[dict]:
    """Hypergeometric enrichment of `members` in each cluster, BH-adjusted over clusters; best first."""
    member_mask = np.zeros(len(labels), dtype=bool)
    member_mask[np.asarray(members)] = True
    total, hits = len(labels), int(member_mask.sum())
    rows = []
    for cluster in np.unique(labels):
        inside = labels == cluster
        overlap = int((inside & member_mask).sum())
        expected = inside.sum() * hits / total
        rows.append({"cluster": int(cluster), "size": int(inside.sum()), "overlap": overlap,
                     "expected": float(expected), "fold": float(overlap / expected),
                     "p": float(hypergeom.sf(overlap - 1, total, hits, int(inside.sum())))})
    for row, q in zip(rows, false_discovery_control([r["p"] for r in rows], method="bh"), strict=True):
        row["q"] = float(q)
    return sorted(rows, key=lambda r: (r["q"], -r["fold"]))



def best_cluster_p(labels: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """[n_sets] the smallest hypergeometric p over clusters of each row of `sets` (KD indices into
    `labels`): how concentrated the set is in its most enriched cluster."""
    clusters, sizes = np.unique(labels, return_counts=True)
    position = np.searchsorted(clusters, labels)
    overlap = np.zeros((len(sets), len(clusters)), dtype=int)
    np.add.at(overlap, (np.repeat(np.arange(len(sets)), sets.shape[1]), position[sets].ravel()), 1)
    p = hypergeom.sf(overlap - 1, len(labels), sets.shape[1], sizes[None, :])
    return np.where(overlap > 0, p, 1.0).min(axis=1)


def exact_p(null: np.ndarray, observed: float) -> float:
    """One-sided permutation p for 'observed is large': (1 + #null >= observed) / (1 + n)."""
    tolerance = 1e-12 * max(1.0, abs(observed))
    return float((1 + np.sum(null >= observed - tolerance)) / (1 + len(null)))


def random_sets(rng: np.random.Generator, candidates: Sequence[int], size: int, n: int) -> np.ndarray:
    """[n, size] sets drawn uniformly without replacement from `candidates`."""
    cand = np.asarray(candidates)
    keys = rng.random((n, len(cand)))
    return cand[np.argsort(keys, axis=1)[:, :size]]


def magnitude_strata(magnitude: np.ndarray, candidates: Sequence[int], stratum_size: int,
                     members: Sequence[int] | None = None) -> list[np.ndarray]:
    """`candidates` sorted by magnitude and cut into consecutive strata of about `stratum_size`.
    With `members`, neighbouring strata are merged until the members are at most half of each: a
    program whose KDs share one band of magnitude fills its strata, and a permutation within strata
    made of nothing but members draws the members themselves (no power, a constant null)."""
    cand = np.asarray(candidates)
    order = cand[np.argsort(magnitude[cand], kind="stable")]
    strata = np.array_split(order, max(1, round(len(order) / stratum_size)))
    if members is None:
        return strata
    return merge_crowded(strata, members)


def merge_crowded(strata: list[np.ndarray], members: Sequence[int], share: float = 0.5) -> list[np.ndarray]:
    """Consecutive `strata` merged (in order) until `members` make up at most `share` of each; where
    the members are more than `share` of everything, one stratum (a plain permutation)."""
    is_member = set(np.asarray(members).tolist())

    def crowded(stratum: np.ndarray) -> bool:
        return sum(int(k) in is_member for k in stratum) > share * len(stratum)

    merged: list[np.ndarray] = []
    current = np.array([], dtype=int)
    for stratum in strata:
        current = np.concatenate([current, stratum])
        if not crowded(current):
            merged.append(current)
            current = np.array([], dtype=int)
    if len(current):
        merged.append(current)
    while len(merged) > 1 and crowded(merged[-1]):      # a crowded top end joins the strata below it
        merged[-2:] = [np.concatenate(merged[-2:])]
    return merged


def stratified_sets(rng: np.random.Generator, strata: list[np.ndarray], members: Sequence[int], n: int) -> np.ndarray:
    """[n, |members|] sets with as many KDs from each stratum as the members have there, drawn
    from the whole stratum (members included): a conditional permutation of the labels."""
    where = {int(k): i for i, stratum in enumerate(strata) for k in stratum}
    counts = np.bincount([where[int(m)] for m in members], minlength=len(strata))
    blocks = [random_sets(rng, strata[i], int(c), n) for i, c in enumerate(counts) if c]
    return np.hstack(blocks)


def permutations_within(rng: np.random.Generator, strata: list[np.ndarray], n_items: int, n: int) -> np.ndarray:
    """[n, n_items] permutations that only move items within their stratum."""
    perms = np.tile(np.arange(n_items), (n, 1))
    for stratum in strata:
        perms[:, stratum] = random_sets(rng, stratum, len(stratum), n)
    return perms


def set_permutation_test(statistic: SetStatistic, members: Sequence[int], null_sets: np.ndarray,
                         many: Callable[[np.ndarray], np.ndarray] | None = None) -> PermutationResult:
    """Compare statistic(members) with the statistic on each row of `null_sets` (computed by `many`,
    the same statistic vectorised over sets, when given)."""
    observed = statistic(np.asarray(members))
    null = many(np.asarray(null_sets)) if many else np.array([statistic(row) for row in null_sets])
    return PermutationResult(observed, null, exact_p(null, observed))


def bootstrap_ci(statistic: SetStatistic, members: Sequence[int], rng: np.random.Generator,
                 n_boot: int = 1000, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile CI of statistic(resampled members), resampling members with replacement; None when
    no resample gives a value (n_boot 0, as calibration's null runs ask, or one distinct member).

    Resamples with fewer than two distinct members are skipped (a pairwise statistic
    is undefined on them).
    """
    idx = np.asarray(members)
    values = []
    for _ in range(n_boot):
        sample = rng.choice(idx, size=len(idx), replace=True)
        if len(np.unique(sample)) >= 2:
            values.append(statistic(sample))
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t CI of the mean of independent values (NaNs left out; None for fewer than two).
    The bootstraps of a mean of few values undercover (BCa 0.885 at 8 values, percentile 0.923 at
    12); t holds 0.92-0.98 (tests/test_coverage.py)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    half = float(t_dist.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return (float(values.mean()) - half, float(values.mean()) + half)


def bias_corrected_interval(estimate: float, replicates: Sequence[float], n_units: int,
                            level: float = 0.95) -> tuple[float, tuple[float, float]] | None:
    """(bias-corrected estimate, its Student-t interval) from bootstrap replicates over `n_units`
    resampled units (cell sets). A statistic of averaged cell sets (a cosine of mean shifts) is
    attenuated by the sets' noise, and the bootstrap sees that bias again: the estimate minus the
    replicates' mean bias, +- t(n - 1) times their standard deviation (times sqrt(n / (n - 1)), the
    bootstrap's small-sample shrinkage undone). The percentile interval covered 0.61 at 8 cell sets,
    this 0.93-0.95 (tests/test_coverage.py). None with fewer than two replicates."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2 or n_units < 2:
        return None
    corrected = 2 * float(estimate) - float(values.mean())
    half = float(t_dist.ppf(0.5 + level / 2, n_units - 1) * values.std(ddof=1) * np.sqrt(n_units / (n_units - 1)))
    return corrected, (corrected - half, corrected + half)


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """BH q-values; entries that are None or NaN (no test was run) stay None."""
    p = np.array([np.nan if v is None else v for v in p_values], dtype=float)
    tested = ~np.isnan(p)
    q: list[float | None] = [None] * len(p)
    if tested.any():
        for i, value in zip(np.flatnonzero(tested), false_discovery_control(p[tested], method="bh"), strict=True):
            q[i] = float(value)
    return q


def binomial_interval(n: int, rate: float, level: float = 0.95) -> tuple[int, int]:
    """Central interval of Binomial(n, rate) counts, for checking false-positive rates."""
    tail = (1 - level) / 2
    return int(binom.ppf(tail, n, rate)), int(binom.ppf(1 - tail, n, rate))
