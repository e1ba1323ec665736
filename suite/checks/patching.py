"""SAE feature patching (NB07, and seed note 002's convergent-evidence claim): do the SAE features
that a pathway's KDs switch on carry the KDs' predicted response to the pathway's own genes?

sae_feature_patching   per model and pathway, on the registry's SAE of block L:
  1. selection, on one half of the control cells (cell sets disjoint from the other half): each
     SAE feature's mean activation under each KD; the pathway's features are the `n_features`
     whose mean under the pathway's KDs exceeds that under the model's other learned KDs most;
  2. evaluation, on the other half: those features ablated (or steered) during the forward pass,
     the SAE's error term kept (probes/patching.py), under each of the pathway's KDs;
  3. per KD, NB07's "sec_specific" normalisation: the mean |change of the prediction| on the
     pathway's genes (the panel's `genes`, or its `targets`) over the mean |change| on all genes,
     the KD's own target left out of both; the statistic is its mean over the pathway's KDs;
  4. null: `n_permutations` random feature sets with as many features as the chosen ones from
     each stratum of ~`stratum_size` features alike in activation frequency and magnitude over the
     learned KDs, drawn from the features the selection does not rank among the
     `exclude_top` x `n_features` most pathway-like (the chosen ones and the pathway's other
     likely features: NB07's question is the pathway's features against the background), patched
     the same way; p is the share of draws at least as specific. Effect:
     the statistic minus the draws' mean, with the Student-t CI over the KDs of each KD's excess;
  5. selectivity: the effect must beat the same procedure's effect on `reinit_copies`
     re-initialised copies of the model (the SAE read on their hidden states).

The response genes come from the panel, not from the model. Genes chosen because the pathway's KDs
move them most are moved by whatever features carry those KDs' signal, in any model and for any
KD set (a label-permuted panel passes); the panel's genes are the biology the test asks about. And
the test runs over the KDs the model learned (common.scope): a KD it did not learn gets the generic
response, and its "features" are the generic ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from core.errors import Inconclusive
from probes.audit import random_orderings
from probes.patching import feature_activity, feature_masks, masked_effects
from probes.representations import Readout, cell_sets, per_set_shifts

from .. import stats
from ..families import Card, Check, Family
from ..session import pert_reprs, reinitialised_name
from ..verdicts import Evidence, PassRule
from . import common

if TYPE_CHECKING:
    from probes.sae import SparseAutoencoder

    from ..cases import Case
    from ..session import RunContext


@dataclass(frozen=True)
class PatchingParams:
    mode: Literal["ablate", "steer"] = "ablate"
    scale: float = 0.0                   # steer: added to each chosen feature's activation
    n_features: int = 8                  # features chosen for the pathway
    response_genes: Literal["genes", "targets"] = "genes"    # which panel field holds the pathway's genes
    stratum_size: int = 64               # features per stratum of similar activation frequency and magnitude
    exclude_top: int = 4                 # the null leaves out the exclude_top x n_features most pathway-like features
    n_cell_sets: int = 4                 # per half: selection and evaluation sets are disjoint
    cell_set_size: int | None = None     # default: the model's cell_set_len
    cell_orderings: int | None = None
    n_permutations: int = 199            # matched random feature sets
    reinit_copies: int = 3               # re-initialised copies the effect must beat (0: none, else >= 2)
    min_members: int = 3
    on_unknown: Literal["error", "drop"] = "error"
    seed: int = 0

    LIMITS = {"n_features": (1, 100_000), "stratum_size": (2, 100_000), "exclude_top": (1, 1000),
              "n_cell_sets": (1, 10_000),
              "cell_set_size": (2, 1_000_000), "cell_orderings": (1, 10_000), "n_permutations": (99, 1_000_000),
              "reinit_copies": (0, 100), "min_members": (2, 100_000), "seed": (0, 2 ** 32 - 1)}


def validate(p: PatchingParams) -> str | None:
    if p.mode == "steer" and p.scale == 0:
        return "mode 'steer' needs a non-zero 'scale' (what is added to each chosen feature's activation)"
    if p.mode == "ablate" and p.scale != 0:
        return "'scale' applies to mode 'steer' only"
    return common.copies_problem(p)


# ---- the numbers (pure functions) ----------------------------------------------------------------

def select_features(mean: np.ndarray, pathway: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the up to `n` features whose mean activation [K, F] under the `pathway` rows (bool [K])
    exceeds that under the other rows most, with a positive excess; every feature's excess)."""
    contrast = mean[pathway].mean(axis=0) - mean[~pathway].mean(axis=0)
    order = np.argsort(-contrast, kind="stable")[:n]
    return order[contrast[order] > 0], contrast


