"""Targeted Jacobian checks (Option 3, NB03): is dY[target]/dX[regulator] elevated under the
pathway's KDs, and only for the pathway's targets?

targeted_jacobian        per (regulator, target) pair: mean |J| over the pathway's KDs vs over
                         unrelated KDs; one-sided Wilcoxon signed-rank over the pairs. Passes only
                         if the same test on unrelated targets (matched in mean expression) does
                         *not* pass: elevated sensitivity everywhere is not pathway routing.
jacobian_routing_score   per KD: mean |J| on the pathway's pairs / on matched null pairs (regulator
                         and target from other pathways, similar mean expression); does the score
                         separate the pathway's KDs from unrelated KDs? AUROC, permutation p.

Unrelated KDs are the panel's `unrelated_kds`, else `n_unrelated` KDs (seeded) that belong to
no panel of the hypothesis. Every result records the Jacobian mode (per_cell or set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pingouin

from .. import stats
from ..errors import Inconclusive
from ..matrix_tests import auroc
from ..verdicts import Evidence
from . import Check, common
from .members import resolve_members

if TYPE_CHECKING:
    from fixtures.arc_state import LoadedModel

    from ..cases import Case
    from ..panels import Panel
    from ..session import RunContext

MIN_PAIRS = 5          # a one-sided signed-rank test over fewer pairs cannot reach p < 0.05


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
    n_bootstrap: int = 500
    seed: int = 0

    LIMITS = {"n_unrelated": (2, 100_000), "specificity_alpha": (0.0, 1.0), "cell_set_size": (2, 1_000_000),
              "cell_orderings": (1, 10_000), "min_members": (2, 100_000), "n_bootstrap": (99, 1_000_000),
              "n_permutations": (99, 1_000_000)}


@dataclass(frozen=True)
class RoutingParams(JacobianParams):
    n_permutations: int = 2000


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


def panel_test(case: Case, ctx: RunContext) -> Evidence:
    p: JacobianParams = case.spec.params
    model, design, jac = _prepare(case, ctx, p)
    n_path = len(design.pathway_kds)
    main = _pair_means(jac, n_path, design.regulators, design.targets, design, model, p)
    spec = _pair_means(jac, n_path, design.regulators, design.null_targets, design, model, p)
    result, specificity = _wilcoxon(*main), _wilcoxon(*spec)
    rng = np.random.default_rng(p.seed)
    boot = [_wilcoxon(*_pair_means(_resample(jac, n_path, rng), n_path, design.regulators, design.targets, design,
                                   model, p))["rbc"] for _ in range(p.n_bootstrap)]
    held = specificity["p"] >= p.specificity_alpha
    return Evidence(
        statistic=f"rank-biserial r of {_what(p)} (pathway KDs vs unrelated KDs) over (regulator, target) pairs",
        value=result["rbc"], effect=result["rbc"], ci=common.percentile_ci(boot), p=result["p"],
        n=_sizes(p, design, ctx, model), seed=p.seed,
        null="one-sided Wilcoxon signed-rank over (regulator, target) pairs: pathway-KD mean vs unrelated-KD mean",
        conditions=((held, f"specificity: unrelated targets give p = {specificity['p']:.3g} "
                           f"({'>=' if held else '<'} {p.specificity_alpha})"),),
        details={"mode": p.mode, "W": result["W"], "CLES": result["cles"], "specificity_p": specificity["p"],
                 "specificity_rbc": specificity["rbc"], "pathway_kds": design.pathway_kds,
                 "unrelated_kds": design.unrelated_kds, "regulators": design.regulators, "targets": design.targets,
                 "unrelated_targets": design.null_targets, "dropped": design.dropped,
                 "pathway_mean": float(main[0].mean()), "unrelated_mean": float(main[1].mean())})


def routing_score(case: Case, ctx: RunContext) -> Evidence:
    p: RoutingParams = case.spec.params
    model, design, jac = _prepare(case, ctx, p)
    scores = _routing_scores(jac, design, model, p)
    kds = design.pathway_kds + design.unrelated_kds
    undefined = [kd for kd, score in zip(kds, scores, strict=True) if not np.isfinite(score)]
    if undefined:
        raise Inconclusive(f"{len(undefined)} of {len(kds)} KDs have zero sensitivity on the matched null pairs, so "
                           f"their routing score is undefined: {', '.join(undefined[:8])}")
    labels = np.array([True] * len(design.pathway_kds) + [False] * len(design.unrelated_kds))
    observed = auroc(scores, labels)
    rng = np.random.default_rng(p.seed)
    null = np.array([auroc(scores, rng.permutation(labels)) for _ in range(p.n_permutations)])
    boot = []
    for _ in range(p.n_bootstrap):
        picks = np.concatenate([rng.choice(np.flatnonzero(labels), labels.sum()),
                                rng.choice(np.flatnonzero(~labels), (~labels).sum())])
        boot.append(auroc(scores[picks], labels[picks]) - 0.5)
    return Evidence(
        statistic=f"AUROC of the per-KD routing score ({_what(p)} on pathway pairs / on matched null pairs)",
        value=observed, effect=observed - 0.5, ci=common.percentile_ci(boot), p=stats.exact_p(null, observed),
        n=_sizes(p, design, ctx, model) | {"permutations": p.n_permutations}, seed=p.seed,
        null=f"{p.n_permutations} permutations of the pathway / unrelated labels of the KDs",
        details={"mode": p.mode, "scores": {k: float(s) for k, s in zip(kds, scores, strict=True)},
                 "null_regulators": design.null_regulators, "null_targets": design.null_targets,
                 "null_histogram": common.histogram(null, observed), "dropped": design.dropped})


def _prepare(case: Case, ctx: RunContext, p: JacobianParams) -> tuple[LoadedModel, PanelDesign, np.ndarray]:
    model = ctx.model(case.axes["model"])
    design = _design(case, model, p)
    size = p.cell_set_size or model.cell_set_len
    regulators = tuple(dict.fromkeys(design.regulators + design.null_regulators))
    jac = ctx.jacobians(model.name, tuple(design.pathway_kds + design.unrelated_kds), regulators, p.mode, size,
                        p.seed, ctx.n_orderings(model.name, p.cell_orderings))
    return model, design, jac


def _design(case: Case, model: LoadedModel, p: JacobianParams) -> PanelDesign:
    panel = case.spec.panels[case.axes["pathway"]]
    if not panel.regulators or not panel.targets:
        raise Inconclusive(f"pathway '{panel.name}' lists no regulators or no targets ({panel.source})")
    genes = model.gene_names

    def resolve(names, available, what, minimum):
        return resolve_members(names, available, model.gene_universe, panel=panel, model=model.name, what=what,
                               on_unknown=p.on_unknown, min_members=minimum)

    kds, dropped = resolve(panel.kds, model.kd_names, "KDs", p.min_members)
    regulators, lost_r = resolve(panel.regulators, genes, "regulators", 1)
    targets, lost_t = resolve(panel.targets, genes, "targets", 1)
    if len(regulators) * len(targets) < MIN_PAIRS:
        raise Inconclusive(f"pathway '{panel.name}' has {len(regulators)} x {len(targets)} (regulator, target) "
                           f"pairs in model '{model.name}'; a one-sided signed-rank test needs at least {MIN_PAIRS} "
                           "to reach p < 0.05")
    unrelated = _unrelated(case, panel, model, kds, p, resolve)
    inside = set(panel.genes) | set(panel.kds) | set(regulators) | set(targets)
    mean_expression = model.cells.mean(dim=0).double().cpu().numpy()
    null_targets = _matched(targets, inside, case, panel, genes, mean_expression)
    null_regulators = _matched(regulators, inside | set(null_targets), case, panel, genes, mean_expression)
    return PanelDesign(kds, unrelated, regulators, targets, null_regulators, null_targets, dropped + lost_r + lost_t)


def _unrelated(case: Case, panel: Panel, model: LoadedModel, kds: list[str], p: JacobianParams, resolve) -> list[str]:
    if panel.unrelated_kds:
        return resolve(panel.unrelated_kds, model.kd_names, "unrelated KDs", p.min_members)[0]
    in_panels = {k for other in case.spec.panels.values() for k in (*other.kds, *other.genes)}
    pool = [k for k in model.kd_names if k not in in_panels and k not in kds]
    if len(pool) < p.min_members:
        raise Inconclusive(f"only {len(pool)} KDs of model '{model.name}' belong to no panel; name the comparison "
                           f"KDs with 'unrelated_kds' in pathway '{panel.name}'")
    rng = np.random.default_rng(p.seed)
    return sorted(rng.choice(pool, size=min(p.n_unrelated, len(pool)), replace=False).tolist())


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


def _pair_means(jac: np.ndarray, n_path: int, regulators: list[str], targets: list[str], design: PanelDesign,
                model: LoadedModel, p: JacobianParams) -> tuple[np.ndarray, np.ndarray]:
    """Per (regulator, target) pair: mean J over pathway KDs, and over unrelated KDs."""
    order = list(dict.fromkeys(design.regulators + design.null_regulators))
    rows = [order.index(r) for r in regulators]
    cols = [model.gene_names.index(t) for t in targets]
    values = jac[:, rows][:, :, cols]
    values = np.abs(values) if p.magnitude == "absolute" else values
    return values[:n_path].mean(axis=0).ravel(), values[n_path:].mean(axis=0).ravel()


def _wilcoxon(pathway: np.ndarray, unrelated: np.ndarray) -> dict[str, float]:
    """pingouin's one-sided signed-rank test, in the suite's own names (pingouin >= 0.6 columns)."""
    if np.allclose(pathway, unrelated):
        raise Inconclusive("the pathway and unrelated KDs give identical sensitivities on every pair")
    row = pingouin.wilcoxon(pathway, unrelated, alternative="greater").iloc[0]
    return {"W": float(row["W_val"]), "p": float(row["p_val"]), "rbc": float(row["RBC"]), "cles": float(row["CLES"])}


def _resample(jac: np.ndarray, n_path: int, rng: np.random.Generator) -> np.ndarray:
    """The Jacobian rows with pathway and unrelated KDs each resampled with replacement."""
    return np.concatenate([jac[rng.integers(0, n_path, n_path)],
                           jac[n_path + rng.integers(0, len(jac) - n_path, len(jac) - n_path)]])


def _routing_scores(jac: np.ndarray, design: PanelDesign, model: LoadedModel, p: RoutingParams) -> np.ndarray:
    order = list(dict.fromkeys(design.regulators + design.null_regulators))

    def per_kd(regulators: list[str], targets: list[str]) -> np.ndarray:
        block = jac[:, [order.index(r) for r in regulators]][:, :, [model.gene_names.index(t) for t in targets]]
        block = np.abs(block) if p.magnitude == "absolute" else block
        return block.reshape(len(jac), -1).mean(axis=1)

    null = per_kd(design.null_regulators, design.null_targets)
    return per_kd(design.regulators, design.targets) / np.where(np.abs(null) > 0, null, np.nan)


def _what(p: JacobianParams) -> str:
    return f"{'|J|' if p.magnitude == 'absolute' else 'J'} ({p.mode.replace('_', '-')} mode)"


def _sizes(p: JacobianParams, design: PanelDesign, ctx: RunContext, model: LoadedModel) -> dict[str, int]:
    return {"pathway_kds": len(design.pathway_kds), "unrelated_kds": len(design.unrelated_kds),
            "pairs": len(design.regulators) * len(design.targets), "cells": p.cell_set_size or model.cell_set_len,
            "cell_orderings": ctx.n_orderings(model.name, p.cell_orderings), "bootstrap": p.n_bootstrap}


CHECKS = (
    Check("targeted_jacobian", ("model", "pathway"), JacobianParams, panel_test,
          "dY[target]/dX[regulator] higher under pathway KDs than unrelated KDs, for the pathway's targets only",
          side="routed"),
    Check("jacobian_routing_score", ("model", "pathway"), RoutingParams, routing_score,
          "a per-KD score of pathway vs matched null sensitivity separates the pathway's KDs", side="routed"),
)
