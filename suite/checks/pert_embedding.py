"""Perturbation-embedding checks (Option 2, NB02): is pathway biology in pert_encoder space?

pert_embedding_coherence   per model and pathway: do the pathway's KDs sit closer together
                           (cosine of pert_encoder outputs) than random KD sets do?
pert_embedding_consistency per model pair and pathway: does each pathway KD keep its place among
                           all other KDs (the Spearman r of its similarity profile) in both models,
                           more than the KDs of random sets do? Both models stay as they are: two
                           models that agree on every KD single out no pathway.

Both run over the KDs the models learned (common.scope). KDs with weak effects all collapse
toward the control embedding and look "coherent" together. The default null is therefore a
magnitude-stratified permutation: KDs are
sorted by effect magnitude into strata of about `stratum_size`, and each null set keeps
the members' count per stratum, drawn from the whole stratum (members included).
`null_model: label_permutation` draws plain random sets, as the notebooks did.
(Swapping each member for its nearest-magnitude non-members instead was anti-conservative
at the weak end of the magnitude range, exactly where weak KDs collapse: tests/test_stats.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.stats import binomtest

from probes.embeddings import pert_embeddings

from .. import stats
from ..families import Card, Check, Family
from ..verdicts import Evidence
from . import common
from .common import NullParams

if TYPE_CHECKING:
    from fixtures.arc_state import LoadedModel

    from ..cases import Case
    from ..session import RunContext

@dataclass(frozen=True)
class SetTestParams(NullParams):
    """The embedding checks' parameters: the shared null parameters plus what magnitude means."""

    magnitude: Literal["output_shift", "pert_repr_distance"] = "output_shift"
    cell_set_size: int | None = None


@dataclass(frozen=True)
class CoherenceParams(SetTestParams):
    statistic: Literal["within_minus_background", "nn_hit_rate"] = "within_minus_background"
    center: Literal["none", "control"] = "none"      # cosine of raw pert_encoder outputs, as NB02


@dataclass(frozen=True)
class ConsistencyParams(SetTestParams):
    statistic: common.ConsistencyStatistic = "profile_correlation"
    k: int = 5                             # nearest KDs compared, for statistic: neighbour_overlap
    # displacements from the control: in raw cosine every KD's nearest neighbours are the most
    # collapsed KDs in any model, which reads as agreement (tests/test_stats.py)
    center: Literal["none", "control"] = "control"


def coherence(case: Case, ctx: RunContext) -> Evidence:
    p: CoherenceParams = case.spec.params
    model = ctx.model(case.axes["model"])
    panel = case.spec.panels[case.axes["pathway"]]
    scope = common.scope(ctx, [model.name], panel.kds, panel, model.kd_names, model.gene_universe, p)
    full = _kd_similarity(ctx, model, p.center)
    sim = full[np.ix_(scope.rows, scope.rows)]
    members, everyone = scope.members, np.arange(len(scope.kds))
    null_sets = common.null_sets(p, members, len(scope.kds), lambda: _magnitudes(ctx, model, p)[scope.rows])
    null_text = common.set_null_text(p, len(members), len(scope.kds), _magnitude_text(p))
    if p.statistic == "nn_hit_rate":
        return _hit_rate_evidence(p, sim, scope, everyone, null_sets, null_text, model, ctx)
    found = common.set_coherence(members, null_sets, similarity=sim, related=scope.related)
    ci = stats.bootstrap_ci(lambda s: stats.mean_pairwise(sim, s, scope.related) - found.background, members,
                            np.random.default_rng(p.seed), p.n_bootstrap)
    return Evidence(
        statistic=f"mean within-pathway cosine - {common.background_text(scope.related)}" + _center_text(p),
        value=found.excess, effect=found.excess, ci=ci, p=found.test.p,
        n=_sizes(p, scope, model, ctx), seed=p.seed, null=null_text + common.related_text(scope.related),
        details=found.details(_heatmap(case, sim, scope.kds, members)) | {
            "null_mean_within": found.test.null_mean, "null_sd_within": found.test.null_sd,
            "excess_over_null": found.within - found.test.null_mean,
            "nn_hit_rate": stats.nn_hit_rate(sim, members, everyone), "members": scope.present,
            "dropped": scope.dropped, "learned": scope.learned})


def _heatmap(case: Case, sim: np.ndarray, kds: list[str], members: np.ndarray) -> dict:
    groups = {name: panel.kds for name, panel in case.spec.panels.items()}
    return common.similarity_heatmap(lambda idx: sim[np.ix_(idx, idx)], kds, members, groups, case.axes["pathway"])


def _hit_rate_evidence(p: CoherenceParams, sim, scope: common.Scope, everyone, null_sets, null_text, model,
                       ctx) -> Evidence:
    members = scope.members
    result = stats.set_permutation_test(lambda s: stats.nn_hit_rate(sim, s, everyone), members, null_sets,
                                        lambda sets: stats.nn_hit_rate_many(sim, sets, everyone))
    hits = round(result.observed * len(members))
    low, high = binomtest(hits, len(members)).proportion_ci(method="wilson")
    return Evidence(
        statistic="nearest-neighbour hit rate", value=result.observed, effect=result.observed - result.null_mean,
        ci=(low - result.null_mean, high - result.null_mean), p=result.p, n=_sizes(p, scope, model, ctx),
        null=null_text, seed=p.seed,
        details={"null_mean": result.null_mean, "z": result.z, "members": scope.present, "dropped": scope.dropped,
                 "learned": scope.learned, "hits": hits,
                 "null_histogram": common.histogram(result.null, result.observed)})


