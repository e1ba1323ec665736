"""Representation checks (Option 1, NB01; Option 5 part 1): is pathway biology organised in what
the model computes? Each works on one representation, a per-KD shift from the control:

  output_shift  ΔY, the mean predicted expression change (gene space)
  layer         the mean change of the backbone's hidden state after block `layer`
  sae           the mean change of SAE features of that hidden state (the registry's SAE)

representation_coherence     within-pathway cosine - all-pairs cosine (the notes' rule: p < 0.05
                             and effect > 0.1); the effect and its CI bias-corrected by the
                             bootstrap over cell sets (stats.bias_corrected_interval)
representation_clusters      average-linkage clusters of the KDs; the pathway's best cluster
                             (smallest hypergeometric p), against random KD sets' best clusters;
                             the enrichment table is reported
representation_consistency   across a model pair: the Spearman r of each pathway KD's similarities
                             to every other KD in the two models (or, `statistic: neighbour_overlap`,
                             the Jaccard overlap of its k nearest KDs), against random KD sets of the
                             same two models

Each runs over the KDs the models learned (common.scope), and its null keeps the members' count in
strata of KDs of similar magnitude: KDs a model did not learn, and weak ones, share a generic
response and neighbour each other in any model, which a plain permutation reads as coherence.

Comparing the same KD's ΔY directly across models is not offered: a KD lowers its own gene,
and the decoder spreads that change the same way, in every model, so even KDs without any
program "agree" (demo decoy: cosine 0.23 with the own gene left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from core.errors import Inconclusive
from probes.audit import random_orderings
from probes.representations import Readout, cell_sets, per_set_shifts

from .. import stats
from ..families import Card, Check, Family
from ..verdicts import Evidence, PassRule
from . import common
from .common import NullParams

if TYPE_CHECKING:
    from fixtures.arc_state import LoadedModel

    from ..cases import Case
    from ..session import RunContext

KIND = {"output_shift": "output", "layer": "layer", "sae": "sae"}
# the best cluster's fold is chosen among clusters and bounded above (a cluster of exactly the members), so
# it has no interval with its nominal coverage: the percentile bootstrap of cell sets covered 0.78-0.88 of
# the true fold (tests/test_coverage.py). The card shows how often resampled cells reproduce the fold.
NO_FOLD_CI = ("no interval: the best cluster's fold is selected among clusters and bounded above, and the "
              "bootstrap of cell sets covered it 78-88% of the time; see the share of resamples that reproduce it")


@dataclass(frozen=True)
class RepresentationParams(NullParams):
    representation: Literal["output_shift", "layer", "sae"] = "output_shift"
    layer: int | None = None               # for `layer`; `sae` reads the SAE's own layer
    n_cell_sets: int = 8                   # cell sets averaged (and bootstrapped over)
    cell_set_size: int | None = None       # default: the model's cell_set_len
    n_bootstrap: int = 500


@dataclass(frozen=True)
class ClusterParams(RepresentationParams):
    n_clusters: int = 12
    n_bootstrap: int = 200


@dataclass(frozen=True)
class ConsistencyParams(RepresentationParams):
    statistic: common.ConsistencyStatistic = "profile_correlation"
    k: int = 5                             # nearest KDs compared, for statistic: neighbour_overlap


def validate(p: RepresentationParams) -> str | None:
    if p.representation == "layer" and p.layer is None:
        return "representation 'layer' needs 'layer: N' (the backbone block whose output to read)"
    if p.representation != "layer" and p.layer is not None:
        return "'layer' applies to representation 'layer' only (an SAE reads the layer the registry gives it)"
    return None


def coherence(case: Case, ctx: RunContext) -> Evidence:
    p: RepresentationParams = case.spec.params
    model, per_set, label = _representation(ctx, case.axes["model"], p)
    scope = _scope(case, ctx, [model.name], model.kd_names, model.gene_universe, p)
    per_set = per_set[:, scope.rows]
    members, x = scope.members, per_set.mean(axis=0)
    null_sets = common.null_sets(p, members, len(x), lambda: np.linalg.norm(x, axis=1))
    found = common.set_coherence(members, null_sets, vectors=x, related=scope.related)
    within, background = found.within, found.background
    rng = np.random.default_rng(p.seed)
    pairs = None if scope.related is None else stats.upper_pairs(scope.related)
    boot = [np.subtract(*stats.within_and_background(per_set[rng.integers(0, len(per_set), len(per_set))].mean(0),
                                                    members, scope.related, pairs)) for _ in range(p.n_bootstrap)]
    # the effect is the bias-corrected estimate, so that it and its interval are of the same number
    corrected = stats.bias_corrected_interval(within - background, boot, len(per_set))
    effect, ci = corrected if corrected else (within - background, None)
    return Evidence(
        statistic=f"mean within-pathway cosine - {common.background_text(scope.related)} of {label}",
        value=within - background, effect=effect, ci=ci, p=found.test.p,
        n=_sizes(p, scope, model, ctx),
        null=common.set_null_text(p, len(members), len(x), f"{label} norm") + common.related_text(scope.related),
        seed=p.seed, details=found.details(common.similarity_heatmap(
            lambda idx: stats.cosine_similarity_matrix(x[idx]), scope.kds, members,
            {n: panel.kds for n, panel in case.spec.panels.items()}, case.axes["pathway"])) | {
            "null_mean_within": found.test.null_mean, "cell_set_bias": found.excess - effect,
            "map": common.pca_map(x, scope.kds, {n: panel.kds for n, panel in case.spec.panels.items()},
                                  case.axes["pathway"]),
            "members": scope.present, "dropped": scope.dropped, "learned": scope.learned})


def clusters(case: Case, ctx: RunContext) -> Evidence:
    """The hypergeometric p of one cluster assumes the KDs fall into clusters independently of being
    alike; a crowd of KDs the model does not tell apart fills one cluster whatever its labels. So the
    test compares the pathway's best cluster p with that of random KD sets matched like the members."""
    p: ClusterParams = case.spec.params
    model, per_set, label = _representation(ctx, case.axes["model"], p)
    scope = _scope(case, ctx, [model.name], model.kd_names, model.gene_universe, p)
    per_set = per_set[:, scope.rows]
    members, x = scope.members, per_set.mean(axis=0)
    if p.n_clusters >= len(scope.kds):
        raise Inconclusive(f"n_clusters {p.n_clusters} must be below the number of KDs tested ({len(scope.kds)})")
    labels = stats.average_linkage_clusters(x, p.n_clusters)
    table = stats.cluster_enrichment(labels, members)
    best = table[0]
    null_sets = common.null_sets(p, members, len(x), lambda: np.linalg.norm(x, axis=1))
    observed = stats.best_cluster_p(labels, members[None])[0]
    null = stats.best_cluster_p(labels, null_sets)
    folds = [stats.cluster_enrichment(labels_b, members)[0]["fold"]
             for labels_b in _bootstrap_clusterings(ctx, case.axes["model"], per_set, scope, p)]
    return Evidence(
        statistic=f"fold enrichment of the pathway in its best cluster of {label}", value=best["fold"],
        effect=best["fold"] - 1, ci=None, p=stats.exact_p(-null, -observed),
        n=scope.sizes | {"clusters": p.n_clusters, "cell_sets": p.n_cell_sets, "permutations": p.n_permutations,
                         "bootstrap": p.n_bootstrap},
        null=common.set_null_text(p, len(members), len(x), f"{label} norm")
        + f"; statistic: the smallest hypergeometric p over the {len(table)} clusters (average linkage, cosine "
          "distance)",
        seed=p.seed, details={"best_cluster": best["cluster"], "best_hypergeometric_p": observed,
                              "no_ci": NO_FOLD_CI,
                              "stability": {"resamples": len(folds),
                                            "same_fold": float(np.mean(np.isclose(folds, best["fold"])))
                                            if folds else None},
                              "members": scope.present, "dropped": scope.dropped, "learned": scope.learned,
                              "null_histogram": common.histogram(-np.log10(null), -np.log10(observed)),
                              "table": [r for r in table if r["overlap"] > 0]})


