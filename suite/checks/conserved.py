"""Conserved SAE features across two models (NB09: "211 SAE features with Spearman r > 0.5"), and
whether a pathway's KDs are what drives them (Options 1 and 2 should mirror it).

Each model's SAE features get an activation profile over the KDs both models learned: the mean
shift of the feature under each KD from the control (the `sae` representation of
suite/checks/representation.py). Features of the two SAEs are matched one to one by the Spearman
r of their profiles (Hungarian assignment, or each feature's best match), and a matched pair is
conserved when r exceeds `threshold` (the notes' 0.5).

sae_conserved_features   per model pair: the count of conserved pairs against the same count after
                         permuting the KD labels of one model within strata of KDs of similar
                         magnitude (the matching redone each time), and
                         above the count on `reinit_copies` pairs of re-initialised copies. Effect:
                         the count minus the null's mean, with a jackknife-over-KDs interval.
sae_conserved_drivers    per model pair and pathway: each KD's driving share is its part of what moves
                         the conserved pairs (its |shift| over all KDs' summed |shift|, averaged over
                         the two models and the pairs); is the pathway's mean share above that of
                         random KD sets of similar effect magnitude? Effect: the members' mean minus
                         all KDs' mean (1/K), Student-t CI over the members. The card lists the top
                         pairs with the `n_drivers` KDs that move each most.

A feature's profile over KDs is fixed by the model, so the KD is the unit of replication: the null
permutes KD labels (whole model) or draws KD sets (pathway), never features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from core.errors import Inconclusive

from .. import matrix_tests, stats
from ..families import Card, Check, Family
from ..session import reinitialised_name
from ..verdicts import Evidence, PassRule
from . import common
from .common import NullParams
from .representation import representations

if TYPE_CHECKING:
    from ..cases import Case
    from ..session import RunContext


@dataclass(frozen=True)
class ConservedParams:
    """What both conserved-feature checks read: the profiles, the matching and the threshold."""

    threshold: float = 0.5                 # Spearman r above which a matched pair is conserved (NB09)
    matching: Literal["hungarian", "best"] = "hungarian"
    n_cell_sets: int = 8                   # control-cell sets the profiles average over
    cell_set_size: int | None = None
    cell_orderings: int | None = None
    n_permutations: int = 199
    seed: int = 0

    LIMITS = {"threshold": (-1.0, 1.0), "n_cell_sets": (1, 10_000), "cell_set_size": (2, 1_000_000),
              "cell_orderings": (1, 10_000), "n_permutations": (99, 1_000_000), "seed": (0, 2 ** 32 - 1)}


@dataclass(frozen=True)
class FeaturesParams(ConservedParams):
    reinit_copies: int = 2                 # pairs of re-initialised copies the count must beat (0: none)
    # KD labels permuted within strata of KDs of similar effect magnitude: strong KDs move every feature
    # of both models, and the Spearman r of two profiles that share which KDs are extreme spreads wider,
    # so a plain permutation passed 42 of 400 independent model pairs, the stratified one 15
    # (tests/test_sae_conserved.py)
    null_model: common.NullModel = "magnitude_stratified"
    stratum_size: int = 10

    LIMITS = {**ConservedParams.LIMITS, "reinit_copies": (0, 100), "stratum_size": (2, 100_000)}


@dataclass(frozen=True)
class DriversParams(ConservedParams):
    n_drivers: int = 3                     # the driving KDs the card lists for each conserved pair
    min_conserved: int = 5                 # fewer conserved pairs: nothing to attribute (inconclusive)
    null_model: common.NullModel = "magnitude_stratified"
    stratum_size: int = 10
    min_members: int = 3
    on_unknown: Literal["error", "drop"] = "error"

    LIMITS = {**ConservedParams.LIMITS, **NullParams.LIMITS, "n_drivers": (1, 10_000), "min_conserved": (1, 100_000)}


# ---- the numbers (pure functions) ----------------------------------------------------------------

def profile_ranks(profiles: np.ndarray) -> np.ndarray:
    """[K, F] -> each feature's (column's) ranks over the KDs, centred and scaled to unit norm;
    a feature constant over the KDs gets NaN (its Spearman r is undefined)."""
    ranks = rankdata(profiles, axis=0)
    centred = ranks - ranks.mean(axis=0)
    norm = np.linalg.norm(centred, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


def spearman_matrix(ranks_a: np.ndarray, ranks_b: np.ndarray) -> np.ndarray:
    """[Fa, Fb] Spearman r between every feature of one model and every feature of the other; -1 for
    a feature constant over the KDs (a jackknife replicate can leave one so), which matches nothing."""
    r = np.nan_to_num(ranks_a, nan=0.0).T @ np.nan_to_num(ranks_b, nan=0.0)
    undefined = np.isnan(ranks_a).any(axis=0)[:, None] | np.isnan(ranks_b).any(axis=0)[None, :]
    return np.where(undefined, -1.0, r)


def match_features(r: np.ndarray, matching: str) -> tuple[np.ndarray, np.ndarray]:
    """(features of A, their matched features of B): one to one by the Hungarian assignment that
    maximises the summed r, or each feature of A's best feature of B (several may share one)."""
    if matching == "best":
        return np.arange(r.shape[0]), np.argmax(r, axis=1)
    return linear_sum_assignment(-r)


