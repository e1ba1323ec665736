"""Routing checks (Option 5, NB05–NB10): do KDs route through dY/d(pert_repr) the way their outputs
and their pathways say they should?

routing_output_correlation  Mantel: pairwise ΔY cosine vs pairwise Jacobian cosine (across-KD mean
                            removed) over all KD pairs; the seeds' rule r > 0.3, and p < 0.05, and r
                            above that of every re-initialised copy of the model
routing_cluster_sharing     KDs in one ΔY cluster (average linkage) have more similar Jacobians than
                            KDs in different clusters; cluster labels permuted; above every
                            re-initialised copy
routing_axes                top SVD axes of the centred Jacobian stack: do the pathway's KDs separate
                            by their scores (`by: kd_scores`, AUROC), or do its genes carry an axis's
                            loading (`by: gene_loadings`, fold enrichment)? Best of `n_axes`, in the null too
routing_divergence          NB05: one-hot Jacobians of a KD in two models differ more for the pathway's
                            KDs than for KDs of similar effect magnitude ("divergence is pathway-specific")
routing_consistency         NB08: per-KD correlation of one-hot Jacobians between two models is higher for
                            the pathway's KDs than for KDs of similar effect magnitude
routing_stability           NB09/NB10: a whole-model statistic re-run under other cell samplings and
                            cell-set sizes; passes when every setting reaches the default setting's verdict

Selectivity. The two whole-model statistics come out about as high on a re-initialised copy of the
model (same architecture, weights re-drawn from their initialisation; fixtures/reinit.py) as on the
trained model: a routing-output correlation above 0.3 comes with the architecture. A pass therefore
also needs the statistic to beat the same statistic on `reinit_copies` re-initialised copies (the
control-task idea of probing research); the card shows the copies' values and the margin.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from core.errors import Inconclusive
from probes.audit import random_orderings
from probes.embeddings import CELL_SAMPLINGS, select_cells
from probes.routing import (
    RoutingComparison,
    Sketch,
    centered_cosine,
    compare_onehot_routing,
    compare_sketched_routing,
    direction_groups,
    encoder_jacobians,
    gram_cosine,
    group_grams,
    jackknife_se,
    kd_chunk,
    onehot_tangents,
    pert_jacobians,
    sketch_directions,
    streaming_gram,
    svd_axes,
)

from .. import matrix_tests, stats
from ..families import Card, Check, Family
from ..session import pert_reprs, reinitialised_name, require_finite
from ..verdicts import Evidence, PassRule, decide
from . import common
from .common import NullModel, NullParams, resolve_members

if TYPE_CHECKING:
    from fixtures.arc_state import LoadedModel

    from ..cases import Case
    from ..session import RunContext


@dataclass(frozen=True)
class RoutingParams:
    """What every routing check reads: the cells its Jacobians are taken on, and its permutations.

    `directions`: the Jacobians are taken along that many seeded random directions (`sketch`) of
    pert_repr (of the shared KD vocabulary for the two-model checks) instead of all of them, which
    estimates their inner products without bias (Hutchinson); the card gives the estimator's
    jackknife standard error. `all`, or a number not below the width, computes them exactly."""

    n_permutations: int = 999
    cell_set_size: int | None = None            # default: the model's cell_set_len
    cell_sampling: Literal["random", "stratified", "top_magnitude"] = "random"
    cell_orderings: int | None = None           # for order-sensitive models; default --cell-orderings
    directions: int | Literal["all"] = 64
    sketch: Sketch = "rademacher"
    seed: int = 0

    LIMITS = {**NullParams.LIMITS, "directions": (2, 1_000_000)}


@dataclass(frozen=True)
class SelectiveParams(RoutingParams):
    """The whole-model checks, which must beat re-initialised copies of the model."""

    reinit_copies: int = 3                      # re-initialised copies to beat (0: none)

    LIMITS = {**RoutingParams.LIMITS, "reinit_copies": (0, 100)}


@dataclass(frozen=True)
class CorrelationParams(SelectiveParams):
    """routing_output_correlation: the Mantel test of ΔY against Jacobian similarity."""

    method: Literal["pearson", "spearman"] = "pearson"    # NB07 compared both


@dataclass(frozen=True)
class SharingParams(SelectiveParams):
    """routing_cluster_sharing: ΔY clusters."""

    n_clusters: int = 8


@dataclass(frozen=True)
class PathwayParams(RoutingParams):
    """routing_divergence and routing_consistency: a pathway's KDs against KD sets of the null model
    (common.null_sets); their CIs are Student t over the KDs, so no bootstrap count."""

    null_model: NullModel = "magnitude_stratified"
    stratum_size: int = 10                 # KDs per stratum of similar effect magnitude
    min_members: int = 3                   # fewer pathway KDs in the model(s) -> inconclusive
    on_unknown: Literal["error", "drop"] = "error"

    LIMITS = RoutingParams.LIMITS


@dataclass(frozen=True)
class AxesParams(PathwayParams):
    """routing_axes: the top SVD axes searched, by KD scores or gene loadings."""

    n_axes: int = 5
    by: Literal["kd_scores", "gene_loadings"] = "kd_scores"

    LIMITS = {**RoutingParams.LIMITS, "n_axes": (1, 100)}


@dataclass(frozen=True)
class StabilityParams(RoutingParams):
    """routing_stability: one whole-model statistic under other cell samplings (NB09) and sizes (NB10)."""

    statistic: Literal["routing_output_correlation", "routing_cluster_sharing"] = "routing_output_correlation"
    cell_samplings: tuple[str, ...] = CELL_SAMPLINGS
    cell_set_sizes: tuple[int, ...] = (32, 64, 128, 256)
    n_clusters: int = 8                         # for routing_cluster_sharing
    method: Literal["pearson", "spearman"] = "pearson"    # for routing_output_correlation


def validate(p: StabilityParams) -> str | None:
    unknown = [s for s in p.cell_samplings if s not in CELL_SAMPLINGS]
    if unknown:
        return f"cell_samplings: unknown {', '.join(unknown)}; use {', '.join(CELL_SAMPLINGS)}"
    return None


# ---- whole-model routing ------------------------------------------------------------------------

def output_correlation(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    name = case.axes["model"]
    return _selective(_output_correlation(ctx, name, p, _setting(ctx, name, p)), ctx, name, p, _correlation)


def _correlation(ctx: RunContext, name: str, p: RoutingParams, setting: tuple[int, str]):
    """(r, ΔY cosine, centred Jacobian cosine, the Jacobians) of one model on one cell setting."""
    routing, dy = _routing_and_shifts(ctx, name, p, setting)
    output_sim, routing_sim = stats.cosine_similarity_matrix(dy), centered_cosine(routing.gram)
    return _pair_r(output_sim, routing_sim, p.method), output_sim, routing_sim, routing


def _pair_r(x: np.ndarray, y: np.ndarray, method: str) -> float:
    upper = np.triu_indices(len(x), 1)
    if method == "spearman":
        return float(spearmanr(x[upper], y[upper]).statistic)
    return float(np.corrcoef(x[upper], y[upper])[0, 1])


def _output_correlation(ctx: RunContext, name: str, p: RoutingParams, setting: tuple[int, str]) -> Evidence:
    _, output_sim, routing_sim, routing = _correlation(ctx, name, p, setting)
    method = p.method
    result = matrix_tests.mantel(output_sim, routing_sim, p.n_permutations, np.random.default_rng(p.seed), method)
    ci = matrix_tests.mantel_ci(output_sim, routing_sim, method=method)
    details = {"cells": routing.cells, "raw_jacobian_cosine": _off_diagonal_range(gram_cosine(routing.gram)),
               "scatter": _scatter(output_sim, routing_sim, "ΔY cosine", "Jacobian cosine (centred)", p.seed),
               "null_histogram": common.histogram(result.null, result.observed)}
    if method == "spearman":     # NB07 read both: the card shows Pearson's r beside the Spearman test
        details["pearson_r"] = _pair_r(output_sim, routing_sim, "pearson")
    sketch = _sketch_error(ctx, name, routing, lambda gram, _: _pair_r(output_sim, centered_cosine(gram), method))
    return _with_sketch(Evidence(
        statistic=f"{method.title()} r between pairwise ΔY cosine and pairwise Jacobian cosine (across-KD mean "
                  "removed)",
        value=result.observed, effect=result.observed, ci=ci, p=result.p, seed=p.seed,
        n={"kds": len(output_sim), "pairs": result.n_pairs, "permutations": p.n_permutations},
        null=f"Mantel: {p.n_permutations} permutations of the KD labels of one matrix", details=details), sketch)


def cluster_sharing(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    name = case.axes["model"]
    return _selective(_cluster_sharing(ctx, name, p, _setting(ctx, name, p)), ctx, name, p, _sharing)


def _sharing(ctx: RunContext, name: str, p: RoutingParams, setting: tuple[int, str]):
    """(contrast, ΔY cluster labels, centred Jacobian cosine, the Jacobians)."""
    routing, dy = _routing_and_shifts(ctx, name, p, setting)
    labels = stats.average_linkage_clusters(dy, p.n_clusters)
    routing_sim = centered_cosine(routing.gram)
    upper = np.triu_indices(len(dy), 1)
    return _contrast(routing_sim, labels, *upper), labels, routing_sim, routing


def _cluster_sharing(ctx: RunContext, name: str, p: RoutingParams, setting: tuple[int, str]) -> Evidence:
    _, labels, routing_sim, routing = _sharing(ctx, name, p, setting)
    result = matrix_tests.group_contrast(routing_sim, labels, p.n_permutations, np.random.default_rng(p.seed))
    ci = matrix_tests.group_contrast_ci(routing_sim, labels)
    upper = np.triu_indices(len(labels), 1)
    sketch = _sketch_error(ctx, name, routing, lambda gram, _: _contrast(centered_cosine(gram), labels, *upper))
    return _with_sketch(Evidence(
        statistic="mean Jacobian cosine of same-cluster KD pairs - of different-cluster pairs (clusters from ΔY)",
        value=result.observed, effect=result.observed, ci=ci, p=result.p, seed=p.seed,
        n={"kds": len(labels), "clusters": len(set(labels.tolist())), "permutations": p.n_permutations},
        null=f"{p.n_permutations} permutations of the ΔY cluster labels (cluster sizes kept)",
        details={"cells": routing.cells, "cluster_sizes": np.bincount(labels).tolist(),
                 "null_histogram": common.histogram(result.null, result.observed)}), sketch)


def _contrast(sim: np.ndarray, labels: np.ndarray, i: np.ndarray, j: np.ndarray) -> float:
    same = labels[i] == labels[j]
    return float(sim[i, j][same].mean() - sim[i, j][~same].mean()) if same.any() and (~same).any() else np.nan


def _selective(evidence: Evidence, ctx: RunContext, name: str, p: RoutingParams, statistic) -> Evidence:
    """The evidence with one more condition: the statistic beats it on every re-initialised copy."""
    setting = _setting(ctx, name, p)
    drawn = (statistic(ctx, reinitialised_name(name, i), p, setting)[0] for i in range(p.reinit_copies))
    return common.beat_copies(evidence, evidence.value, drawn, p.reinit_copies, name)


# ---- SVD axes -----------------------------------------------------------------------------------

def axes(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    model = ctx.model(case.axes["model"])
    routing, dy = _routing_and_shifts(ctx, model.name, p, _setting(ctx, model.name, p), whole_model=False)
    sample = ctx.background_sample([model.name])
    fit = None
    if sample is not None:
        # the screen's axes, from its background sample and (as in a full run, where they are among all
        # KDs) the pathway's KDs: scores of KDs the axes were not fitted to spread less than those of
        # KDs they were, and a null of fitted KDs against members of unfitted ones would be no null
        chosen = sample | (set(case.spec.panels[case.axes["pathway"]].kds) if p.by == "kd_scores" else set())
        fit = np.array([i for i, k in enumerate(routing.kds) if k in chosen])
    key = ("routing_axes", model.name, routing.cells, routing.directions, routing.sketch, p.n_axes,
           None if fit is None else tuple(fit.tolist()))
    found = ctx.memo(key, lambda: svd_axes(routing.gram, routing.jacobians,
                                           min(p.n_axes, (len(routing.kds) if fit is None else len(fit)) - 1), fit=fit))
    table = _axes_table(found, routing.kds, model.gene_names)
    n_axes = found.scores.shape[1]

    def axes_without(gram: np.ndarray, columns: np.ndarray):     # the same for every pathway of the model
        return ctx.memo((*key, "without", tuple(columns.tolist())),
                        lambda: svd_axes(gram, routing.jacobians, n_axes, columns=columns, fit=fit))

    if p.by == "kd_scores":
        evidence, statistic = _kd_separation(case, ctx, model, routing, dy, found, table, p)
    else:
        evidence, statistic = _gene_enrichment(case, model, found, table, p)
    return _with_sketch(evidence, _sketch_error(ctx, model.name, routing,
                                                lambda gram, columns: statistic(axes_without(gram, columns))))


def _kd_separation(case: Case, ctx: RunContext, model: LoadedModel, routing: Routing, dy: np.ndarray, found, table,
                   p) -> tuple[Evidence, Callable]:
    """(the evidence, the statistic read from other axes: for the sketch's jackknife)"""
    panel = case.spec.panels[case.axes["pathway"]]
    scope = common.scope(ctx, [model.name], panel.kds, panel, routing.kds, model.gene_universe, p)
    scores = found.scores[scope.rows]
    members = scope.members
    observed = float(_best_auroc(scores, members[None])[0])
    null = _best_auroc(scores, common.null_sets(p, members, len(scope.kds),
                                                lambda: np.linalg.norm(dy[scope.rows], axis=1)))
    axis = int(np.argmax([_two_sided_auroc(scores[:, a], members) for a in range(scores.shape[1])]))
    for row in table:
        row["auroc"] = round(_two_sided_auroc(scores[:, row["axis"] - 1], members), 4)
    ci = _two_sided_auroc_ci(scores[:, axis], members)

    def statistic(other) -> float:
        return float(_best_auroc(other.scores[scope.rows], members[None])[0])

    return Evidence(
        statistic=f"best AUROC of the pathway's KDs' scores over the top {scores.shape[1]} SVD axes "
                  "(either direction)", value=observed, effect=observed - 0.5, ci=ci, p=stats.exact_p(null, observed),
        seed=p.seed, n=scope.sizes | {"axes": scores.shape[1], "permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), len(scope.kds), "ΔY norm") + "; the best axis re-chosen each time",
        details={"best_axis": axis + 1, "table": table, "null_histogram": common.histogram(null, observed),
                 "members": scope.present, "learned": scope.learned,
                 "scatter": _score_scatter(scores, members, tuple(scope.kds), axis)}), statistic


def _gene_enrichment(case: Case, model: LoadedModel, found, table, p: RoutingParams) -> tuple[Evidence, Callable]:
    panel = case.spec.panels[case.axes["pathway"]]
    present, _ = resolve_members(panel.genes, model.gene_names, model.gene_universe, panel=panel, model=model.name,
                                 what="output genes", on_unknown=p.on_unknown, min_members=p.min_members)
    members = np.array([model.gene_names.index(g) for g in present])
    genes = len(model.gene_names)
    expression = model.output_expression
    sets = np.vstack([members[None], common.null_sets(p, members, genes, lambda: expression)])
    folds = found.gene_loadings[:, sets].sum(axis=2) * genes / len(members)         # [axes, 1 + null sets]
    observed, null = float(folds[:, 0].max()), folds[:, 1:].max(axis=0)
    axis = int(np.argmax(folds[:, 0]))
    for row in table:
        row["fold"] = round(float(folds[row["axis"] - 1, 0]), 3)
    # the chosen axis's fold is the mean over member genes of G x their loading share: the Student-t interval
    # of that mean, as routing_axes' KD scores give DeLong's interval of the chosen axis
    ci = stats.mean_ci(found.gene_loadings[axis, members] * genes - 1.0)

    def statistic(other) -> float:
        return float((other.gene_loadings[:, members].sum(axis=1) * genes / len(members)).max())

    return Evidence(
        statistic=f"best fold enrichment of the pathway's genes in an axis's loading (top {len(table)} SVD axes)",
        value=observed, effect=observed - 1.0, ci=ci, p=stats.exact_p(null, observed), seed=p.seed,
        n={"members": len(members), "output_genes": genes, "axes": len(table), "permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), genes, "mean control expression", "genes")
        + "; the best axis re-chosen each time",
        details={"best_axis": axis + 1, "table": table, "null_histogram": common.histogram(null, observed)}), statistic


def _axes_table(found, kds: tuple[str, ...], genes: tuple[str, ...]) -> list[dict]:
    return [{"axis": a + 1, "variance_share": round(float(found.variance_share[a]), 4),
             "top_kds": ", ".join(kds[i] for i in np.argsort(-np.abs(found.scores[:, a]))[:5]),
             "top_genes": ", ".join(genes[i] for i in np.argsort(-found.gene_loadings[a])[:5])}
            for a in range(found.scores.shape[1])]


def _best_auroc(scores: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """[n_sets] the best two-sided AUROC over the axes (columns of `scores`) of each row of `sets`, from
    the Mann-Whitney rank sums: an axis's ranks do not depend on the set."""
    n, k = len(scores), sets.shape[1]
    ranks = rankdata(scores, axis=0)
    auroc = (ranks[sets].sum(axis=1) - k * (k + 1) / 2) / (k * (n - k))
    return np.maximum(auroc, 1.0 - auroc).max(axis=1)


def _two_sided_auroc(scores: np.ndarray, members: np.ndarray) -> float:
    mask = np.zeros(len(scores), dtype=bool)
    mask[members] = True
    value = matrix_tests.auroc(scores, mask)
    return max(value, 1.0 - value)


def _two_sided_auroc_ci(scores: np.ndarray, members: np.ndarray) -> tuple[float, float]:
    """DeLong's interval of the chosen axis's AUROC (matrix_tests.auroc_ci), read in the direction
    that separates the members, minus 0.5: the interval of the effect beside it."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[members] = True
    low, high = matrix_tests.auroc_ci(scores, mask)
    if matrix_tests.auroc(scores, mask) < 0.5:
        low, high = 1.0 - high, 1.0 - low
    return low - 0.5, high - 0.5


def divergence(case: Case, ctx: RunContext) -> Evidence:
    """Over the KDs at least one of the two models learned: a KD one model learned and the other did
    not is exactly what diverges, but a KD neither learned diverges by noise (two models' answers to
    a perturbation they know nothing about), and a set of them would read as line-specific routing."""
    p: RoutingParams = case.spec.params
    comparison = _comparison(case, ctx, p)
    kds, cmp, names = comparison.kds, comparison.found, comparison.names
    members = _pair_members(case, kds, ctx, p)
    kds, members, rows = _learned_by_either(case, ctx, kds, members, p)
    divergence = cmp.divergence[rows]
    magnitude = comparison.magnitude[rows]
    sketch = comparison.error(lambda c: float(c.divergence[rows][members].mean()))
    neutral = _neutral(case, kds, members)
    observed = float(divergence[members].mean())
    null = divergence[common.null_sets(p, members, len(kds), lambda: magnitude)].mean(axis=1)
    ratio = observed / float(divergence[neutral].mean()) if len(neutral) else float("nan")
    ci = stats.mean_ci(divergence[members] - float(divergence.mean()))   # a mean of per-KD values
    return _with_sketch(Evidence(
        statistic=f"mean normalised divergence ||A - B|| / mean(||A||, ||B||) of the pathway KDs' one-hot Jacobians "
                  f"({names})", value=observed, effect=observed - float(divergence.mean()),
        ci=ci,
        p=stats.exact_p(null, observed), seed=p.seed,
        n={"members": len(members), "kds": len(kds), "kds_judged": len(cmp.divergence), "neutral_kds": len(neutral),
           "permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), len(kds), "ΔY norm in the two models") + (
            f"; over the {len(kds)} of {len(cmp.divergence)} KDs either model learned"),
        details={"ratio_to_neutral": ratio, "mean_all_kds": float(divergence.mean()),
                 "table": _per_kd(kds, members, divergence, "divergence"),
                 "null_histogram": common.histogram(null, observed)}), sketch)


def consistency(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    comparison = _comparison(case, ctx, p)
    kds, cmp, magnitude, names = comparison.kds, comparison.found, comparison.magnitude, comparison.names
    panel = case.spec.panels[case.axes["pathway"]]
    a, b = (ctx.model(n) for n in case.axes["model_pair"])
    scope = common.scope(ctx, [a.name, b.name], panel.kds, panel, kds, a.gene_universe | b.gene_universe, p)
    correlation, members = cmp.correlation[scope.rows], scope.members
    observed = float(correlation[members].mean())
    null = correlation[common.null_sets(p, members, len(scope.kds), lambda: magnitude[scope.rows])].mean(axis=1)
    overall = float(correlation.mean())
    ci = stats.mean_ci(correlation[members] - overall)                              # a mean of per-KD values
    sketch = comparison.error(lambda c: float(c.correlation[scope.rows][members].mean()))
    return _with_sketch(Evidence(
        statistic=f"mean per-KD Pearson r of the pathway KDs' one-hot Jacobians ({names})", value=observed,
        effect=observed - overall, ci=ci,
        p=stats.exact_p(null, observed), seed=p.seed,
        n=scope.sizes | {"permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), len(scope.kds), "ΔY norm in the two models"),
        details={"mean_r_all_kds": overall, "members": scope.present, "learned": scope.learned,
                 "table": _per_kd(scope.kds, members, correlation, "r"),
                 "null_histogram": common.histogram(null, observed)}), sketch)


@dataclass(frozen=True)
class _Comparison:
    """Two models' one-hot routing, KD by KD, on the KDs they share."""

    kds: tuple[str, ...]
    found: RoutingComparison
    magnitude: np.ndarray                          # ΔY norm in both models, each scaled by its mean
    names: str                                     # "a vs b"
    leave_one_out: tuple[RoutingComparison, ...]   # the sketch's jackknife (empty when exact)
    sketch: dict | None                            # _sketch_note without its SE

    def error(self, statistic: Callable[[RoutingComparison], float]) -> dict | None:
        if self.sketch is None:
            return None
        return _sketch_note(**self.sketch, se=jackknife_se([statistic(c) for c in self.leave_one_out]))


def _comparison(case: Case, ctx: RunContext, p: RoutingParams) -> _Comparison:
    a, b = (ctx.model(n) for n in case.axes["model_pair"])
    settings = (_setting(ctx, a.name, p), _setting(ctx, b.name, p))

    def compute() -> _Comparison:
        row_b = _positions(b.kd_names)
        kds = tuple(k for k in a.kd_names if k in row_b)
        gene_a, gene_b = _positions(a.gene_names), _positions(b.gene_names)
        genes = [g for g in a.gene_names if g in gene_b]
        pert_b = _positions(b.vocabulary)
        vocab = tuple(k for k in a.vocabulary if k in pert_b)
        rows_a, rows_b = [gene_a[g] for g in genes], [gene_b[g] for g in genes]
        if any(_sketched(p.directions, _pert_width(ctx, m.name)) for m in (a, b)):
            found, loo, note = _sketched_comparison(ctx, (a, b), settings, kds, vocab, rows_a, rows_b, p)
        else:
            found, loo, note = _exact_comparison(ctx, (a, b), settings, kds, vocab, rows_a, rows_b, p), (), None
        shifts = [ctx.output_shifts(m.name, size, p.seed, ctx.n_orderings(m.name, p.cell_orderings), sampling)
                  [[m.pert_index(k) for k in kds]] for m, (size, sampling) in zip((a, b), settings, strict=True)]
        magnitude = sum(np.linalg.norm(d, axis=1) / np.linalg.norm(d, axis=1).mean() for d in shifts)
        return _Comparison(kds, found, magnitude, f"{a.name} vs {b.name}", loo, note)

    return ctx.memo(("routing_comparison", a.name, b.name, settings, p.seed, p.directions, p.sketch), compute)


def _exact_comparison(ctx: RunContext, models, settings, kds, vocab, genes_a, genes_b, p) -> RoutingComparison:
    """dY/d onehot = J_k E_k from every KD's full pert_repr Jacobian and encoder Jacobian."""
    parts = []
    for m, (size, sampling) in zip(models, settings, strict=True):
        routing = routing_jacobians(ctx, m.name, size, p.seed, sampling, ctx.n_orderings(m.name, p.cell_orderings))
        index = [_positions(routing.kds)[k] for k in kds]
        pert = _positions(m.vocabulary)
        parts.append((routing.jacobians[index], encoder_jacobians_of(ctx, m.name)[index], [pert[k] for k in vocab]))
    (jac_a, enc_a, vocab_a), (jac_b, enc_b, vocab_b) = parts
    return compare_onehot_routing(jac_a, enc_a, jac_b, enc_b, genes_a, genes_b, vocab_a, vocab_b)


def _sketched_comparison(ctx: RunContext, models, settings, kds, vocab, genes_a, genes_b, p):
    """(comparison, leave-one-group-out comparisons, sketch note) from both models' one-hot Jacobians
    along the same random directions of the shared vocabulary."""
    directions = int(p.directions)
    rows, sums = [], None
    for m, (size, sampling) in zip(models, settings, strict=True):
        found, sums = onehot_routing(ctx, m.name, kds, vocab, size, p.seed, sampling,
                                     ctx.n_orderings(m.name, p.cell_orderings), directions, p.sketch)
        rows.append(found)
    exact = len(vocab) <= directions
    groups = [np.arange(len(sums))] if exact else direction_groups(len(sums))
    found = compare_sketched_routing(rows[0], rows[1], genes_a, genes_b, sums, len(vocab), groups)
    if exact:
        return found.estimate, (), None
    note = {"directions": directions, "width": len(vocab), "kind": p.sketch, "groups": len(groups),
            "of": "one-hot directions of the shared KD vocabulary"}
    return found.estimate, found.leave_one_out, note


def _positions(names) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _pair_members(case: Case, kds: tuple[str, ...], ctx: RunContext, p: RoutingParams) -> np.ndarray:
    a, b = (ctx.model(n) for n in case.axes["model_pair"])
    panel = case.spec.panels[case.axes["pathway"]]
    return common.member_positions(panel, panel.kds, kds, a.gene_universe | b.gene_universe, p,
                                   model=f"{a.name} and {b.name}", what="KDs")[2]


def _learned_by_either(case: Case, ctx: RunContext, kds: tuple[str, ...], members: np.ndarray, p: RoutingParams
                       ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(the KDs either model learned, the members among them, their rows in `kds`)."""
    present = [kds[i] for i in members]
    learned = set().union(*(common.learned_kds(ctx, name, kds, present)[0] for name in case.axes["model_pair"]))
    rows = np.array([i for i, k in enumerate(kds) if k in learned], dtype=int)
    kept = tuple(kds[i] for i in rows)
    used = [k for k in present if k in learned]
    if len(used) < p.min_members or len(used) <= len(present) / 2:
        raise Inconclusive(f"{len(used)} of the {len(present)} KDs of pathway '{case.axes['pathway']}' are learned by "
                           f"{' or '.join(case.axes['model_pair'])} (a test needs {p.min_members} and a majority): "
                           "KDs neither model learned diverge by noise, not by line")
    position = {k: i for i, k in enumerate(kept)}
    return kept, np.array([position[k] for k in used]), rows


def _neutral(case: Case, kds: tuple[str, ...], members: np.ndarray) -> np.ndarray:
    """KDs in no panel of the hypothesis file: NB05's 'neutral' comparison group."""
    in_panels = {g for panel in case.spec.panels.values() for g in panel.genes}
    return np.array([i for i, k in enumerate(kds) if k not in in_panels and i not in set(members.tolist())], dtype=int)


def _per_kd(kds, members, values, column) -> list[dict]:
    return sorted(({"kd": kds[i], column: round(float(values[i]), 4)} for i in members), key=lambda r: -r[column])


# ---- NB09/NB10 robustness ---------------------------------------------------------------------

def stability(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    model = ctx.model(case.axes["model"])
    run = _output_correlation if p.statistic == "routing_output_correlation" else _cluster_sharing
    rule = CHECKS_BY_NAME[p.statistic].default_rule(p)
    default = _setting(ctx, model.name, p)
    settings, dropped = _stability_settings(model, p, default)
    if len(settings) < 2:
        raise Inconclusive(f"fewer than two cell settings fit model '{model.name}' ({'; '.join(dropped)})")
    rows = []
    for size, sampling in settings:
        evidence = run(ctx, model.name, p, (size, sampling))
        rows.append({"cells": size, "sampling": sampling, "statistic": round(evidence.value, 4),
                     "p": evidence.p, "verdict": decide(evidence, rule)[0]})
    reference = next(r["verdict"] for r in rows if (r["cells"], r["sampling"]) == default)
    agree = float(np.mean([r["verdict"] == reference for r in rows]))
    values = [r["statistic"] for r in rows]
    return Evidence(
        statistic=f"share of cell settings whose {p.statistic} verdict equals the default setting's ({reference})",
        value=agree, effect=agree, ci=None, p=None, seed=p.seed,
        n={"settings": len(rows)}, null="none: a robustness measurement",
        details={"spread": round(max(values) - min(values), 4), "default_verdict": reference, "table": rows,
                 "dropped": dropped})


def _stability_settings(model: LoadedModel, p: RoutingParams, default: tuple[int, str]):
    wanted = [(default[0], s) for s in p.cell_samplings] + [(n, default[1]) for n in p.cell_set_sizes]
    wanted = list(dict.fromkeys([default, *wanted]))
    limit = min(model.cell_set_len, model.cells.shape[0])
    kept = [s for s in wanted if s[0] <= limit]
    dropped = [f"{n} cells: more than the model's cell_set_len ({model.cell_set_len}) or its control cells"
               for n, _ in wanted if n > limit]
    return kept, dropped


# ---- probe outputs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Routing:
    """One model's dY/d(pert_repr) Jacobians on one cell sample (probes/routing.py)."""

    kds: tuple[str, ...]        # the rows: every perturbation but the control
    jacobians: np.ndarray       # [K, G, r] float32 (a read-only memmap when cached on disk)
    gram: np.ndarray            # [K, K] Gram of the flattened Jacobians (estimated when sketched)
    cells: str                  # how the cells were chosen, in words
    hidden: int = 0             # H, the width of pert_repr
    sketch: str | None = None   # the random directions' kind when r < H, None when exact

    @property
    def directions(self) -> int:
        return self.jacobians.shape[-1]

    def among(self, kds: Collection[str]) -> Routing:
        """The Jacobians and Gram of these KDs only (a run's background sample)."""
        rows = [i for i, k in enumerate(self.kds) if k in kds]
        return replace(self, kds=tuple(self.kds[i] for i in rows), jacobians=self.jacobians[rows],
                       gram=self.gram[np.ix_(rows, rows)])


def routing_jacobians(ctx: RunContext, name: str, size: int, seed: int, sampling: str, n_orderings: int,
                      directions: int | str = "all", sketch: Sketch = "rademacher") -> Routing:
    """Every KD's Jacobian and their Gram, from the disk cache when this model, cell sample, ordering
    count and sketch were computed before (a memmap filled KD chunk by KD chunk, so the run never
    holds [K, G, H] twice)."""
    model = ctx.model(name)
    hidden = _pert_width(ctx, name)
    sketched = _sketched(directions, hidden)

    def compute() -> Routing:
        kds = model.kd_names
        reprs = pert_reprs(model, kds)
        parts = dict(fingerprint=model.fingerprint, size=size, seed=seed, sampling=sampling, orderings=n_orderings)
        tangents = None
        if sketched:        # an exact run keeps the cache keys it always had
            parts |= {"directions": int(directions), "sketch": sketch}
            tangents = sketch_directions(hidden, int(directions), seed, sketch)
        cells = select_cells(model.cells, size, seed, sampling)
        orders = random_orderings(size, n_orderings, seed)
        shape = (len(kds), len(model.gene_names), int(directions) if sketched else hidden)
        jac_key, gram_key = ctx.cache.key("pert_jacobians", **parts), ctx.cache.key("jacobian_gram", **parts)
        ctx.tally(name, ctx.cache.has(jac_key) and ctx.cache.has(gram_key))
        along = f", {shape[2]} of {hidden} directions" if sketched else ""
        jac = ctx.cache.filled(jac_key, shape,
                               lambda out: pert_jacobians(
                                   model.module, cells, reprs, orders, out=out,
                                   kd_chunk=kd_chunk(ctx.device, size, shape[2]), directions=tangents,
                                   progress=ctx.reporter(f"routing Jacobians of {name} ({n_orderings} "
                                                         f"ordering(s), {size} cells{along})", "KDs")))
        # a non-finite Jacobian entry makes its KD's squared norm, a diagonal of the Gram, non-finite
        gram = require_finite(ctx.cache.array(gram_key, lambda: streaming_gram(jac)), "routing Jacobians", name)
        return Routing(kds, jac, gram, f"{size} {sampling} control cells, {n_orderings} ordering(s), seed {seed}",
                       hidden, sketch if sketched else None)

    return ctx.stored("routing", name, compute, disk=False, size=size, seed=seed, sampling=sampling,
                      orderings=n_orderings, directions=int(directions) if sketched else "all",
                      sketch=sketch if sketched else None)


def _sketched(directions: int | str, width: int) -> bool:
    return directions != "all" and int(directions) < width


def _pert_width(ctx: RunContext, name: str) -> int:
    """H, the width of the model's pert_repr."""
    model = ctx.model(name)
    return ctx.stored("pert_width", name, lambda: int(pert_reprs(model, model.kd_names[:1]).shape[1]), disk=False)


def onehot_routing(ctx: RunContext, name: str, kds: tuple[str, ...], vocab: tuple[str, ...], size: int, seed: int,
                   sampling: str, n_orderings: int, directions: int, sketch: Sketch) -> tuple[np.ndarray, np.ndarray]:
    """([K, G, r + 1] dY/d onehot of `kds` along r directions of the one-hot space over `vocab` (the KD
    vocabulary two models share; the directions depend on it and the seed only, so both models get
    the same) and, last, along the sum of those one-hots; [r] the directions' sums). With no more
    vocabulary than directions, the directions are its unit vectors: the exact one-hot Jacobians."""
    model = ctx.model(name)
    if len(vocab) <= directions:
        shared = torch.eye(len(vocab))
    else:
        shared = sketch_directions(len(vocab), directions, seed, sketch)
    full = torch.zeros(len(shared) + 1, len(model.vocabulary))
    columns = [_positions(model.vocabulary)[k] for k in vocab]
    full[:-1, columns] = shared
    full[-1, columns] = 1.0

    def compute() -> np.ndarray:
        parts = dict(fingerprint=model.fingerprint, size=size, seed=seed, sampling=sampling, orderings=n_orderings,
                     directions=len(shared), sketch=sketch, kds=kds, vocab=vocab)
        key = ctx.cache.key("onehot_jacobians", **parts)
        ctx.tally(name, ctx.cache.has(key))
        onehots = model.pert_onehots[[model.pert_index(k) for k in kds]]
        reprs = pert_reprs(model, kds)
        cells = select_cells(model.cells, size, seed, sampling)
        orders = random_orderings(size, n_orderings, seed)
        shape = (len(kds), len(model.gene_names), len(full))
        return ctx.cache.filled(key, shape, lambda out: pert_jacobians(
            model.module, cells, reprs, orders, out=out, kd_chunk=kd_chunk(ctx.device, size, len(full)),
            directions=require_finite(torch.cat([onehot_tangents(model.module, onehots[i:i + 256], full.to(onehots))
                                                 for i in range(0, len(onehots), 256)]), "encoder Jacobians", name),
            progress=ctx.reporter(f"one-hot routing of {name} ({n_orderings} ordering(s), {size} cells, "
                                  f"{len(shared)} of {len(vocab)} KD directions)", "KDs")))

    rows = ctx.stored("onehot_routing", name, compute, disk=False, size=size, seed=seed, sampling=sampling,
                      orderings=n_orderings, directions=directions, sketch=sketch, kds=kds, vocab=vocab)
    return rows, shared.double().sum(dim=1).numpy()


def encoder_jacobians_of(ctx: RunContext, name: str) -> torch.Tensor:
    """[K, H, P] d pert_repr / d onehot for every KD (rows as in `routing_jacobians`)."""
    def compute() -> torch.Tensor:
        model = ctx.model(name)
        onehots = model.pert_onehots[[model.pert_index(k) for k in model.kd_names]]
        return require_finite(encoder_jacobians(model.module, onehots), "encoder Jacobians", name)

    return ctx.stored("encoder_jacobians", name, compute, disk=False)


# ---- shared -----------------------------------------------------------------------------------

def _sketch_error(ctx: RunContext, name: str, routing: Routing, statistic) -> dict | None:
    """What the sketch of `routing` costs a statistic: the jackknife standard error of
    statistic(gram, columns) over groups of the random directions (each group left out in turn);
    None when the Jacobians are exact."""
    if routing.sketch is None:
        return None
    groups = direction_groups(routing.directions)
    grams = ctx.memo(("routing_group_grams", name, routing.cells, routing.directions, routing.sketch, routing.kds),
                     lambda: group_grams(routing.jacobians, groups))
    everything = np.arange(routing.directions)
    estimates = [statistic(routing.gram - grams[g], np.setdiff1d(everything, columns))
                 for g, columns in enumerate(groups)]
    return _sketch_note(routing.directions, routing.hidden, routing.sketch, jackknife_se(estimates), len(groups),
                        "pert_repr directions")


def _sketch_note(directions: int, width: int, kind: str, se: float, groups: int, of: str) -> dict:
    """What the card and the record say of a sketched statistic."""
    return {"directions": directions, "width": width, "kind": kind, "se": se, "groups": groups,
            "text": f"Jacobians along {directions} random {kind} directions of {width} {of} (an unbiased estimate "
                    f"of their inner products): standard error of the statistic {se:.2g} (jackknife over {groups} "
                    "groups of directions); `directions: all` computes them exactly"}


def _with_sketch(evidence: Evidence, note: dict | None) -> Evidence:
    """The evidence, saying on its card and in the record that its Jacobians were sketched."""
    if note is None:
        return evidence
    details = evidence.details | {"sketch": note, "reduced": [*evidence.details.get("reduced", []), note["text"]]}
    return replace(evidence, n=evidence.n | {"directions": note["directions"]}, details=details)


def _setting(ctx: RunContext, name: str, p: RoutingParams) -> tuple[int, str]:
    return (p.cell_set_size or ctx.model(name).cell_set_len, p.cell_sampling)


def _routing_and_shifts(ctx: RunContext, name: str, p: RoutingParams, setting: tuple[int, str],
                        whole_model: bool = True) -> tuple[Routing, np.ndarray]:
    """The model's Jacobians and its KDs' ΔY (rows aligned) on the same cells: of the run's background
    sample for a whole-model statistic, of every KD the run computed for a pathway's."""
    model = ctx.model(name)
    size, sampling = setting
    orderings = ctx.n_orderings(name, p.cell_orderings)
    routing = routing_jacobians(ctx, name, size, p.seed, sampling, orderings, p.directions, p.sketch)
    sample = ctx.background_sample([name]) if whole_model else None
    if sample is not None:      # a whole-model statistic of the screen, estimated on its background sample
        routing = ctx.memo(("routing_background", name, routing.cells, routing.directions, routing.sketch),
                           lambda: routing.among(sample))
    shifts = ctx.output_shifts(name, size, p.seed, orderings, sampling)
    return routing, shifts[[model.pert_index(k) for k in routing.kds]]


def _off_diagonal_range(sim: np.ndarray) -> list[float]:
    values = sim[~np.eye(len(sim), dtype=bool)]
    return [round(float(values.min()), 6), round(float(values.max()), 6)]


def _scatter(x: np.ndarray, y: np.ndarray, x_label: str, y_label: str, seed: int, n_points: int = 1500) -> dict:
    upper = np.triu_indices(len(x), 1)
    pick = np.random.default_rng(seed).permutation(len(upper[0]))[:n_points]
    return {"x": x[upper][pick].round(4).tolist(), "y": y[upper][pick].round(4).tolist(), "x_label": x_label,
            "y_label": y_label}


def _score_scatter(scores: np.ndarray, members: np.ndarray, kds: tuple[str, ...], best: int) -> dict:
    """KD scores on the best axis (across) against the strongest other axis (up)."""
    flag = np.zeros(len(kds), dtype=bool)
    flag[members] = True
    other = 1 if best == 0 else 0
    second = scores[:, other] if scores.shape[1] > 1 else np.zeros(len(kds))
    return {"x": scores[:, best].round(5).tolist(), "y": second.round(5).tolist(), "highlight": flag.tolist(),
            "labels": list(kds), "x_label": f"axis {best + 1} score (best)", "y_label": f"axis {other + 1} score"}


def _seeds_rule(_p: RoutingParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=None, statistic_above=0.3)


def _p_rule(_p: RoutingParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=0.0)


def _stability_rule(_p: RoutingParams) -> PassRule:
    return PassRule(p_below=None, effect_above=None, statistic_above=0.999)


FAMILY = Family("routing", (
        Check("routing_output_correlation", ("model",), CorrelationParams, output_correlation,
              "KDs with similar ΔY have similar dY/d(pert_repr) Jacobians (Mantel r > 0.3)", _seeds_rule,
              common.copies_problem),
        Check("routing_cluster_sharing", ("model",), SharingParams, cluster_sharing,
              "KDs in one ΔY cluster share routing more than KDs in different clusters", _p_rule,
              common.copies_problem),
        Check("routing_axes", ("model", "pathway"), AxesParams, axes,
              "a top SVD axis of the Jacobians separates the pathway's KDs or loads on its genes", _p_rule,
              side="routed", needs=lambda p: frozenset({"gene_outputs"} if p.by == "gene_loadings" else ())),
        Check("routing_divergence", ("model_pair", "pathway"), PathwayParams, divergence,
              "the pathway's KDs' routing differs between two models more than KDs of similar magnitude (NB05)",
              _p_rule),
        Check("routing_consistency", ("model_pair", "pathway"), PathwayParams, consistency,
              "the pathway's KDs' routing agrees between two models more than KDs of similar magnitude (NB08)",
              _p_rule),
        Check("routing_stability", ("model",), StabilityParams, stability,
              "a routing verdict holds under other cell samplings and cell-set sizes (NB09/NB10)", _stability_rule,
              validate, calibrated=False),
    ), Card(settings=("cell_sampling", "cell_set_size", "null_model", "method"), reference="mean_r_all_kds",
            partial="routing_card.html.j2"))
CHECKS_BY_NAME = {c.name: c for c in FAMILY.checks}
