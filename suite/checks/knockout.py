"""In-silico knockout checks (Option 4, NB04): when an input gene is removed, does the model
respond in a pathway-coherent way, and the same way in two cell lines?

knockout_cross_line   per gene i: Spearman r between i's KO profile (output shift when X[:, i] = 0)
                      in model A and in model B, over the output genes both predict, i's own output
                      left out. Passes when the pathway's mean r exceeds the notes' 0.4 *and* random
                      gene sets of similar KO magnitude agree less (p < 0.05): in the demo every
                      gene agrees at r ~ 0.37 between two models, so 0.4 alone passes a decoy.
                      CI of the mean over genes by Student t; the per-gene r table is reported
                      (the notes found mean r = 0.057; MYC 0.355, TRAPPC3 0.001).
knockout_coherence    within one model: cosine between the pathway genes' KO profiles (own outputs
                      left out) against all KO profiles; random gene sets as close to the common KO
                      response as the members (`null_match: genericness`; generic KO profiles resemble
                      each other, which plain permutation and KO-magnitude strata read as coherence:
                      the demo's decoy genes, cosine 0.6 to the mean profile against 0.24-0.33 for all
                      genes, passed at p 0.001-0.008 under KO-norm strata).

KO genes: a model's precomputed matrix if the registry gives one, else the hypothesis panels'
genes plus the most variable remaining genes, up to `n_genes`, knocked out under `perturbation`
(the control by default).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.stats import rankdata

from core.errors import Inconclusive
from probes.audit import random_orderings
from probes.embeddings import sample_cells
from probes.knockout import knockout_matrix, load_knockout_matrix

from .. import stats
from ..families import GENE_LEVEL, Card, Check, Family
from ..session import parse_reinitialised, pert_reprs
from ..verdicts import Evidence, PassRule
from . import common
from .common import NullParams

if TYPE_CHECKING:
    from fixtures.arc_state import LoadedModel

    from ..cases import Case
    from ..session import RunContext


@dataclass(frozen=True)
class KnockoutParams(NullParams):
    n_genes: int = 200
    perturbation: str | None = None        # default: the model's control perturbation
    exclude_self: bool = True              # leave each KO gene's own output out
    cell_set_size: int | None = None
    # knockout_coherence's strata: a gene the model reads as uninformative gets the model's common KO
    # response, so such genes look alike whatever their biology; matching on how close each profile
    # is to the all-gene mean profile ("genericness") compares a pathway with genes as generic as its own
    null_match: Literal["genericness", "ko_norm"] = "genericness"

    LIMITS = {**NullParams.LIMITS, "n_genes": (3, 100_000)}


def cross_line(case: Case, ctx: RunContext) -> Evidence:
    p: KnockoutParams = case.spec.params
    models = [ctx.model(n) for n in case.axes["model_pair"]]
    (ko_a, rows_a, source_a), (ko_b, rows_b, source_b) = (_knockouts(ctx, m, case, p, models) for m in models)
    genes = [g for g in rows_a if g in set(rows_b)]
    outputs = [g for g in models[0].gene_names if g in set(models[1].gene_names)]
    a = _select(ko_a, rows_a, genes, models[0].gene_names, outputs)
    b = _select(ko_b, rows_b, genes, models[1].gene_names, outputs)
    r = per_gene_spearman(a, b, [outputs.index(g) if p.exclude_self and g in outputs else -1 for g in genes])
    present, dropped, members = _members(case, genes, models[0].gene_universe | models[1].gene_universe, p,
                                         f"{models[0].name} and {models[1].name}")
    observed = float(np.nanmean(r[members]))
    magnitude = (np.linalg.norm(a, axis=1) / np.linalg.norm(a, axis=1).mean()
                 + np.linalg.norm(b, axis=1) / np.linalg.norm(b, axis=1).mean())
    with warnings.catch_warnings():     # a null set of genes without any defined r gives NaN, which never counts
        warnings.simplefilter("ignore", RuntimeWarning)
        null = np.nanmean(r[common.null_sets(p, members, len(r), lambda: magnitude)], axis=1)
    # the interval of the effect it stands beside: the all-gene mean is the fixed reference
    ci = stats.mean_ci(r[members] - float(np.nanmean(r)))
    table = sorted(({"gene": genes[i], "r": float(r[i])} for i in members), key=lambda row: -row["r"])
    return Evidence(
        statistic="mean over the pathway's genes of the Spearman r between their KO profiles in the two models"
                  + (" (own output left out)" if p.exclude_self else ""),
        value=observed, effect=observed - float(np.nanmean(r)), ci=ci,
        p=stats.exact_p(null, observed), seed=p.seed,
        n={"members": len(members), "ko_genes": len(genes), "output_genes": len(outputs),
           "permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), len(genes), "KO-profile norm", "genes"),
        details={"mean_r_all_genes": float(np.nanmean(r)), "table": table, "dropped": dropped,
                 "map": common.pca_map(a, genes, {n: panel.genes for n, panel in case.spec.panels.items()},
                                       case.axes["pathway"]),
                 "sources": [source_a, source_b], "null_histogram": common.histogram(null, observed)})


def coherence(case: Case, ctx: RunContext) -> Evidence:
    p: KnockoutParams = case.spec.params
    model = ctx.model(case.axes["model"])
    ko, rows, source = _knockouts(ctx, model, case, p, [model])
    profiles = ko.copy()
    if p.exclude_self:
        profiles[np.arange(len(rows)), [model.gene_names.index(g) for g in rows]] = 0.0
    present, dropped, members = _members(case, list(rows), model.gene_universe, p, model.name)
    null_sets = common.null_sets(p, members, len(rows), lambda: _match_on(profiles, p.null_match))
    found = common.set_coherence(members, null_sets, vectors=profiles)
    # resampled genes are compared by position, so a gene drawn twice is not paired with its own copy
    member_sim = stats.cosine_similarity_matrix(profiles[members])
    ci = stats.bootstrap_ci(lambda s: stats.mean_pairwise(member_sim, s) - found.background,
                            np.arange(len(members)), np.random.default_rng(p.seed), p.n_bootstrap)
    return Evidence(
        statistic="mean within-pathway cosine - mean all-pairs cosine of KO profiles", value=found.excess,
        effect=found.excess, ci=ci, p=found.test.p, seed=p.seed,
        n={"members": len(members), "ko_genes": len(rows), "permutations": p.n_permutations},
        null=common.set_null_text(p, len(members), len(rows), _MATCH_TEXT[p.null_match], "genes"),
        details=found.details(common.similarity_heatmap(
            lambda idx: stats.cosine_similarity_matrix(profiles[idx]), list(rows), members,
            {n: panel.genes for n, panel in case.spec.panels.items()}, case.axes["pathway"])) | {
            "members": present, "dropped": dropped, "source": source,
            "map": common.pca_map(profiles, list(rows), {n: panel.genes for n, panel in case.spec.panels.items()},
                                  case.axes["pathway"]),
            "genericness": {"members": float(np.mean(_match_on(profiles, "genericness")[members])),
                            "all_genes": float(np.mean(_match_on(profiles, "genericness")))}})


_MATCH_TEXT = {"genericness": "cosine to the all-gene mean KO profile", "ko_norm": "KO-profile norm"}


def _match_on(profiles: np.ndarray, what: str) -> np.ndarray:
    if what == "ko_norm":
        return np.linalg.norm(profiles, axis=1)
    return stats.unit_rows(profiles) @ stats.unit_rows(profiles.mean(axis=0, keepdims=True))[0]


def per_gene_spearman(a: np.ndarray, b: np.ndarray, leave_out: list[int]) -> np.ndarray:
    """Spearman r between row i of `a` and of `b`, without column leave_out[i] (-1: none); NaN where
    either row is constant."""
    a, b = np.asarray(a, dtype=float).copy(), np.asarray(b, dtype=float).copy()
    undefined = ~np.isfinite(a).all(axis=1) | ~np.isfinite(b).all(axis=1)     # NaN in, NaN out: never dropped
    rows = np.arange(len(a))
    out = np.asarray(leave_out)
    left = out >= 0
    a[rows[left], out[left]], b[rows[left], out[left]] = np.nan, np.nan
    ranks = [rankdata(m, axis=1, nan_policy="omit") for m in (a, b)]     # the left-out column stays NaN
    centred = [x - np.nanmean(x, axis=1, keepdims=True) for x in ranks]
    products = [np.nansum(x * y, axis=1) for x, y in ((centred[0], centred[1]), (centred[0], centred[0]),
                                                      (centred[1], centred[1]))]
    cov, var_a, var_b = products
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_a * var_b)
    return np.where((var_a > 0) & (var_b > 0) & ~undefined, r, np.nan)


def _knockouts(ctx: RunContext, model: LoadedModel, case: Case, p: KnockoutParams, models: list[LoadedModel]):
    size = p.cell_set_size or model.cell_set_len
    perturbation = p.perturbation or model.control_pert
    if perturbation not in model.pert_names:
        raise Inconclusive(f"perturbation '{perturbation}' is not in model '{model.name}'")
    return knockouts(ctx, model.name, _ko_genes(case, models, p), perturbation, size, p.seed,
                         ctx.n_orderings(model.name, p.cell_orderings))


def knockouts(ctx: RunContext, name: str, genes: tuple[str, ...], perturbation: str, size: int, seed: int,
              n_orderings: int) -> tuple[np.ndarray, tuple[str, ...], str]:
    """(KO matrix [n, G], its row genes, where it came from): the registry's precomputed matrix
    if the model has one, else the model's prediction with each of `genes` zeroed."""
    model = ctx.model(name)
    entry = ctx.entry(name).knockout
    if parse_reinitialised(name)[1] is not None:
        entry = None    # a file of the trained model's knockouts says nothing about its re-initialised copy
    if entry is not None:
        def load() -> tuple[np.ndarray, tuple[str, ...], str]:
            matrix, rows = load_knockout_matrix(Path(entry.path), Path(entry.genes), model.gene_names)
            return matrix, tuple(rows), f"precomputed {entry.path}"

        return ctx.stored("knockout_file", name, load, disk=False)

    def compute() -> np.ndarray:
        cells = sample_cells(model.cells, size, seed)
        rep = pert_reprs(model, [perturbation])[0]
        return knockout_matrix(model.module, cells, rep, [model.input_genes.index(g) for g in genes],
                               random_orderings(size, n_orderings, seed))

    rows = ctx.stored("knockout", name, compute, genes=genes, perturbation=perturbation, size=size, seed=seed,
                      orderings=n_orderings)
    return rows, genes, f"predicted on {size} control cells under {perturbation}"