def consistency(case: Case, ctx: RunContext) -> Evidence:
    """The null keeps both models as they are and draws random KD sets (matched like the members):
    a pass says the two models agree on *this pathway's* neighbourhoods more than on other KDs',
    not merely that the two models agree."""
    p: ConsistencyParams = case.spec.params
    model_a, model_b = (ctx.model(n) for n in case.axes["model_pair"])
    panel = case.spec.panels[case.axes["pathway"]]
    shared = [k for k in model_a.kd_names if k in set(model_b.kd_names)]
    scope = common.scope(ctx, [model_a.name, model_b.name], panel.kds, panel, shared,
                         model_a.gene_universe | model_b.gene_universe, p)
    sims = tuple(_restrict(ctx, m, scope.kds, p.center) for m in (model_a, model_b))
    members = scope.members
    magnitude = lambda: _pair_magnitude(ctx, (model_a, model_b), scope.kds, p)  # noqa: E731
    result, ci = common.consistency_test(sims, p.statistic, p.k, members,
                                         common.null_sets(p, members, len(scope.kds), magnitude), scope.background)
    return Evidence(
        statistic=common.consistency_text(p.statistic, p.k, "pert_encoder") + _center_text(p),
        value=result.observed, effect=result.observed - result.null_mean, ci=ci, p=result.p,
        n=scope.sizes | {"shared_kds": len(shared), "permutations": p.n_permutations},
        seed=p.seed,
        null=common.set_null_text(p, len(members), len(scope.kds), _magnitude_text(p) + " in the two models")
        + "; both models kept as they are",
        details={"null_mean": result.null_mean, "z": result.z, "members": scope.present, "dropped": scope.dropped,
                 "learned": scope.learned, "null_histogram": common.histogram(result.null, result.observed)})


def _kd_similarity(ctx: RunContext, model: LoadedModel, center: str) -> np.ndarray:
    """Cosine between KDs' pert_encoder outputs, or between their displacements from the control's."""
    def compute() -> np.ndarray:
        emb = _embeddings(ctx, model)
        rows = [model.pert_index(k) for k in model.kd_names]
        origin = emb[model.pert_index(model.control_pert)] if center == "control" else 0.0
        return stats.cosine_similarity_matrix(emb[rows] - origin)

    return ctx.memo(("kd_cosine", model.name, center), compute)


def _embeddings(ctx: RunContext, model: LoadedModel) -> np.ndarray:
    return ctx.stored("pert_embeddings", model.name, lambda: pert_embeddings(model.module, model.pert_onehots),
                      disk=False)


def _restrict(ctx: RunContext, model: LoadedModel, kds: list[str], center: str) -> np.ndarray:
    sim = _kd_similarity(ctx, model, center)
    rows = [model.kd_names.index(k) for k in kds]
    return sim[np.ix_(rows, rows)]


def _magnitudes(ctx: RunContext, model: LoadedModel, p) -> np.ndarray:
    """Effect magnitude of every KD (in kd_names order)."""
    rows = [model.pert_index(k) for k in model.kd_names]
    if p.magnitude == "pert_repr_distance":
        control = model.pert_index(model.control_pert)
        emb = _embeddings(ctx, model)
        return np.linalg.norm(emb[rows] - emb[control], axis=1)
    size = p.cell_set_size or model.cell_set_len
    shifts = ctx.output_shifts(model.name, size, p.seed, ctx.n_orderings(model.name, p.cell_orderings))
    return np.linalg.norm(shifts[rows], axis=1)


def _pair_magnitude(ctx: RunContext, models, shared: list[str], p) -> np.ndarray:
    """Mean percentile rank of each shared KD's magnitude across the two models."""
    ranks = []
    for model in models:
        mag = _magnitudes(ctx, model, p)[[model.kd_names.index(k) for k in shared]]
        ranks.append(np.argsort(np.argsort(mag)) / max(len(mag) - 1, 1))
    return np.mean(ranks, axis=0)








def _center_text(p) -> str:
    return " (displacements from the control)" if p.center == "control" else ""


def _magnitude_text(p) -> str:
    return "output-shift norm" if p.magnitude == "output_shift" else "distance of pert_repr from the control's"




def _sizes(p, scope: common.Scope, model: LoadedModel, ctx: RunContext) -> dict[str, int]:
    sizes = scope.sizes | {"permutations": p.n_permutations}
    if p.null_model == "magnitude_stratified" and p.magnitude == "output_shift":
        sizes["cells"] = p.cell_set_size or model.cell_set_len
        sizes["cell_orderings"] = ctx.n_orderings(model.name, p.cell_orderings)
    return sizes




FAMILY = Family("pert_embedding", (
        Check("pert_embedding_coherence", ("model", "pathway"), CoherenceParams, coherence,
              "pathway KDs closer in pert_encoder space than random KD sets", side="organized"),
        Check("pert_embedding_consistency", ("model_pair", "pathway"), ConsistencyParams, consistency,
              "pathway KDs keep their similarity to every other KD across two models"),
    ), Card(settings=("cell_set_size", "null_model")))
