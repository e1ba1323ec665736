"""Targeted Jacobian checks (Option 3, NB03): is dY[target]/dX[regulator] elevated under the
pathway's KDs, and only for the pathway's targets?

targeted_jacobian        per KD: its mean sensitivity over the panel's (regulator, target) pairs,
                         each pair's |J| relative to that pair's mean over all compared KDs; do the
                         pathway's KDs score above the unrelated KDs? Rank-biserial r, permutation of
                         the KD labels. Passes only if the same test on unrelated targets (matched in
                         mean expression) does *not* pass: elevated sensitivity everywhere is not
                         pathway routing.
jacobian_routing_score   per KD: mean |J| on the pathway's pairs / on matched null pairs (regulator
                         and target from other pathways, similar mean expression); does the score
                         separate the pathway's KDs from unrelated KDs? AUROC, permutation of the KD
                         labels.

The KD is the unit of replication. (regulator, target) pairs measured under the same KDs are not
independent samples: a signed-rank test over 6 pairs that all share 3 pathway and 3 unrelated KDs
reached p = 1/64 on models that learned no per-cell sensitivity. Both tests permute KD labels
(every relabeling when there are few), and a panel whose KDs are too few for any relabeling to
reach the pass rule's alpha (3 vs 3 KDs: 20 relabelings, smallest p 0.05) is inconclusive.

Unrelated KDs are the panel's `unrelated_kds`, else `n_unrelated` learned KDs that belong to no panel
of the hypothesis, matched in effect magnitude to the pathway's KDs. Every result records the
Jacobian mode (per_cell or set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from core.errors import Inconclusive
from probes.audit import random_orderings
from probes.embeddings import sample_cells
from probes.jacobian import targeted_jacobians

from .. import matrix_tests
from ..families import GENE_LEVEL, Card, Check, Family
from ..session import pert_reprs, require_finite
from ..verdicts import Evidence
from . import common
from .common import resolve_members

if TYPE_CHECKING:
    from fixtures.arc_state import LoadedModel

    from ..cases import Case
    from ..panels import Panel
    from ..session import RunContext

@dataclass(frozen=True)
class JacobianParams:
    mode: Literal["per_cell", "set"] = "per_cell"
    magnitude: Literal["absolute", "signed"] = "absolute"
    n_unrelated: int = 16
    specificity_alpha: float = 0.05
    cell_set_size: int | None = None
    cell_orderings: int | None = None
    min_members: int = 3
    on_unknown: Literal["error", "drop"] = "error"
    n_permutations: int = 2000        # relabelings drawn when there are too many to enumerate
    seed: int = 0

    LIMITS = {"n_unrelated": (2, 100_000), "specificity_alpha": (0.0, 1.0), "cell_set_size": (2, 1_000_000),
              "cell_orderings": (1, 10_000), "min_members": (2, 100_000),
              "n_permutations": (99, 1_000_000), "seed": (0, 2 ** 32 - 1)}


@dataclass(frozen=True)
class RoutingParams(JacobianParams):
    pass


@dataclass(frozen=True)
class PanelDesign:
    """Which KDs and genes a case compares, resolved against one model."""

    pathway_kds: list[str]
    unrelated_kds: list[str]
    regulators: list[str]
    targets: list[str]
    null_regulators: list[str]      # matched in mean expression, outside the pathway
    null_targets: list[str]
    dropped: list[str]
    learned: dict                   # what learnedness left out (common.Scope.learned)
    matched_to: dict[str, str] | None = None   # unrelated KD -> the pathway KD it was matched to (None: named)

    @property
    def strata(self) -> np.ndarray | None:
        """Per compared KD (pathway KDs, then unrelated), its matched group: the KD labels are
        exchangeable only within the groups the magnitude matching made."""
        if self.matched_to is None:
            return None
        group = {k: i for i, k in enumerate(self.pathway_kds)}
        return np.array([group[k] for k in self.pathway_kds] + [group[self.matched_to[k]] for k in self.unrelated_kds])


def panel_test(case: Case, ctx: RunContext) -> Evidence:
    p: JacobianParams = case.spec.params
    model, design, jac = _prepare(case, ctx, p)
    labels = _labels(design)
    scores = _kd_sensitivity(jac, design.regulators, design.targets, design, model, p)
    raw = _mean_sensitivity(jac, design.regulators, design.targets, design, model, p)
    spec_scores = _kd_sensitivity(jac, design.regulators, design.null_targets, design, model, p)
    rng = np.random.default_rng(p.seed)
    result = _label_test(scores, labels, p, case, rng, design)
    specificity = matrix_tests.label_test(spec_scores, labels, p.n_permutations, rng, design.strata)
    low, high = matrix_tests.auroc_ci(scores, labels)
    held = specificity.p >= p.specificity_alpha
    return Evidence(
        statistic=f"rank-biserial r of per-KD {_what(p)} on the panel's pairs (pathway KDs vs unrelated KDs)",
        value=2 * result.auroc - 1, effect=2 * result.auroc - 1, ci=(2 * low - 1, 2 * high - 1), p=result.p,
        n=_sizes(p, design, ctx, model) | {"relabelings": len(result.null)}, seed=p.seed,
        null=_null_text(result, design),
        conditions=((held, f"specificity: unrelated targets give p = {specificity.p:.3g} "
                           f"({'>=' if held else '<'} {p.specificity_alpha})"),),
        details={"mode": p.mode, "specificity_p": specificity.p, "specificity_rbc": 2 * specificity.auroc - 1,
                 "pathway_kds": design.pathway_kds, "unrelated_kds": design.unrelated_kds,
                 "regulators": design.regulators, "targets": design.targets,
                 "unrelated_targets": design.null_targets, "matched_to": design.matched_to,
                 "dropped": design.dropped, "learned": design.learned,
                 "scores": {k: float(v) for k, v in zip(_kds(design), scores, strict=True)},
                 "pathway_mean": float(scores[labels].mean()), "unrelated_mean": float(scores[~labels].mean()),
                 # the unnormalised ratio of mean |J| under pathway vs unrelated KDs (the demo oracle's form)
                 "raw_ratio": float(raw[labels].mean() / raw[~labels].mean()) if raw[~labels].mean() else None,
                 "null_histogram": common.histogram(2 * result.null - 1, 2 * result.auroc - 1)})


def routing_score(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    model, design, jac = _prepare(case, ctx, p)
    scores = _routing_scores(jac, design, model, p)
    kds = _kds(design)
    undefined = [kd for kd, score in zip(kds, scores, strict=True) if not np.isfinite(score)]
    if undefined:
        raise Inconclusive(f"{len(undefined)} of {len(kds)} KDs have zero sensitivity on the matched null pairs, so "
                           f"their routing score is undefined: {', '.join(undefined[:8])}")
    labels = _labels(design)
    rng = np.random.default_rng(p.seed)
    result = _label_test(scores, labels, p, case, rng, design)
    low, high = matrix_tests.auroc_ci(scores, labels)
    return Evidence(
        statistic=f"AUROC of the per-KD routing score ({_what(p)} on pathway pairs / on matched null pairs)",
        value=result.auroc, effect=result.auroc - 0.5, ci=(low - 0.5, high - 0.5), p=result.p,
        n=_sizes(p, design, ctx, model) | {"relabelings": len(result.null)}, seed=p.seed,
        null=_null_text(result, design),
        details={"mode": p.mode, "scores": {k: float(s) for k, s in zip(kds, scores, strict=True)},
                 "pathway_kds": design.pathway_kds, "unrelated_kds": design.unrelated_kds,
                 "matched_to": design.matched_to, "regulators": design.regulators, "targets": design.targets,
                 "null_regulators": design.null_regulators, "null_targets": design.null_targets,
                 "null_histogram": common.histogram(result.null, result.auroc), "dropped": design.dropped,
                 "learned": design.learned})


def _label_test(scores: np.ndarray, labels: np.ndarray, p: JacobianParams, case: Case, rng: np.random.Generator,
                design: PanelDesign) -> matrix_tests.LabelTest:
    """The KD-label permutation test (within matched groups when the design matched them);
    inconclusive when no relabeling can reach the pass rule's alpha."""
    result = matrix_tests.label_test(scores, labels, p.n_permutations, rng, design.strata)
    alpha = case.spec.pass_rule.p_below
    if alpha is not None and result.smallest_p >= alpha:
        count = round(1 / result.smallest_p)
        within = " within the magnitude-matched groups" if design.strata is not None else ""
        raise Inconclusive(f"{len(design.pathway_kds)} pathway KDs vs {len(design.unrelated_kds)} unrelated KDs allow "
                           f"only {count} relabelings{within}, so no permutation p can fall below {alpha}; the KD is "
                           "the unit of replication (pairs that share KDs are not independent), so name more KDs or "
                           "unrelated_kds in the panel, or raise n_unrelated")
    return result


