"""What the KD-set checks share: their null models, sample sizes and how they describe them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import stats

Magnitude = Callable[[], np.ndarray]


@dataclass(frozen=True)
class NullParams:
    """Parameters every KD-set test shares: its null, its sample sizes and its seed."""

    null_model: Literal["magnitude_stratified", "label_permutation"] = "magnitude_stratified"
    stratum_size: int = 10                 # KDs per stratum of similar effect magnitude
    n_permutations: int = 2000
    n_bootstrap: int = 1000
    min_members: int = 3                   # fewer pathway KDs in the model -> inconclusive
    on_unknown: Literal["error", "drop"] = "error"
    cell_orderings: int | None = None      # for order-sensitive models; default --cell-orderings
    seed: int = 0

    LIMITS = {"stratum_size": (2, 100_000), "n_permutations": (99, 1_000_000), "n_bootstrap": (99, 1_000_000),
              "min_members": (2, 100_000), "cell_set_size": (2, 1_000_000), "k": (1, 1000),
              "cell_orderings": (1, 10_000), "n_cell_sets": (2, 10_000), "n_clusters": (2, 10_000),
              "layer": (0, 10_000)}


def null_sets(p: NullParams, members: np.ndarray, n_kds: int, magnitude: Magnitude) -> np.ndarray:
    """[n_permutations, |members|] random KD sets under the hypothesis's null model."""
    rng = np.random.default_rng(p.seed)
    if p.null_model == "label_permutation":
        return stats.random_sets(rng, np.arange(n_kds), len(members), p.n_permutations)
    strata = stats.magnitude_strata(magnitude(), np.arange(n_kds), p.stratum_size)
    return stats.stratified_sets(rng, strata, members, p.n_permutations)


def relabelings(p: NullParams, n_kds: int, magnitude: Magnitude) -> np.ndarray:
    """[n_permutations, n_kds] relabelings of a second model's KDs under the null model."""
    rng = np.random.default_rng(p.seed)
    if p.null_model == "label_permutation":
        return stats.permutations_within(rng, [np.arange(n_kds)], n_kds, p.n_permutations)
    strata = stats.magnitude_strata(magnitude(), np.arange(n_kds), p.stratum_size)
    return stats.permutations_within(rng, strata, n_kds, p.n_permutations)


def set_null_text(p: NullParams, n_members: int, n_kds: int, magnitude: str, unit: str = "KDs") -> str:
    if p.null_model == "label_permutation":
        return f"label permutation: {p.n_permutations} random sets of {n_members} of the {n_kds} {unit}"
    return (f"magnitude-stratified permutation: {p.n_permutations} random sets of {n_members} {unit} with the "
            f"members' count in each stratum of ~{p.stratum_size} {unit} of similar {magnitude}")


def relabel_text(p: NullParams, second: str, n_kds: int, magnitude: str) -> str:
    where = "among all" if p.null_model == "label_permutation" else \
        f"within strata of ~{p.stratum_size} KDs of similar {magnitude}, among"
    return f"{p.n_permutations} relabelings of {second}'s KDs {where} {n_kds} shared KDs"


def histogram(null: np.ndarray, observed: float, bins: int = 30) -> dict:
    """A compact null histogram (for the report's plot)."""
    counts, edges = np.histogram(null, bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "observed": observed}


def percentile_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def similarity_heatmap(similarity: Callable[[list[int]], np.ndarray], names: list[str], members: np.ndarray,
                       groups: dict[str, tuple[str, ...]], pathway: str, limit: int = 40) -> dict:
    """A KD x KD (or gene x gene) similarity block for the report, ordered by pathway: the
    pathway's members first, then a few members of each other panel, then unassigned names.
    `similarity(indices)` gives the block for those rows of `names`."""
    shown = [int(i) for i in members[:limit]]
    labels = ["pathway"] * len(shown)
    index = {name: i for i, name in enumerate(names)}
    others = {g: [index[n] for n in group if n in index] for g, group in groups.items() if g != pathway}
    others = {g: found for g, found in others.items() if set(found) - set(shown)}
    share = max(2, (limit - len(shown)) // (len(others) + 1))
    for group, found in others.items():
        taken = [i for i in found if i not in shown][: min(share, limit - len(shown))]
        shown += taken
        labels += [group] * len(taken)
    rest = [i for i in range(len(names)) if i not in set(shown)]
    step = max(1, len(rest) // max(limit - len(shown), 1))
    filler = rest[::step][: limit - len(shown)]
    shown, labels = shown + filler, labels + ["other"] * len(filler)
    block = np.round(similarity(shown), 2)
    return {"names": [names[i] for i in shown], "groups": labels, "values": block.tolist()}
