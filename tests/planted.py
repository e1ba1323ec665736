"""Planted probe outputs for running the suite's real check functions without a network.

The checks read everything a model computes through the run context's accessors (ΔY, per-set
representations, pert_encoder outputs, targeted Jacobians, KO matrices, routing Jacobians). A
`PlantedRun` answers those accessors with arrays a test planted, so a test can call
`CHECKS[name].run(case, ctx)` itself (the same code a pytest run executes, defaults and nulls
included) on inputs whose truth it knows, and compare the numbers with an independent
computation or count false positives over many draws. This is a harness for the checks'
numerics only: every accessor's own computation on real checkpoints is tested in
tests/test_probes.py, test_routing.py and test_jacobian.py.

`world(seed)` plants the structure a trained model has and that makes naive tests lie: KDs in
clusters, effect magnitudes spread over two orders of magnitude, weak KDs collapsing onto one
generic response, and a second model that agrees with the first on every KD.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
import torch

from suite.background import draw
from suite.cases import Case
from suite.checks.routing import Routing
from suite.families import CHECKS
from suite.learnedness import Learnedness, Screen
from suite.panels import Panel
from suite.session import RunContext
from suite.spec import HypothesisSpec
from suite.verdicts import PassRule

CONTROL = "non-targeting"


@dataclass
class PlantedModel:
    """What the checks read of a LoadedModel: names, control cells, cell_set_len."""

    name: str
    kds: tuple[str, ...]
    gene_names: tuple[str, ...]
    cells: torch.Tensor                      # [n_cells, G] control cells
    cell_set_len: int = 16
    control_pert: str = CONTROL
    all_perts: tuple[str, ...] | None = None     # the one-hot space's perturbations, when kds are a selection
    fingerprint: str = "planted"

    @property
    def pert_names(self) -> tuple[str, ...]:
        return (self.control_pert, *self.kds)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return self.all_perts or self.pert_names

    @property
    def kd_names(self) -> tuple[str, ...]:
        return self.kds

    @property
    def gene_universe(self) -> frozenset[str]:
        return frozenset(self.gene_names) | frozenset(self.kds)

    # a gene-in, gene-out model (fixtures/arc_state.LoadedModel's kind fields)
    output = "genes"
    kind = "reads genes; probes read its gene expression"

    @property
    def input_genes(self) -> tuple[str, ...]:
        return self.gene_names

    @property
    def expression(self) -> torch.Tensor:
        return self.cells

    @property
    def output_expression(self) -> np.ndarray:
        return self.cells.mean(dim=0).double().numpy()

    def pert_index(self, name: str) -> int:
        return self.pert_names.index(name)


@dataclass
class Outputs:
    """One model's planted probe outputs; rows in pert_names order (control first) unless said."""

    shifts: np.ndarray                       # [P, G] ΔY
    per_set: np.ndarray                      # [n_sets, P, D] per-cell-set representation shifts
    embeddings: np.ndarray                   # [P, H] pert_encoder outputs
    targeted: np.ndarray                     # [P, G, G] dY[target]/dX[regulator]: [KD, regulator, target]
    knockouts: np.ndarray                    # [G, G] KO of row gene -> output shift
    routing: np.ndarray                      # [K, G, H] dY/d pert_repr, KD rows only
    encoder: np.ndarray                      # [K, H, P] d pert_repr / d onehot, KD rows only
    learned: np.ndarray | None = None        # [K] bool, default all learned (judged without cells)
    sae_activity: np.ndarray | None = None   # [3, P, F] SAE features' mean, frequency, magnitude per perturbation
    sae_effects: np.ndarray | None = None    # [F, P, G] what ablating feature f alone changes under each perturbation
    screen: Screen | None = None             # observed perturbed cells: learnedness judged on them (suite code)