def activity_strata(frequency: np.ndarray, magnitude: np.ndarray, stratum_size: int) -> list[np.ndarray]:
    """The SAE's features cut into strata of about `stratum_size` features alike in activation
    frequency and magnitude: quantile bins of frequency, each cut by magnitude."""
    n_bins = max(1, round(np.sqrt(len(frequency) / stratum_size)))
    by_frequency = np.array_split(np.argsort(frequency, kind="stable"), n_bins)
    return [stratum for features in by_frequency for stratum in stats.magnitude_strata(magnitude, features,
                                                                                         stratum_size)]


def matched_feature_sets(selected: np.ndarray, frequency: np.ndarray, magnitude: np.ndarray, stratum_size: int,
                         n: int, rng: np.random.Generator, candidates: np.ndarray | None = None) -> np.ndarray:
    """[n, len(selected)] random feature sets with as many features from each activity stratum as
    the selected ones have there, drawn from the stratum's `candidates` (default: all of it, the
    selected features included: a permutation of which features were chosen). A pool must stay
    large: the first version drew from each chosen feature's ten nearest other features, a null
    narrower than the spread of the chosen set's own mean that passed 11% of random panels
    (tests/test_check_calibration.py)."""
    if len(frequency) < 2 * len(selected):
        raise Inconclusive(f"the SAE has {len(frequency)} features: too few besides the {len(selected)} chosen "
                           "for a null of matched random features")
    strata = activity_strata(frequency, magnitude, stratum_size)
    if candidates is None:
        return stats.stratified_sets(rng, strata, selected, n)
    where = {int(f): i for i, stratum in enumerate(strata) for f in stratum}
    counts = np.bincount([where[int(f)] for f in selected], minlength=len(strata))
    pools = [np.intersect1d(stratum, candidates) for stratum in strata]
    short = [i for i, c in enumerate(counts) if c and len(pools[i]) < 2 * c]
    if short:
        raise Inconclusive(f"too few candidate features in the activity strata of the chosen ones (stratum "
                           f"{short[0]}: {len(pools[short[0]])} for {counts[short[0]]}); raise stratum_size")
    return np.hstack([stats.random_sets(rng, pools[i], int(c), n) for i, c in enumerate(counts) if c])