def _null_text(result: matrix_tests.LabelTest, design: PanelDesign) -> str:
    how = "every one" if result.exact else f"{len(result.null)} random ones"
    within = (", within the groups of KDs matched in magnitude to each pathway KD"
              if design.strata is not None else "")
    return (f"permutation of the KD labels ({how} of the relabelings of {len(design.pathway_kds)} pathway and "
            f"{len(design.unrelated_kds)} unrelated KDs{within}; smallest possible p {result.smallest_p:.2g})")


def _kds(design: PanelDesign) -> list[str]:
    return design.pathway_kds + design.unrelated_kds


def _labels(design: PanelDesign) -> np.ndarray:
    return np.array([True] * len(design.pathway_kds) + [False] * len(design.unrelated_kds))


def _prepare(case: Case, ctx: RunContext, p: JacobianParams) -> tuple[LoadedModel, PanelDesign, np.ndarray]:
    model = ctx.model(case.axes["model"])
    design = _design(case, ctx, model, p)
    size = p.cell_set_size or model.cell_set_len
    regulators = tuple(dict.fromkeys(design.regulators + design.null_regulators))
    jac = jacobians(ctx, model.name, tuple(design.pathway_kds + design.unrelated_kds), regulators, p.mode, size,
                    p.seed, ctx.n_orderings(model.name, p.cell_orderings))
    return model, design, jac


