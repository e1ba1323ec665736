"""What the KD-set checks share: the KDs they run over, the panel members among them, their null
models, the within-pathway set test, sample sizes and how they describe them.

Panel names are resolved against what a model knows (`resolve_members`): a name the model has is
used; a name it lacks but that is a real gene of its world (in its gene lists or cells) is dropped
and reported; a name nobody knows is most likely a typo, an UnknownNameError with close matches,
unless the hypothesis says `on_unknown: drop`. Too few names left makes the case Inconclusive.

A model maps the KDs whose own response it did not learn onto one generic response, so any set of
them looks "coherent". Every KD-set test therefore runs over the KDs the model learned
(suite/learnedness.py: judged on observed perturbed cells when the registry gives them, else every
KD but those whose encoder column training never moved), and a set whose members are mostly known
not to be learned is inconclusive (`scope`). Within those KDs the default null keeps the members'
count in each stratum of KDs of similar effect magnitude: KDs with weak effects sit together near
the control, which a plain label permutation reads as coherence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.stats import t as student_t

from core.errors import Inconclusive, UnknownNameError, describe_unknown

from .. import stats
from ..verdicts import ALPHA

if TYPE_CHECKING:
    from ..panels import Panel
    from ..session import RunContext
    from ..verdicts import Evidence

Magnitude = Callable[[], np.ndarray]
NullModel = Literal["magnitude_stratified", "label_permutation"]


@dataclass(frozen=True)
class NullParams:
    """Parameters every KD-set test shares: its null, its sample sizes and its seed."""

    null_model: NullModel = "magnitude_stratified"
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
              "layer": (0, 10_000), "seed": (0, 2 ** 32 - 1)}


@dataclass(frozen=True)
class Scope:
    """The KDs a set test runs over, and the pathway's members among them."""

    kds: list[str]             # the KDs the test uses: every KD, or those the model(s) learned
    rows: np.ndarray           # their positions in the list the check resolved against
    members: np.ndarray        # positions of the pathway's members within `kds`
    present: list[str]         # the members used
    dropped: list[str]         # panel names the model lacks
    learned: dict = field(default_factory=dict)   # what learnedness left out and how it judged, for the card
    # [len(kds), len(kds)] pairs of KDs that share another panel of the run (None: no such pair). A
    # program's KDs are alike by design, so their pairs are no background: left out of the members'
    # mean and of every null set's, a pathway is compared with KDs of other programs and of none,
    # not with the ribosome that fills the strong end of a screen
    related: np.ndarray | None = None
    # positions within `kds` of the run's background sample (suite/background.py), None without one: a
    # statistic of a KD against "every other KD" reads these, as it would read the whole screen
    background: np.ndarray | None = None

    @property
    def sizes(self) -> dict[str, int]:
        sizes = {"members": len(self.members), "kds": len(self.kds)}
        if self.learned and (self.learned["observed"] or self.learned["left_out"] or
                             len(self.kds) < self.learned["kds_of"]):
            sizes |= {"panel_kds_present": self.learned["panel_present"], "kds_judged": self.learned["kds_of"]}
        return sizes