def consistency(case: Case, ctx: RunContext) -> Evidence:
    """The null keeps both models as they are and draws random KD sets matched like the members: a
    pass says the models agree on this pathway's neighbourhoods more than on other KDs'."""
    p: ConsistencyParams = case.spec.params
    (model_a, set_a, label), (model_b, set_b, _) = (_representation(ctx, n, p) for n in case.axes["model_pair"])
    shared = [k for k in model_a.kd_names if k in set(model_b.kd_names)]
    scope = _scope(case, ctx, [model_a.name, model_b.name], shared, model_a.gene_universe | model_b.gene_universe, p)
    members = scope.members
    x_a = set_a.mean(0)[[model_a.kd_names.index(k) for k in scope.kds]]
    x_b = set_b.mean(0)[[model_b.kd_names.index(k) for k in scope.kds]]
    sims = (stats.cosine_similarity_matrix(x_a), stats.cosine_similarity_matrix(x_b))
    magnitude = lambda: sum(np.argsort(np.argsort(np.linalg.norm(x, axis=1))) for x in (x_a, x_b))  # noqa: E731
    result, ci = common.consistency_test(sims, p.statistic, p.k, members,
                                         common.null_sets(p, members, len(scope.kds), magnitude), scope.background)
    return Evidence(
        statistic=common.consistency_text(p.statistic, p.k, label),
        value=result.observed, effect=result.observed - result.null_mean, ci=ci, p=result.p,
        n=scope.sizes | {"shared_kds": len(shared), "permutations": p.n_permutations, "cell_sets": p.n_cell_sets},
        null=common.set_null_text(p, len(members), len(scope.kds), f"{label} norm in the two models")
        + "; both models kept as they are",
        seed=p.seed, details={"null_mean": result.null_mean, "z": result.z, "members": scope.present,
                              "dropped": scope.dropped, "learned": scope.learned,
                              "null_histogram": common.histogram(result.null, result.observed)})