def jacobians(ctx: RunContext, name: str, kds: tuple[str, ...], regulators: tuple[str, ...], mode: str, size: int,
              seed: int, n_orderings: int) -> np.ndarray:
    """[K, R, G] targeted Jacobians (probes/jacobian.py) on `size` seeded control cells. Rows are kept per
    (KD, regulator) for the run, so another regulator set (a calibration draw) computes only new pairs;
    on disk per KD and regulator set."""
    model = ctx.model(name)
    settings = (mode, size, seed, n_orderings)

    def compute() -> np.ndarray:
        row = {(kd, r): ("jacobian", name, kd, r, *settings) for kd in kds for r in regulators}
        disk = {kd: ctx.cache.key("targeted_jacobian", fingerprint=model.fingerprint, kd=kd, regulators=regulators,
                                  mode=mode, size=size, seed=seed, orderings=n_orderings) for kd in kds}
        for kd in [kd for kd in kds if not _has_rows(ctx, row, kd, regulators)]:
            found = ctx.cache.get(disk[kd])
            if found is not None:
                for j, r in enumerate(regulators):
                    ctx.remember(row[kd, r], found[j])
                ctx.tally(name, True)
        missing = [kd for kd in kds if not _has_rows(ctx, row, kd, regulators)]
        if missing:
            wanted = [r for r in regulators if any(not ctx.known(row[kd, r]) for kd in missing)]
            block = _targeted(ctx, model, missing, wanted, *settings)
            for i, kd in enumerate(missing):
                for j, r in enumerate(wanted):
                    ctx.remember(row[kd, r], block[i, j])
                ctx.cache.put(disk[kd], np.stack([ctx.recall(row[kd, r]) for r in regulators]))
            ctx.tally(name, False, len(missing))
        return np.stack([[ctx.recall(row[kd, r]) for r in regulators] for kd in kds])

    return ctx.stored("targeted_jacobian", name, compute, disk=False, kds=kds, regulators=regulators, mode=mode,
                      size=size, seed=seed, orderings=n_orderings)


def _has_rows(ctx: RunContext, row: dict, kd: str, regulators: tuple[str, ...]) -> bool:
    return all(ctx.known(row[kd, r]) for r in regulators)


def _targeted(ctx: RunContext, model: LoadedModel, kds: list[str], regulators: list[str], mode: str, size: int,
              seed: int, n_orderings: int) -> np.ndarray:
    genes = [model.input_genes.index(g) for g in regulators]
    block = targeted_jacobians(model.module, sample_cells(model.cells, size, seed), pert_reprs(model, kds), genes,
                               mode, random_orderings(size, n_orderings, seed),
                               progress=ctx.reporter(f"targeted Jacobians of {model.name} ({mode}, {len(genes)} "
                                                     "regulators)", "KDs"))
    return require_finite(block, "targeted Jacobians", model.name)