def specificity(effects: np.ndarray, response: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """[N, K] NB07's normalised effect of intervention n under KD k: mean |effect| [N, K, G] on the
    `response` genes over mean |effect| on the `judged` genes (both bool [K, G]); NaN without effect."""
    size = np.abs(effects)
    on_response = (size * response).sum(axis=-1) / response.sum(axis=-1)
    on_all = (size * judged).sum(axis=-1) / judged.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(on_all > 0, on_response / on_all, np.nan)


@dataclass(frozen=True)
class PatchingTest:
    """The chosen features' specificity against matched random features'."""

    per_kd: np.ndarray           # [K] under the chosen features
    null_per_kd: np.ndarray      # [draws, K] under each defined null draw
    undefined: int               # null draws without any effect under some KD (left out)

    @property
    def observed(self) -> float:
        return float(self.per_kd.mean())

    @property
    def null(self) -> np.ndarray:
        return self.null_per_kd.mean(axis=1)

    @property
    def p(self) -> float:
        return stats.exact_p(self.null, self.observed)

    @property
    def excess(self) -> np.ndarray:
        """[K] each KD's specificity minus its mean over the null draws; the effect is their mean."""
        return self.per_kd - self.null_per_kd.mean(axis=0)

    @property
    def effect(self) -> float:
        return float(self.excess.mean())


def patching_test(specific: np.ndarray) -> PatchingTest:
    """The test on [1 + draws, K] specificities (row 0: the chosen features)."""
    if not np.isfinite(specific[0]).all():
        raise Inconclusive("patching the chosen features changes nothing under some of the pathway's KDs")
    defined = np.isfinite(specific[1:]).all(axis=1)
    if defined.sum() < len(defined) / 2:
        raise Inconclusive(f"{int((~defined).sum())} of {len(defined)} matched random feature sets change nothing "
                           "under some KD: too few for a null")
    return PatchingTest(specific[0], specific[1:][defined], int((~defined).sum()))


# ---- the check -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Design:
    """What a case compares, resolved against the (trained) model: its copies are probed on the same."""

    pathway: list[str]           # the pathway's learned KDs
    others: list[str]            # the model's other learned KDs (the selection's contrast)
    response: list[str]          # the pathway's genes among the model's outputs
    dropped: list[str]
    learned: dict


@dataclass(frozen=True)
class Patched:
    features: np.ndarray         # the chosen features
    contrast: np.ndarray         # [F] every feature's selection excess
    test: PatchingTest
    removed: np.ndarray          # [1 + draws, K] share of each KD's predicted response on its genes removed


def feature_patching(case: Case, ctx: RunContext) -> Evidence:
    p: PatchingParams = case.spec.params
    name = case.axes["model"]
    sae, layer = ctx.sae(name)
    if sae.W_dec is None:
        raise Inconclusive(f"the SAE of model '{name}' ({sae.source}) has no decoder (W_dec), so its features "
                           "cannot be patched; export it with its decoder weights")
    design = _design(case, ctx, name, p)
    found = _patched(ctx, name, design, sae, layer, p)
    test = found.test
    table = [{"kd": kd, "specificity": float(s), "null_mean": float(m), "removed": float(r)}
             for kd, s, m, r in zip(design.pathway, test.per_kd, test.null_per_kd.mean(axis=0), found.removed[0],
                                    strict=True)]
    evidence = Evidence(
        statistic=f"mean over the pathway's KDs of |{p.mode} effect| on its {p.response_genes} / on all genes "
                  f"(NB07's normalisation), {len(found.features)} SAE features of layer {layer}",
        value=test.observed, effect=test.effect, ci=stats.mean_ci(test.excess), p=test.p, seed=p.seed,
        n={"pathway_kds": len(design.pathway), "other_kds": len(design.others), "response_genes": len(design.response),
           "features": len(found.features), "null_draws": len(test.null), "cell_sets": p.n_cell_sets,
           "cell_orderings": ctx.n_orderings(name, p.cell_orderings)},
        null=(f"{len(test.null)} random sets of {len(found.features)} SAE features with as many from each stratum of "
              f"~{p.stratum_size} features of similar activation frequency and magnitude over the learned KDs as "
              f"the chosen ones, the {p.exclude_top * len(found.features)} most pathway-like features left out"
              + (f" ({test.undefined} draws without effect left out)" if test.undefined else "")),
        details={"layer": layer, "mode": p.mode, "pathway_kds": design.pathway, "response_genes": design.response,
                 "features": [{"feature": int(f), "excess": float(found.contrast[f])} for f in found.features],
                 "table": table, "null_mean": float(test.null.mean()),
                 "response_removed": {"chosen": float(found.removed[0].mean()),
                                      "matched_random": float(np.nanmean(found.removed[1:]))},
                 "dropped": design.dropped, "learned": design.learned,
                 "null_histogram": common.histogram(test.null, test.observed)})
    drawn = (_patched(ctx, reinitialised_name(name, i), design, sae, layer, p).test.effect
             for i in range(p.reinit_copies))
    return common.beat_copies(evidence, evidence.effect, drawn, p.reinit_copies, name, "effect ")


def _design(case: Case, ctx: RunContext, name: str, p: PatchingParams) -> Design:
    model = ctx.model(name)
    panel = case.spec.panels[case.axes["pathway"]]
    scope = common.scope(ctx, [name], panel.kds, panel, model.kd_names, model.gene_universe, p)
    genes = panel.genes if p.response_genes == "genes" else panel.targets
    if not genes:
        raise Inconclusive(f"pathway '{panel.name}' lists no {p.response_genes} ({panel.source})")
    response, lost = common.resolve_members(genes, model.gene_names, model.gene_universe, panel=panel, model=name,
                                            what=p.response_genes, on_unknown=p.on_unknown, min_members=2)
    members = set(scope.present)
    return Design(scope.present, [k for k in scope.kds if k not in members], response, scope.dropped + lost,
                  scope.learned)


def _patched(ctx: RunContext, name: str, design: Design, sae: SparseAutoencoder, layer: int,
             p: PatchingParams) -> Patched:
    model = ctx.model(name)
    size = p.cell_set_size or model.cell_set_len
    if 2 * p.n_cell_sets * size > len(model.cells):
        raise Inconclusive(f"selection and evaluation need 2 x {p.n_cell_sets} disjoint sets of {size} control cells, "
                           f"but model '{name}' has {len(model.cells)}; lower n_cell_sets or cell_set_size")
    orderings = ctx.n_orderings(name, p.cell_orderings)
    settings = {"layer": layer, "sets": p.n_cell_sets, "size": size, "seed": p.seed, "orderings": orderings}
    sets = cell_sets(model.cells, 2 * p.n_cell_sets, size, p.seed)
    selection, evaluation = sets[: p.n_cell_sets], sets[p.n_cell_sets:]
    orders = random_orderings(size, orderings, p.seed)

    def activity() -> np.ndarray:      # [3, perturbations, F]: mean, frequency, magnitude
        found = feature_activity(model.module, selection, pert_reprs(model, model.pert_names), sae, layer, orders)
        return np.stack([found["mean"], found["frequency"], found["magnitude"]])

    mean, frequency, magnitude = ctx.stored("sae_activity", name, activity, **settings)
    rows = [model.pert_index(k) for k in design.pathway + design.others]
    in_pathway = np.arange(len(rows)) < len(design.pathway)
    features, contrast = select_features(mean[rows], in_pathway, p.n_features)
    if not len(features):
        raise Inconclusive(f"no SAE feature is more active under the pathway's KDs than under the other KDs of "
                           f"'{name}'")
    # activity over every KD the test reads; the pool leaves out the features the selection ranks next after
    # the chosen ones: the pathway's other features. One of them in a null set makes the set about as specific
    # as the chosen one (a set's ratio follows its strongest feature), and the null would then ask how the
    # pathway's features compare with themselves (demo: p 0.04-0.07 where the oracle finds 0.001)
    excluded = np.argsort(-contrast, kind="stable")[: p.exclude_top * len(features)]
    draws = matched_feature_sets(features, frequency[rows].mean(axis=0), magnitude[rows].mean(axis=0),
                                 p.stratum_size, p.n_permutations, np.random.default_rng(p.seed),
                                 np.setdiff1d(np.arange(len(contrast)), excluded))
    feature_sets = (tuple(features.tolist()), *(tuple(d) for d in draws.tolist()))

    def effects() -> np.ndarray:       # [1 + draws, K, G]
        return masked_effects(model.module, evaluation, pert_reprs(model, design.pathway), sae, layer,
                              feature_masks(feature_sets, sae.d_sae, model.cells.device), orders, p.mode, p.scale,
                              progress=ctx.reporter(f"SAE patching of {name} ({len(feature_sets)} feature sets)",
                                                    "KD set orderings"))

    changed = ctx.stored("sae_patching", name, effects, kds=tuple(design.pathway), feature_sets=feature_sets,
                         mode=p.mode, scale=p.scale, **settings)
    genes = list(model.gene_names)
    response, judged = _gene_masks(design, genes, model)
    shifts = ctx.stored("patching_shifts", name, lambda: per_set_shifts(
        model.module, model.pert_onehots[[model.pert_index(k) for k in [*design.pathway, model.control_pert]]],
        len(design.pathway), evaluation, Readout("output"), orders).mean(axis=0)[:-1], kds=tuple(design.pathway),
        **settings)
    return Patched(features, contrast, patching_test(specificity(changed, response, judged)),
                   _removed(changed, shifts, response))


def _gene_masks(design: Design, genes: list[str], model) -> tuple[np.ndarray, np.ndarray]:
    """bool [K, G]: each pathway KD's response genes and judged genes, its own target left out of both."""
    judged = np.ones((len(design.pathway), len(genes)), dtype=bool)
    for k, kd in enumerate(design.pathway):
        if kd in model.gene_names:
            judged[k, genes.index(kd)] = False
    response = judged & np.isin(genes, design.response)[None, :]
    if not response.any(axis=1).all():
        raise Inconclusive("a pathway KD's only response gene is its own target")
    return response, judged


def _removed(changed: np.ndarray, shifts: np.ndarray, response: np.ndarray) -> np.ndarray:
    """[N, K] the share of each KD's predicted shift [K, G] on its response genes that intervention n
    takes away (projection of the change on the shift; 1: all of it)."""
    own = shifts * response
    with np.errstate(invalid="ignore", divide="ignore"):
        return -(changed * own[None]).sum(axis=-1) / (own ** 2).sum(axis=-1)[None]


def _rule(_params: PatchingParams) -> PassRule:
    return PassRule(p_below=0.05, effect_above=0.0)


FAMILY = Family("sae_patching", (
        Check("sae_feature_patching", ("model", "pathway"), PatchingParams, feature_patching,
              "patching the SAE features a pathway's KDs switch on changes the pathway's genes more than matched "
              "random features do", _rule, validate, side="routed", needs=frozenset({"gene_outputs"})),
    ), Card(settings=("mode", "n_features", "response_genes", "cell_set_size"), partial="patching_card.html.j2"))