def scope(ctx: RunContext, models: Sequence[str], names: Sequence[str], panel: Panel, kds: Sequence[str],
          universe: frozenset[str], p, what: str = "KDs") -> Scope:
    """Resolve `names` (the panel's KDs) against `kds` and keep the KDs every model learned
    (suite/learnedness.py). Members whose own judgement is undetermined (too few cells for one KD)
    are pooled: when the model learned their shared response they enter the test too. A set is
    inconclusive when most of its members are known not to be learned (judged not learned,
    untrained, or without observed cells), or fewer than `min_members` are learned: its coherence
    could be the models' generic response to KDs they did not learn."""
    label = " and ".join(models)
    present, dropped = resolve_members(names, kds, universe, panel=panel, model=label, what=what,
                                       on_unknown=p.on_unknown, min_members=p.min_members)
    listed = kds
    sample = ctx.background_sample(models) if what == "KDs" else None
    if sample is not None:      # the members and the background sample, as a full run's members and screen
        members = set(present)
        kds = [k for k in kds if k in sample or k in members]
    tables = [ctx.learnedness(m) for m in models]
    usable = set(kds)
    status: dict[str, list[str]] = {}
    pooled: dict[str, dict] = {}
    for model, table in zip(models, tables, strict=True):
        index = {k: i for i, k in enumerate(table.kds)}
        alone, found = learned_kds(ctx, model, kds, present)
        if found is not None:
            pooled[model] = found.to_dict()
        usable &= alone
        for k in present:
            status.setdefault(k, []).append(table.status(index[k]) if k in index else "no cells")
    used = [k for k in present if k in usable]
    left_out = {k: " / ".join(dict.fromkeys(s)) for k, s in status.items() if k not in usable}
    against = [k for k, s in status.items() if k not in usable and set(s) & {"not learned", "untrained", "no cells"}]
    observed = any(t.observed for t in tables)
    if len(against) > len(present) / 2 or len(used) < p.min_members:
        shown = ", ".join(f"{k} ({s})" for k, s in list(left_out.items())[:8])
        rule = ("prediction closer to the observed shift than the generic prediction" if observed else
                "pert_encoder column moved by training")
        raise Inconclusive(f"{len(used)} of the {len(present)} {what} of pathway '{panel.name}' are learned by "
                           f"{label} ({rule}; a test needs {p.min_members} and no majority against): {shown}"
                           f"{pooled_text(pooled)}. KDs a model did not learn share its generic response, so "
                           "their coherence would not show that the model learned the pathway")
    kept = [k for k in kds if k in usable]
    if len(kept) < len(used) + max(2, p.min_members):
        raise Inconclusive(f"{label} learned only {len(kept)} of {len(kds)} KDs: too few outside the pathway "
                           "for a null")
    learned = {"members": f"{len(used)} of {len(present)}", "panel_present": len(present),
               "kds": f"{len(kept)} of {len(kds)}", "kds_of": len(kds), "left_out": left_out, "observed": observed,
               "source": "; ".join(f"{m}: {t.source}" for m, t in zip(models, tables, strict=True))}
    if pooled:
        learned |= {"pooled": pooled, "pooled_text": pooled_text(pooled).lstrip("; ")}
    position, kept_position = {k: i for i, k in enumerate(listed)}, {k: i for i, k in enumerate(kept)}
    related = other_programs(ctx.programs, panel.kds, kept) if what == "KDs" else None
    background = None if sample is None else np.array([kept_position[k] for k in kept if k in sample], dtype=int)
    return Scope(kept, np.array([position[k] for k in kept]), np.array([kept_position[k] for k in used]), used,
                 dropped, learned, related, background)


def other_programs(programs: Sequence[Sequence[str]], panel: Sequence[str], kds: Sequence[str]) -> np.ndarray | None:
    """stats.related_pairs of `kds` under the run's panels other than this one (None when no two
    of the KDs share one)."""
    index = {k: i for i, k in enumerate(kds)}
    groups = [[index[k] for k in program if k in index] for program in programs if set(program) != set(panel)]
    groups = [g for g in groups if len(g) >= 2]
    return stats.related_pairs(len(kds), groups) if groups else None


def learned_kds(ctx: RunContext, model: str, kds: Sequence[str], present: Sequence[str]):
    """(the KDs of `kds` the model learned, the pooled judgement of the undetermined ones of `present`
    or None): a KD learned alone, or an undetermined member whose set's shared response is learned."""
    table = ctx.learnedness(model)
    index = {k: i for i, k in enumerate(table.kds)}
    alone = {k for k in kds if k in index and table.usable[index[k]]}
    undetermined = [k for k in present if k in index and table.status(index[k]) == "undetermined"]
    found = ctx.pooled_learnedness(model, tuple(undetermined)) if len(undetermined) >= 2 else None
    if found is not None and found.status == "learned":
        alone |= set(found.kds)
    return alone, found


def pooled_text(pooled: dict[str, dict]) -> str:
    """'; pooled, the N undetermined members ...' for each model whose undetermined members were pooled."""
    parts = []
    for model, found in pooled.items():
        low, high = found["ci"]
        verdict = "learned: they enter the test" if found["status"] == "learned" else found["status"]
        parts.append(f"{model}: the shared response of its {len(found['kds'])} undetermined members, pooled "
                     f"({found['n_cells']} cells), specific R² {found['score']:.2f} ({low:.2f} to {high:.2f}): "
                     f"{verdict}")
    return "".join(f"; {p}" for p in parts)