def _design(case: Case, ctx: RunContext, model: LoadedModel, p: JacobianParams) -> PanelDesign:
    """The pathway's KDs the model learned (common.scope) against learned KDs of no pathway: a KD the
    model never learned gets its generic answer, and is no comparison for pathway routing."""
    panel = case.spec.panels[case.axes["pathway"]]
    if not panel.regulators or not panel.targets:
        raise Inconclusive(f"pathway '{panel.name}' lists no regulators or no targets ({panel.source})")
    genes = model.gene_names

    def resolve(names, available, what, minimum):
        return resolve_members(names, available, model.gene_universe, panel=panel, model=model.name, what=what,
                               on_unknown=p.on_unknown, min_members=minimum)

    scope = common.scope(ctx, [model.name], panel.kds, panel, model.kd_names, model.gene_universe, p)
    kds, dropped = scope.present, scope.dropped
    regulators, lost_r = resolve(panel.regulators, model.input_genes, "regulators", 1)
    targets, lost_t = resolve(panel.targets, genes, "targets", 1)
    size = p.cell_set_size or model.cell_set_len
    unrelated, matched_to = _unrelated(case, panel, model, kds, scope.kds, p, resolve, lambda: np.linalg.norm(
        ctx.output_shifts(model.name, size, p.seed, ctx.n_orderings(model.name, p.cell_orderings))[
            [model.pert_index(k) for k in model.kd_names]], axis=1))
    inside = set(panel.genes) | set(panel.kds) | set(regulators) | set(targets)
    mean_expression = model.output_expression
    null_targets = _matched(targets, inside, case, panel, genes, mean_expression)
    null_regulators = _matched(regulators, inside | set(null_targets), case, panel, genes, mean_expression)
    return PanelDesign(kds, unrelated, regulators, targets, null_regulators, null_targets, dropped + lost_r + lost_t,
                       scope.learned, matched_to)