def conserved_count(ranks_a: np.ndarray, ranks_b: np.ndarray, threshold: float, matching: str) -> int:
    r = spearman_matrix(ranks_a, ranks_b)
    rows, cols = match_features(r, matching)
    return int((r[rows, cols] > threshold).sum())


def driver_scores(profiles_a: np.ndarray, profiles_b: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """[K] each KD's share of what moves the conserved `pairs` [(feature of A, feature of B)]: per
    pair, the KD's |shift| over all KDs' summed |shift|, averaged over the two models and the pairs
    (1/K each when every KD moves every pair alike; a KD may switch a feature on or off)."""
    shares = [np.abs(x) / np.abs(x).sum(axis=0, keepdims=True) for x in (profiles_a[:, pairs[:, 0]],
                                                                          profiles_b[:, pairs[:, 1]])]
    return (shares[0] + shares[1]).mean(axis=1) / 2


def _magnitude(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K] each KD's effect magnitude in the two models: the sum of its ranks by profile norm."""
    return rankdata(np.linalg.norm(a, axis=1)) + rankdata(np.linalg.norm(b, axis=1))


def _joint_ranks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return rankdata(np.abs(a)) + rankdata(np.abs(b))


# ---- the checks -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profiles:
    kds: list[str]             # the KDs both models learned
    a: np.ndarray              # [K, Fa] model A's features that vary over those KDs
    b: np.ndarray              # [K, Fb]
    features_a: np.ndarray     # their indices in each SAE
    features_b: np.ndarray

    def matched(self, p: ConservedParams) -> tuple[np.ndarray, np.ndarray]:
        """[pairs] matched (row of a, row of b) and their Spearman r."""
        r = spearman_matrix(profile_ranks(self.a), profile_ranks(self.b))
        rows, cols = match_features(r, p.matching)
        return np.column_stack([rows, cols]), r[rows, cols]


def conserved_features(case: Case, ctx: RunContext) -> Evidence:
    p: FeaturesParams = case.spec.params
    pair = case.axes["model_pair"]
    found = _profiles(ctx, pair, p, _learned_by_both(ctx, pair))
    ranks_a, ranks_b = profile_ranks(found.a), profile_ranks(found.b)
    pairs, r = found.matched(p)
    observed = int((r > p.threshold).sum())
    rng, n = np.random.default_rng(p.seed), len(found.kds)
    strata = [np.arange(n)] if p.null_model == "label_permutation" else \
        stats.magnitude_strata(_magnitude(found.a, found.b), np.arange(n), p.stratum_size)
    null = np.array([conserved_count(ranks_a, ranks_b[order], p.threshold, p.matching)
                     for order in stats.permutations_within(rng, strata, n, p.n_permutations)])
    # jackknife over the KDs, each replicate re-ranked and re-matched; its interval is of the count,
    # and the null mean is a fixed reference, so the effect's interval is the count's shifted by it
    replicates = [conserved_count(profile_ranks(np.delete(found.a, k, 0)), profile_ranks(np.delete(found.b, k, 0)),
                                  p.threshold, p.matching) for k in range(len(found.kds))]
    interval = matrix_tests.jackknife_interval(float(observed), replicates)
    ci = None if interval is None else (interval[0] - null.mean(), interval[1] - null.mean())
    evidence = Evidence(
        statistic=f"conserved SAE-feature pairs (matched by {p.matching} Spearman r of KD profiles, r > {p.threshold})",
        value=float(observed), effect=float(observed - null.mean()), ci=ci, p=stats.exact_p(null, observed),
        seed=p.seed, n={"kds": len(found.kds), "features_a": found.a.shape[1], "features_b": found.b.shape[1],
                        "permutations": p.n_permutations},
        null=f"{p.n_permutations} permutations of the KD labels of {pair[1]}'s profiles"
             + ("" if p.null_model == "label_permutation" else
                f" within strata of ~{p.stratum_size} KDs of similar SAE-profile norm (rank sum of the two models)")
             + ", the matching redone each time",
        details={"conserved": int(observed), "null_mean": float(null.mean()), "pairs": _top_pairs(found, pairs, r, 3),
                 "null_histogram": common.histogram(null, float(observed))})
    drawn = (_copy_count(ctx, pair, i, p) for i in range(p.reinit_copies))
    return common.beat_copies(evidence, evidence.value, drawn, p.reinit_copies, " and ".join(pair))


def _copy_count(ctx: RunContext, pair: tuple[str, str], copy: int, p: FeaturesParams) -> float:
    copies = tuple(reinitialised_name(name, copy) for name in pair)
    found = _profiles(ctx, copies, p, _learned_by_both(ctx, pair))
    return float(conserved_count(profile_ranks(found.a), profile_ranks(found.b), p.threshold, p.matching))


def conserved_drivers(case: Case, ctx: RunContext) -> Evidence:
    p: DriversParams = case.spec.params
    pair = case.axes["model_pair"]
    panel = case.spec.panels[case.axes["pathway"]]
    models = [ctx.model(n) for n in pair]
    shared = [k for k in models[0].kd_names if k in set(models[1].kd_names)]
    scope = common.scope(ctx, list(pair), panel.kds, panel, shared, models[0].gene_universe | models[1].gene_universe,
                         p)
    found = _profiles(ctx, pair, p, scope.kds)       # the KDs both models learned, as the whole-model check
    # one matching per model pair and setting, whichever pathway asks (a Hungarian assignment each)
    matched, r = ctx.memo(("sae_matching", pair, tuple(found.kds), p.matching, p.n_cell_sets, p.cell_set_size,
                           p.seed, p.cell_orderings), lambda: found.matched(p))
    conserved = matched[r > p.threshold]
    if len(conserved) < p.min_conserved:
        raise Inconclusive(f"only {len(conserved)} SAE-feature pairs of {pair[0]} and {pair[1]} are conserved (r > "
                           f"{p.threshold}; need {p.min_conserved}): no conserved features to attribute to KDs")
    a, b = found.a, found.b
    scores = driver_scores(a, b, conserved)
    members = scope.members
    null_sets = common.null_sets(p, members, len(scope.kds), lambda: _magnitude(a, b))
    test = stats.set_permutation_test(lambda s: float(scores[s].mean()), members, null_sets,
                                      lambda sets: scores[sets].mean(axis=1))
    everyone = float(scores.mean())
    table = sorted(({"kd": scope.kds[i], "share_x_kds": float(scores[i] * len(scores))} for i in members),
                   key=lambda row: -row["share_x_kds"])
    return Evidence(
        statistic="mean share of the pathway's KDs in what moves the conserved SAE-feature pairs (|shift| over "
                  "all KDs' |shift|, both models)",
        value=test.observed, effect=test.observed - everyone, ci=stats.mean_ci(scores[members] - everyone),
        p=test.p, seed=p.seed,
        n=scope.sizes | {"conserved_pairs": len(conserved), "permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), len(scope.kds), "SAE-profile norm (rank sum of the two models)"),
        details={"mean_all_kds": everyone, "table": table,
                 "pairs": _top_pairs(found, matched, r, p.n_drivers),
                 "members": scope.present, "dropped": scope.dropped, "learned": scope.learned,
                 "null_histogram": common.histogram(test.null, test.observed)})


def _top_pairs(found: Profiles, matched: np.ndarray, r: np.ndarray, n_drivers: int, limit: int = 10) -> list[dict]:
    """The most conserved pairs for the card, with the KDs that drive each."""
    rows = []
    for i in np.argsort(-r, kind="stable")[:limit]:
        a, b = matched[i]
        joint = _joint_ranks(found.a[:, a], found.b[:, b])
        drivers = [found.kds[j] for j in np.argsort(-joint, kind="stable")[:n_drivers]]
        rows.append({"feature_a": int(found.features_a[a]), "feature_b": int(found.features_b[b]), "r": float(r[i]),
                     "drivers": ", ".join(drivers)})
    return rows


def _learned_by_both(ctx: RunContext, pair: tuple[str, str]) -> list[str]:
    """The KDs of both models that both learned (suite/learnedness.py): a KD a model did not learn gets
    its generic response, and generic responses are alike in any two models."""
    models, tables = [ctx.model(n) for n in pair], [ctx.learnedness(n) for n in pair]
    usable = [set(np.asarray(t.kds)[t.usable].tolist()) for t in tables]
    return [k for k in models[0].kd_names if k in set(models[1].kd_names) and all(k in u for u in usable)]


def _profiles(ctx: RunContext, pair: tuple[str, str], p: ConservedParams, kds: list[str]) -> Profiles:
    """Both models' SAE-feature profiles over `kds` (re-initialised copies are probed on the trained
    models' KDs), the features constant over them left out."""
    if len(kds) < 8:
        raise Inconclusive(f"{pair[0]} and {pair[1]} share only {len(kds)} learned KDs: too few profiles to match "
                           "features on")
    profiles = []
    for name in pair:
        model = ctx.model(name)
        size = p.cell_set_size or model.cell_set_len
        per_set = representations(ctx, name, "sae", ctx.sae(name)[1], p.n_cell_sets, size, p.seed,
                                  ctx.n_orderings(name, p.cell_orderings))
        mean = per_set.mean(axis=0)[[model.pert_index(k) for k in kds]]
        varies = np.flatnonzero(np.ptp(mean, axis=0) > 0)
        if not len(varies):
            raise Inconclusive(f"no SAE feature of {name} varies over the KDs")
        profiles.append((mean[:, varies], varies))
    (a, features_a), (b, features_b) = profiles
    return Profiles(list(kds), a, b, features_a, features_b)


def _drivers_rule(_params: DriversParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=0.0)


FAMILY = Family("sae_conserved", (
        Check("sae_conserved_features", ("model_pair",), FeaturesParams, conserved_features,
              "more SAE features of two models share their KD profile (Spearman r > 0.5) than under permuted KD "
              "labels, and than re-initialised copies share", validate=common.copies_problem),
        Check("sae_conserved_drivers", ("model_pair", "pathway"), DriversParams, conserved_drivers,
              "the pathway's KDs drive the two models' conserved SAE features more than random KDs do",
              _drivers_rule, side="organized"),
    ), Card(settings=("threshold", "matching", "n_drivers"), partial="conserved_card.html.j2"))