def resolve_members(names: Sequence[str], available: Sequence[str], universe: Iterable[str], *, panel: Panel,
                    model: str, what: str, on_unknown: str, min_members: int) -> tuple[list[str], list[str]]:
    """(present, dropped) members of `names`; raises UnknownNameError or Inconclusive."""
    have = set(available)
    known = set(universe) | have
    present = [n for n in names if n in have]
    dropped = [n for n in names if n not in have]
    unknown = [n for n in dropped if n not in known]
    if unknown and on_unknown == "error":
        raise UnknownNameError(
            f"pathway '{panel.name}': {what} not known to model '{model}': {describe_unknown(unknown, known, 'name')}",
            file=panel.file, line=panel.line, field=f"pathways.{panel.name}",
            hint="fix the spelling, or set 'on_unknown: drop' in the hypothesis params to skip such names")
    if len(present) < min_members:
        missing = f"; not in the model: {', '.join(dropped)}" if dropped else ""
        raise Inconclusive(f"only {len(present)} of {len(names)} {what} of pathway '{panel.name}' are in model "
                           f"'{model}' (need at least {min_members}){missing}")
    return present, dropped


def member_positions(panel: Panel, names: Sequence[str], available: Sequence[str], universe: Iterable[str], p,
                     *, model: str, what: str) -> tuple[list[str], list[str], np.ndarray]:
    """(present, dropped, positions of the present ones in `available`) of a panel's `names`."""
    present, dropped = resolve_members(names, available, universe, panel=panel, model=model, what=what,
                                       on_unknown=p.on_unknown, min_members=p.min_members)
    position = {name: i for i, name in enumerate(available)}
    return present, dropped, np.array([position[n] for n in present])


@dataclass(frozen=True)
class SetCoherence:
    """The within-vs-background set test: the members' mean pairwise cosine against all pairs', and
    against the same mean of each null set."""

    within: float
    background: float
    test: stats.PermutationResult       # of `within`, against the null sets

    @property
    def excess(self) -> float:
        return self.within - self.background

    def details(self, heatmap: dict) -> dict:
        """The numbers every coherence card shows: both means, z, the null histogram and the heatmap."""
        return {"within": self.within, "background": self.background, "z": self.test.z,
                "null_histogram": histogram(self.test.null, self.test.observed), "heatmap": heatmap}


def set_coherence(members: np.ndarray, null_sets: np.ndarray, *, vectors: np.ndarray | None = None,
                  similarity: np.ndarray | None = None, related: np.ndarray | None = None) -> SetCoherence:
    """The set test on row `vectors` (cosines computed from unit rows, no K x K matrix) or on a
    precomputed `similarity` matrix (e.g. cosines after centring on the control), `related` pairs
    (Scope.related) left out of every mean. A null set with no pair left (all of one other program)
    says nothing and is dropped; a null left with fewer than half its sets is inconclusive."""
    if vectors is not None:
        within, background = stats.within_and_background(vectors, members, related)
        null = stats.within_many(vectors, null_sets, related)
    else:
        within = stats.mean_pairwise(similarity, members, related)
        background = stats.mean_pairwise(similarity, np.arange(len(similarity)), related)
        null = stats.mean_pairwise_many(similarity, null_sets, related)
    if not np.isfinite(within):
        raise Inconclusive("every pair of the pathway's members also shares another panel of the run: its "
                           "coherence cannot be told from that panel's")
    null = null[np.isfinite(null)]
    if len(null) < len(null_sets) / 2:
        raise Inconclusive(f"only {len(null)} of {len(null_sets)} null sets hold a pair of KDs that share no "
                           "panel of the run: the KDs of the members' magnitudes are one program")
    return SetCoherence(within, background, stats.PermutationResult(within, null, stats.exact_p(null, within)))


def null_sets(p: NullParams, members: np.ndarray, n_kds: int, magnitude: Magnitude) -> np.ndarray:
    """[n_permutations, |members|] random KD sets under the hypothesis's null model."""
    rng = np.random.default_rng(p.seed)
    if p.null_model == "label_permutation":
        return stats.random_sets(rng, np.arange(n_kds), len(members), p.n_permutations)
    strata = stats.magnitude_strata(magnitude(), np.arange(n_kds), p.stratum_size, members)
    return stats.stratified_sets(rng, strata, members, p.n_permutations)


ConsistencyStatistic = Literal["profile_correlation", "neighbour_overlap"]