def _ko_genes(case: Case, models: list[LoadedModel], p: KnockoutParams) -> tuple[str, ...]:
    """The panels' genes that every model reads, then the most variable others, up to n_genes."""
    common_genes = [g for g in models[0].gene_names
                    if all(g in set(m.gene_names) and g in set(m.input_genes) for m in models)]
    wanted = {g for panel in case.spec.panels.values() for g in panel.genes}
    chosen = [g for g in common_genes if g in wanted][: p.n_genes]
    variance = models[0].expression.var(dim=0).double().cpu().numpy()
    index = {g: i for i, g in enumerate(models[0].input_genes)}
    rest = sorted((g for g in common_genes if g not in wanted), key=lambda g: -variance[index[g]])
    chosen += rest[: p.n_genes - len(chosen)]
    return tuple(g for g in common_genes if g in set(chosen))


def _select(ko: np.ndarray, rows: tuple[str, ...], genes: list[str], columns: tuple[str, ...],
            outputs: list[str]) -> np.ndarray:
    col = {g: i for i, g in enumerate(columns)}
    return ko[[rows.index(g) for g in genes]][:, [col[g] for g in outputs]]


def _members(case: Case, genes, universe, p: KnockoutParams, model: str):
    panel = case.spec.panels[case.axes["pathway"]]
    return common.member_positions(panel, panel.genes, list(genes), universe, p, model=model, what="KO genes")


def _cross_line_rule(_params: KnockoutParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=None, statistic_above=0.4)


def _coherence_rule(_params: KnockoutParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=0.1)


FAMILY = Family("knockout", (
        Check("knockout_cross_line", ("model_pair", "pathway"), KnockoutParams, cross_line,
              "zeroing a pathway gene shifts the outputs alike in two models (mean Spearman r > 0.4, beating random "
              "genes)", _cross_line_rule, needs=GENE_LEVEL, kd_background=False),
        Check("knockout_coherence", ("model", "pathway"), KnockoutParams, coherence,
              "a pathway's genes have similar KO profiles in one model", _coherence_rule, side="routed",
              needs=GENE_LEVEL, kd_background=False),
    ), Card(settings=("cell_set_size", "null_model"), reference="mean_r_all_genes"))