class PlantedRun(RunContext):
    """A RunContext whose probe outputs are planted arrays (see the module docstring)."""

    def __init__(self, models: dict[str, PlantedModel], outputs: dict[str, Outputs]) -> None:
        super().__init__({}, torch.device("cpu"), cell_orderings=1)
        self.planted, self.outputs = models, outputs

    def model(self, name: str) -> PlantedModel:
        return self.planted[name]

    def n_orderings(self, name: str, requested: int | None) -> int:
        return 1

    def learnedness(self, name: str) -> Learnedness:
        if self.outputs[name].screen is not None:          # judged by the suite's own code on planted cells
            return super().learnedness(name)
        kds = self.planted[name].kds
        nan = np.full(len(kds), np.nan)
        return Learnedness(kds, nan, nan, nan, np.zeros(len(kds)), self.untrained(name), "planted", observed=False)

    def untrained(self, name: str) -> np.ndarray:
        learned = self.outputs[name].learned
        return np.zeros(len(self.planted[name].kds), bool) if learned is None else ~learned

    def observed_screen(self, name: str) -> Screen | None:
        return self.outputs[name].screen

    def entry(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(knockout=None, sae=None, perturbed=None)

    def sae(self, name):
        effects = self.outputs[name].sae_effects
        return SimpleNamespace(W_dec=np.zeros(1), d_sae=0 if effects is None else len(effects), source="planted"), 0

    def stored(self, kind, name, compute, *, disk=True, **parts):
        """The planted array of each probe output a check asks for (the cells and seeds do not matter)."""
        model, out = self.planted[name], self.outputs[name]
        if kind == "output_shifts":
            return out.shifts
        if kind == "representations":
            return out.per_set[:parts["sets"]]
        if kind == "targeted_jacobian":
            rows = [model.pert_index(k) for k in parts["kds"]]
            return out.targeted[rows][:, [model.gene_names.index(r) for r in parts["regulators"]]]
        if kind == "knockout":
            return out.knockouts[[model.gene_names.index(g) for g in parts["genes"]]]
        if kind == "routing":
            flat = out.routing.reshape(len(out.routing), -1).astype(np.float64)
            return self.memo(("planted_routing", name),
                             lambda: Routing(model.kds, out.routing, flat @ flat.T, "planted"))
        if kind == "pert_width":
            return out.routing.shape[2]
        if kind == "encoder_jacobians":
            return torch.from_numpy(out.encoder)
        if kind == "pert_embeddings":
            return out.embeddings
        if kind == "sae_activity":
            return out.sae_activity
        if kind == "sae_patching":      # a feature set's effect: the sum of its features' (additive, planted)
            rows = [model.pert_index(k) for k in parts["kds"]]
            return np.stack([out.sae_effects[list(s)][:, rows].sum(axis=0) for s in parts["feature_sets"]])
        if kind == "patching_shifts":
            return out.shifts[[model.pert_index(k) for k in parts["kds"]]]
        raise AssertionError(f"no planted output of kind {kind!r}")


@dataclass(frozen=True)
class World:
    """Two planted models over the same KDs and genes, and the latent truth they were drawn from."""

    ctx: PlantedRun
    kds: tuple[str, ...]
    genes: tuple[str, ...]
    magnitude: np.ndarray                    # [K] planted effect size of each KD
    cluster: np.ndarray                      # [K] planted cluster of each KD
    names: tuple[str, str] = ("model_a", "model_b")


def world(seed: int, n_kds: int = 60, n_genes: int = 40, hidden: int = 12, n_sets: int = 8,
          n_clusters: int = 6, weak_share: float = 0.3, agreement: float = 0.8, n_cells: int = 64,
          coupled: bool = True, plant: dict | None = None, cluster: np.ndarray | None = None,
          magnitude: np.ndarray | None = None, spread: float | np.ndarray = 0.7, shared: float = 0.0) -> World:
    """Two models whose KDs fall in `n_clusters` clusters, a `weak_share` of them with weak effects
    that collapse onto one generic response; model_b shares model_a's structure (`agreement`) plus its
    own noise. `coupled`: the routing Jacobians follow the KDs' ΔY (as in a trained model) or not (the
    null of the whole-model routing tests). `plant` adds signal for a set of KDs or genes:
    {"kds": [...], "genes": [...], "size": s}. `cluster` and `magnitude` [n_kds] replace the drawn ones
    (the weak share still applies), `spread` is the members' scatter about their cluster's centroid (one
    value, or one per KD), and
    `shared` the weight of the generic response that every KD with an effect carries besides its own."""
    rng = np.random.default_rng(seed)
    genes = tuple(f"g{i:02d}" for i in range(n_genes))
    kds = genes[:n_kds] if n_kds <= n_genes else genes + tuple(f"k{i:02d}" for i in range(n_kds - n_genes))
    drawn_cluster, drawn_magnitude = rng.integers(0, n_clusters, n_kds), np.exp(rng.normal(0.0, 1.0, n_kds))
    cluster = drawn_cluster if cluster is None else np.asarray(cluster)
    magnitude = drawn_magnitude if magnitude is None else np.asarray(magnitude, dtype=float).copy()
    n_clusters = max(n_clusters, int(cluster.max()) + 1)
    weak = rng.random(n_kds) < weak_share
    magnitude[weak] *= 0.05
    centroids, generic = rng.normal(size=(n_clusters, n_genes)), rng.normal(size=n_genes)
    direction = centroids[cluster] + np.reshape(spread, (-1, 1)) * rng.normal(size=(n_kds, n_genes))
    direction[~weak] += shared * generic
    direction[weak] = generic + 0.3 * rng.normal(size=(weak.sum(), n_genes))
    plant = plant or {}
    planted_kds = [kds.index(k) for k in plant.get("kds", ())]
    if planted_kds:
        direction[planted_kds] += plant["size"] * rng.normal(size=n_genes)
    latent = direction / np.linalg.norm(direction, axis=1, keepdims=True) * magnitude[:, None]
    ko_latent = centroids[rng.integers(0, n_clusters, n_genes)] + rng.normal(size=(n_genes, n_genes))
    ko_latent[:, :] += 1.5 * generic                    # every KO shares the common response
    planted_genes = [genes.index(g) for g in plant.get("genes", ())]
    if planted_genes:
        ko_latent[planted_genes] += plant["size"] * rng.normal(size=n_genes)
    reg_latent = rng.normal(size=(n_kds, n_genes, n_genes))
    route_latent = rng.normal(size=(n_kds, n_genes, hidden))
    if coupled:
        route_latent += latent[:, :, None] * rng.normal(size=hidden)
    enc_latent = rng.normal(size=(n_kds, hidden, n_kds + 1))
    cells = torch.from_numpy(np.abs(rng.normal(1.0, 0.5, (n_cells, n_genes))) * np.exp(rng.normal(0, 1, n_genes)))
    models, outputs = {}, {}
    for m, name in enumerate(("model_a", "model_b")):
        mix = 1.0 if m == 0 else agreement
        own = np.sqrt(1 - mix ** 2)

        def noisy(x: np.ndarray, scale: float = 1.0, mix: float = mix, own: float = own) -> np.ndarray:
            return mix * x + own * scale * rng.normal(size=x.shape) * np.std(x)

        shifts = noisy(latent, 0.5)
        per_set = shifts[None] + 0.3 * rng.normal(size=(n_sets, *shifts.shape)) * magnitude[:, None]
        embedding = noisy(np.hstack([latent, rng.normal(size=(n_kds, 4)) * 0.1]), 0.5)
        targeted = np.abs(noisy(reg_latent)) * magnitude[:, None, None]
        with_control = lambda x: np.concatenate([np.zeros((1, *x.shape[1:])), x])  # noqa: E731
        outputs[name] = Outputs(
            shifts=with_control(shifts), per_set=np.concatenate([np.zeros((n_sets, 1, n_genes)), per_set], axis=1),
            embeddings=np.vstack([rng.normal(size=(1, n_genes + 4)) * 0.1, embedding]),
            targeted=with_control(targeted), knockouts=noisy(ko_latent, 0.7),
            routing=noisy(route_latent).astype(np.float32), encoder=noisy(enc_latent).astype(np.float32))
        models[name] = PlantedModel(name, kds, genes, cells.clone())
        outputs[name].sae_activity, outputs[name].sae_effects = _sae_outputs(np.random.default_rng([seed, m, 7]),
                                                                             n_kds + 1, n_genes)
    return World(PlantedRun(models, outputs), kds, genes, magnitude, cluster)


def with_background(w: World, size: int, needed: tuple[str, ...] = (), seed: int = 0) -> World:
    """The world as a run with `--background-kds size` sees it: each model restricted to the KDs of
    its background (suite/background.draw: a seeded sample of `size` KDs, and `needed`), every planted
    output cut to their rows, as RunContext.model restricts a checkpoint's perturbations."""
    found = draw(w.kds, frozenset(needed), size, seed)
    if found is None:
        return w
    kept = set(found.kept)
    kd_rows = np.array([i for i, k in enumerate(w.kds) if k in kept])
    pert_rows = np.concatenate([[0], kd_rows + 1])
    models, outputs = {}, {}
    for name, model in w.ctx.planted.items():
        out = w.ctx.outputs[name]
        models[name] = replace(model, kds=tuple(w.kds[i] for i in kd_rows), all_perts=model.vocabulary,
                               fingerprint=f"planted|kds:{found.digest}")
        outputs[name] = replace(
            out, shifts=out.shifts[pert_rows], per_set=out.per_set[:, pert_rows], embeddings=out.embeddings[pert_rows],
            targeted=out.targeted[pert_rows], routing=out.routing[kd_rows], encoder=out.encoder[kd_rows],
            learned=None if out.learned is None else out.learned[kd_rows],
            sae_activity=None if out.sae_activity is None else out.sae_activity[:, pert_rows],
            sae_effects=None if out.sae_effects is None else out.sae_effects[:, pert_rows],
            screen=None if out.screen is None else replace(
                out.screen, kds=models[name].kds, predicted=out.screen.predicted[kd_rows],
                kd_cells=tuple(out.screen.kd_cells[i] for i in kd_rows), own_gene=out.screen.own_gene[kd_rows]))
    ctx = PlantedRun(models, outputs)
    ctx.programs = w.ctx.programs
    ctx._backgrounds = dict.fromkeys(models, found)
    return replace(w, ctx=ctx)


def _sae_outputs(rng: np.random.Generator, n_perts: int, n_genes: int, n_features: int = 256
                 ) -> tuple[np.ndarray, np.ndarray]:
    """SAE features with no relation to any panel: sparse activity per perturbation, and ablation
    effects with a gene-specific scale (some genes move under any patch, as in a real model)."""
    on = rng.random((n_perts, n_features)) < 0.25
    magnitude = np.exp(rng.normal(0, 0.5, (n_perts, n_features))) * on
    frequency = on * rng.uniform(0.2, 1.0, (n_perts, n_features))
    effects = rng.normal(size=(n_features, n_perts, n_genes)) * np.exp(rng.normal(0, 0.7, n_genes))
    return np.stack([frequency * magnitude, frequency, magnitude]), effects


@dataclass(frozen=True)
class CaseFor:
    """Builds the cases of one check on a world: its axes, its default parameters (overridden),
    and its pass rule (the check's own default)."""

    probe: str
    params: dict = field(default_factory=dict)

    def __call__(self, panel: Panel, axes: dict, others: tuple[Panel, ...] = (), **params) -> Case:
        check = CHECKS[self.probe]
        values = replace(check.params(), **{**self.params, **params})
        rule: PassRule = check.default_rule(values)
        panels = {panel.name: panel, **{p.name: p for p in others}}
        spec = HypothesisSpec(id=f"planted-{self.probe}", claim="planted", probe=self.probe, axes={}, params=values,
                              pass_rule=rule, expected=(), panels=panels, file="planted.yaml", line=1)
        return Case(f"planted-{self.probe}-{panel.name}", spec, axes, None)


def run(case: Case, ctx: RunContext):
    """The check's evidence, exactly as a pytest run computes it."""
    return CHECKS[case.spec.probe].run(case, ctx)