def consistency_test(sims: tuple[np.ndarray, np.ndarray], statistic: ConsistencyStatistic, k: int,
                     members: np.ndarray, null_sets: np.ndarray, columns: np.ndarray | None = None
                     ) -> tuple[stats.PermutationResult, tuple[float, float] | None]:
    """Cross-model consistency of the members against the same on `null_sets` (both models kept as
    they are), and the CI of its excess over the null mean. Per KD, `profile_correlation` is the
    Spearman r of its similarities to every other KD in the two models (stats.profile_correlations),
    `neighbour_overlap` the Jaccard overlap of its k nearest KDs: inside a block of near-identical KDs
    which KD is whose nearest neighbour is noise, so the overlap misses a shared homogeneous program
    that the profiles see. Either way the statistic is a mean of per-KD values fixed by the two models
    and its interval the Student-t interval of that mean (the bootstraps of a mean of 8 values
    undercover: tests/test_coverage.py). With `columns` (Scope.background), "every other KD" is the
    run's background sample."""
    if statistic == "profile_correlation":
        per_kd = stats.profile_correlations(*sims, columns=columns)
    else:
        per_kd = stats.neighbour_jaccards(stats.knn_table(sims[0], k, columns), stats.knn_table(sims[1], k, columns))
    result = stats.set_permutation_test(lambda s: float(per_kd[s].mean()), members, null_sets,
                                        lambda sets: per_kd[sets].mean(axis=1))
    ci = stats.mean_ci(per_kd[members] - result.null_mean)
    return result, ci


def consistency_text(statistic: ConsistencyStatistic, k: int, space: str) -> str:
    if statistic == "profile_correlation":
        return (f"mean over the pathway's KDs of the Spearman r between each KD's {space} similarities to every "
                "other KD in the two models")
    return f"mean Jaccard overlap of the {k} nearest KDs in {space} in the two models"


def set_null_text(p: NullParams, n_members: int, n_kds: int, magnitude: str, unit: str = "KDs") -> str:
    if p.null_model == "label_permutation":
        return f"label permutation: {p.n_permutations} random sets of {n_members} of the {n_kds} {unit}"
    return (f"magnitude-stratified permutation: {p.n_permutations} random sets of {n_members} of the {n_kds} {unit} "
            f"with the members' count in each stratum of ~{p.stratum_size} {unit} of similar {magnitude} "
            "(strata merged where the members would be more than half)")


def background_text(related: np.ndarray | None) -> str:
    """What the coherence statistic subtracts: all pairs, or the pairs that share no other panel."""
    return "mean all-pairs cosine" if related is None else "mean cosine of the pairs sharing no other panel"


def related_text(related: np.ndarray | None) -> str:
    """The null text's note on left-out pairs, when there are any."""
    if related is None:
        return ""
    return (f"; {int(related.sum()) // 2} pairs of KDs that share another panel of the run left out of every "
            "mean (members' and null sets')")


def histogram(null: np.ndarray, observed: float, bins: int = 30) -> dict:
    """A compact null histogram (for the report's plot)."""
    try:
        counts, edges = np.histogram(null, bins=bins)
    except ValueError:         # a null of (nearly) one value: numpy cannot cut its range into bins
        counts, edges = np.histogram(null, bins=1)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "observed": observed}


def pca_map(x: np.ndarray, names: Sequence[str], groups: dict[str, tuple[str, ...]], pathway: str) -> dict:
    """A 2-D map of the rows of `x` (KDs' shifts, genes' KO profiles) for the card: their first two
    principal components (numpy's SVD of the centred rows; the notes drew UMAP, whose numba start-up
    costs more than a card's worth of time), each row labelled by the panel it belongs to, the
    case's pathway highlighted."""
    centred = np.asarray(x, dtype=float) - np.asarray(x, dtype=float).mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2] if len(s) >= 2 else np.zeros((len(x), 2))
    panel_of = {n: g for g, members in groups.items() for n in members if g != pathway}
    panel_of |= {n: pathway for n in groups.get(pathway, ())}
    explained = (s[:2] ** 2 / max(float((s ** 2).sum()), 1e-300)).tolist() if len(s) >= 2 else [0.0, 0.0]
    return {"x": np.round(coords[:, 0], 4).tolist(), "y": np.round(coords[:, 1], 4).tolist(),
            "groups": [panel_of.get(n, "other") for n in names],
            "highlight": [panel_of.get(n) == pathway for n in names],
            "x_label": f"PC1 ({explained[0]:.0%})", "y_label": f"PC2 ({explained[1]:.0%})"}


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