def _bootstrap_clusterings(ctx: RunContext, name: str, per_set: np.ndarray, scope: common.Scope,
                           p: ClusterParams) -> list[np.ndarray]:
    """Cluster labels of the KDs for each bootstrap resample of the cell sets (shared by all pathways
    that run over the same KDs)."""
    def compute() -> list[np.ndarray]:
        rng = np.random.default_rng(p.seed)
        return [stats.average_linkage_clusters(per_set[rng.integers(0, len(per_set), len(per_set))].mean(0),
                                               p.n_clusters) for _ in range(p.n_bootstrap)]

    return ctx.memo(("cluster_bootstrap", name, p.representation, p.layer, p.n_cell_sets, p.cell_set_size,
                     p.n_clusters, p.n_bootstrap, p.seed, p.cell_orderings, tuple(scope.kds)), compute)


def _representation(ctx: RunContext, name: str, p: RepresentationParams) -> tuple[LoadedModel, np.ndarray, str]:
    """The model, its [n_sets, n_kds, D] per-set shifts (KDs in kd_names order) and a label."""
    model = ctx.model(name)
    layer = ctx.sae(name)[1] if p.representation == "sae" else p.layer
    size = p.cell_set_size or model.cell_set_len
    per_set = representations(ctx, name, KIND[p.representation], layer, p.n_cell_sets, size, p.seed,
                              ctx.n_orderings(name, p.cell_orderings))
    rows = [model.pert_index(k) for k in model.kd_names]
    label = {"output_shift": "ΔY", "layer": f"layer-{layer} shift", "sae": f"SAE-feature shift (layer {layer})"}
    return model, per_set[:, rows, :], label[p.representation]


def representations(ctx: RunContext, name: str, kind: str, layer: int | None, n_sets: int, size: int, seed: int,
                    n_orderings: int) -> np.ndarray:
    """[n_sets, n_perts, D] per-set shifts of the `kind` readout (see probes/representations.py)."""
    model = ctx.model(name)

    def compute() -> np.ndarray:
        sae = ctx.sae(name)[0] if kind == "sae" else None
        sets = cell_sets(model.cells, n_sets, size, seed)
        return per_set_shifts(model.module, model.pert_onehots, model.pert_index(model.control_pert), sets,
                              Readout(kind, layer, sae), random_orderings(size, n_orderings, seed),
                              progress=ctx.reporter(f"{kind} readouts of {name} ({n_sets} cell sets, "
                                                    f"{n_orderings} ordering(s))", "set orderings"))

    return ctx.stored("representations", name, compute, readout=kind, layer=layer, sets=n_sets, size=size,
                      seed=seed, orderings=n_orderings)


def _scope(case: Case, ctx: RunContext, models: list[str], available, universe, p: RepresentationParams):
    panel = case.spec.panels[case.axes["pathway"]]
    return common.scope(ctx, models, panel.kds, panel, available, universe, p)


def _sizes(p: RepresentationParams, scope: common.Scope, model: LoadedModel, ctx: RunContext) -> dict[str, int]:
    return scope.sizes | {"cell_sets": p.n_cell_sets, "cells_per_set": p.cell_set_size or model.cell_set_len,
                          "cell_orderings": ctx.n_orderings(model.name, p.cell_orderings),
                          "permutations": p.n_permutations, "bootstrap": p.n_bootstrap}


def _effect_rule(_params: RepresentationParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=0.1)


def _consistency_rule(_params: ConsistencyParams) -> PassRule:
    """The notes' effect bar (0.1) is one of cosines; a consistency's effect is a difference of mean
    rank correlations (or overlaps) from its null's, whose size the test's p already weighs."""
    return PassRule(p_below=0.05, effect_above=0.0)


FAMILY = Family("representation", (
        Check("representation_coherence", ("model", "pathway"), RepresentationParams, coherence,
              "pathway KDs closer in a representation (ΔY, layer, SAE) than random KD sets", _effect_rule, validate,
              side="organized"),
        Check("representation_clusters", ("model", "pathway"), ClusterParams, clusters,
              "pathway KDs enriched in one cluster of a representation", validate=validate, side="organized"),
        Check("representation_consistency", ("model_pair", "pathway"), ConsistencyParams, consistency,
              "pathway KDs keep their similarity to every other KD in a representation across two models",
              _consistency_rule, validate),
    ), Card(settings=("representation", "layer", "cell_set_size", "null_model")))