def _unrelated(case: Case, panel: Panel, model: LoadedModel, kds: list[str], learned: list[str], p: JacobianParams,
               resolve, magnitude) -> tuple[list[str], dict[str, str] | None]:
    """The comparison KDs: the panel's `unrelated_kds`, else learned KDs of no panel matched in
    magnitude to the pathway's (with the pathway KD each was matched to)."""
    usable = set(learned)
    if panel.unrelated_kds:
        named = resolve(panel.unrelated_kds, model.kd_names, "unrelated KDs", p.min_members)[0]
        kept = [k for k in named if k in usable]
        if len(kept) < p.min_members:
            missing = ", ".join(k for k in named if k not in usable)
            raise Inconclusive(f"only {len(kept)} of the unrelated KDs of pathway '{panel.name}' are learned by model "
                               f"'{model.name}' (need {p.min_members}); not learned: {missing}")
        return kept, None
    in_panels = {k for other in case.spec.panels.values() for k in (*other.kds, *other.genes)}
    pool = [k for k in model.kd_names if k not in in_panels and k not in kds and k in usable]
    if len(pool) < p.min_members:
        raise Inconclusive(f"only {len(pool)} learned KDs of model '{model.name}' belong to no panel; name the "
                           f"comparison KDs with 'unrelated_kds' in pathway '{panel.name}'")
    # at most half the pool: matches drawn from a nearly exhausted pool sit below the strongest pathway KDs and
    # above the weakest, and the within-group null then reads magnitude as pathway (tests/test_check_calibration.py)
    return _magnitude_matched(pool, kds, magnitude(), model, min(p.n_unrelated, len(pool) // 2))


def _magnitude_matched(pool: list[str], kds: list[str], magnitude: np.ndarray, model: LoadedModel,
                       n: int) -> tuple[list[str], dict[str, str]]:
    """`n` KDs of `pool` whose effect magnitudes follow the pathway KDs': taken in turn for each pathway
    KD (by rank), the free pool KD nearest in magnitude; with the pathway KD each was matched to. Weak
    KDs differ from strong ones in their Jacobians whatever their pathway, so the comparison KDs must
    be of similar strength, and the null permutes labels only within the matched groups."""
    index = {k: i for i, k in enumerate(model.kd_names)}
    free = sorted(pool, key=lambda k: magnitude[index[k]])
    matched_to: dict[str, str] = {}
    by_rank = sorted(kds, key=lambda k: magnitude[index[k]])
    while len(matched_to) < n and free:
        for kd in by_rank:
            if len(matched_to) == n or not free:
                break
            best = min(free, key=lambda k: abs(magnitude[index[k]] - magnitude[index[kd]]))
            matched_to[best] = kd
            free.remove(best)
    return sorted(matched_to), matched_to


def _matched(genes: list[str], exclude: set[str], case: Case, panel: Panel, all_genes: tuple[str, ...],
             mean_expression: np.ndarray) -> list[str]:
    """For each gene, the closest in mean control expression among other pathways' genes (else any gene
    outside the pathway), each used once."""
    other = {g for name, q in case.spec.panels.items() if name != panel.name for g in (*q.genes, *q.kds)}
    candidates = [g for g in all_genes if g in other and g not in exclude] or \
                 [g for g in all_genes if g not in exclude]
    index = {g: i for i, g in enumerate(all_genes)}
    chosen: list[str] = []
    for gene in genes:
        free = [g for g in candidates if g not in chosen]
        chosen.append(min(free, key=lambda g: abs(mean_expression[index[g]] - mean_expression[index[gene]])))
    return chosen


def _pair_values(jac: np.ndarray, regulators: list[str], targets: list[str], design: PanelDesign,
                 model: LoadedModel, p: JacobianParams) -> np.ndarray:
    """[K, pairs] each KD's J (|J| for magnitude 'absolute') on the (regulator, target) pairs."""
    order = list(dict.fromkeys(design.regulators + design.null_regulators))
    block = jac[:, [order.index(r) for r in regulators]][:, :, [model.gene_names.index(t) for t in targets]]
    return (np.abs(block) if p.magnitude == "absolute" else block).reshape(len(jac), -1)


def _kd_sensitivity(jac: np.ndarray, regulators: list[str], targets: list[str], design: PanelDesign,
                    model: LoadedModel, p: JacobianParams) -> np.ndarray:
    """[K] per KD: mean over the (regulator, target) pairs of its J, each pair scaled by the pair's
    mean |J| over all compared KDs (so no single pair of large sensitivity dominates)."""
    values = _pair_values(jac, regulators, targets, design, model, p)
    scale = np.abs(values).mean(axis=0)
    if not (scale > 0).any():
        raise Inconclusive("every KD gives zero sensitivity on every (regulator, target) pair")
    return (values[:, scale > 0] / scale[scale > 0]).mean(axis=1)


def _mean_sensitivity(jac: np.ndarray, regulators: list[str], targets: list[str], design: PanelDesign,
                      model: LoadedModel, p: JacobianParams) -> np.ndarray:
    """[K] per KD: its mean J over the (regulator, target) pairs, unscaled."""
    return _pair_values(jac, regulators, targets, design, model, p).mean(axis=1)


def _routing_scores(jac: np.ndarray, design: PanelDesign, model: LoadedModel, p: RoutingParams) -> np.ndarray:
    null = _mean_sensitivity(jac, design.null_regulators, design.null_targets, design, model, p)
    pathway = _mean_sensitivity(jac, design.regulators, design.targets, design, model, p)
    return pathway / np.where(np.abs(null) > 0, null, np.nan)


def _what(p: JacobianParams) -> str:
    return f"{'|J|' if p.magnitude == 'absolute' else 'J'} ({p.mode.replace('_', '-')} mode)"


def _sizes(p: JacobianParams, design: PanelDesign, ctx: RunContext, model: LoadedModel) -> dict[str, int]:
    return {"pathway_kds": len(design.pathway_kds), "unrelated_kds": len(design.unrelated_kds),
            "pairs": len(design.regulators) * len(design.targets), "cells": p.cell_set_size or model.cell_set_len,
            "cell_orderings": ctx.n_orderings(model.name, p.cell_orderings)}


FAMILY = Family("targeted_jacobian", (
        Check("targeted_jacobian", ("model", "pathway"), JacobianParams, panel_test,
              "dY[target]/dX[regulator] higher under pathway KDs than unrelated KDs, for the pathway's targets only",
              side="routed", needs=GENE_LEVEL),
        Check("jacobian_routing_score", ("model", "pathway"), RoutingParams, routing_score,
              "a per-KD score of pathway vs matched null sensitivity separates the pathway's KDs", side="routed",
              needs=GENE_LEVEL),
    ), Card(settings=("mode", "cell_set_size")))