@dataclass(frozen=True)
class Selectivity:
    """How far a model's statistic lies above its re-initialised copies': a one-sided prediction
    bound for one more exchangeable copy, from the copies' mean and spread (Student t, k - 1 degrees
    of freedom: exact when the statistic spreads normally over initialisations)."""

    observed: float
    copies: tuple[float, ...]
    p: float                     # P(one more copy >= observed) under the bound's model
    bound: float                 # the upper (1 - alpha) prediction bound of one more copy

    @property
    def beats_all(self) -> bool:
        return all(self.observed > c for c in self.copies)

    def held(self, alpha: float) -> bool:
        """Beats every copy (a rank test at level 1/(k+1)) and lies beyond the bound (level alpha)."""
        return self.beats_all and self.p < alpha


def selectivity(observed: float, copies: Sequence[float], alpha: float) -> Selectivity:
    """The prediction-bound test of `observed` against `copies` (at least 2). With no spread among the
    copies the bound says nothing: p is then the rank level 1/(k+1), which no alpha below it passes."""
    k = len(copies)
    values = np.asarray(copies, dtype=float)
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    scale = sd * np.sqrt(1 + 1 / k)
    if not scale > 0:
        return Selectivity(observed, tuple(copies), 1 / (k + 1), mean)
    p = float(student_t.sf((observed - mean) / scale, k - 1))
    return Selectivity(observed, tuple(copies), p, mean + float(student_t.isf(alpha, k - 1)) * scale)


def copies_problem(p) -> str | None:
    """The `validate` rule every check with `reinit_copies` shares: one copy has no spread to bound."""
    if getattr(p, "reinit_copies", 0) == 1:
        return ("'reinit_copies: 1' gives no spread to bound the copies by: give 0 (no selectivity condition) or "
                "at least 2 (each copy costs a model's worth of probe outputs)")
    return None


def beat_copies(evidence: Evidence, observed: float, drawn: Iterable[float], asked: int, name: str,
                what: str = "") -> Evidence:
    """The evidence with one more condition, selectivity: `observed` (the model's statistic) beats
    the same statistic on each of `asked` re-initialised copies of model `name` (`drawn` yields them
    one at a time) and lies above their upper prediction bound at the run's alpha (`selectivity`). An
    architecture can produce a statistic by itself; a pass must be more than that, at a stated level:
    beating k copies alone is a test at level 1/(k+1) (0.25 with 3 copies)."""
    if asked == 0:
        return evidence
    copies = copies_until_matched(observed, drawn)
    if not all(np.isfinite(copies)):
        raise Inconclusive(f"the statistic is undefined on a re-initialised copy of '{name}' ({copies})")
    stopped = "" if len(copies) == asked else f"; stopped after copy {len(copies)} of {asked}, which already matches it"
    shown = ", ".join(f"{c:.3g}" for c in copies)
    if len(copies) < 2:
        found, held = None, False
        text = f"selectivity: {what}{observed:.3g} <= {copies[0]:.3g} on a re-initialised copy{stopped}"
    else:
        found = selectivity(observed, copies, ALPHA)
        held = found.held(ALPHA) and len(copies) == asked
        text = (f"selectivity: {what}{observed:.3g} {'>' if held else 'not >'} {found.bound:.3g}, the upper "
                f"{1 - ALPHA:.0%} prediction bound of one more re-initialised copy (p = {found.p:.2g}, Student t "
                f"from {len(copies)} copies: {shown}){stopped}")
    margin = observed - max(copies)
    selectivity_record = {"reinitialised": [round(c, 4) for c in copies], "margin": round(margin, 4),
                          "copies_asked": asked}
    if found is not None:
        selectivity_record |= {"p": round(found.p, 6), "bound": round(found.bound, 4), "level": ALPHA}
    if what:
        selectivity_record |= {"observed": observed, "of": what.rstrip(" ")}
    return replace(evidence, conditions=(*evidence.conditions, (held, text)),
                   n=evidence.n | {"reinit_copies": len(copies)},
                   details=evidence.details | {"selectivity": selectivity_record})


def copies_until_matched(value: float, drawn: Iterable[float]) -> list[float]:
    """The copies' statistics, drawn one at a time until one reaches `value` (or is undefined): from
    then on the condition fails whatever the other copies give, and each copy costs a model's worth
    of probe outputs. So a pass has seen every copy, and a fail stops at the first copy that matches it."""
    copies = []
    for copy in drawn:
        copies.append(copy)
        if not (np.isfinite(copy) and copy < value):
            break
    return copies
