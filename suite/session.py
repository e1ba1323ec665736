"""The state one run shares across its cases: models loaded once, probe outputs computed once
(and kept on disk across runs, keyed by model fingerprint: suite/cache.py), and each model's
audit (what it really computes) measured once per run; the audit is never taken from disk,
so a library upgrade that changes what a model computes shows in the next run."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from core.errors import Inconclusive, ModelLoadError, ProbeError
from fixtures.arc_state import LoadedModel, load_model, load_screen
from fixtures.registry import ModelEntry
from fixtures.reinit import reinitialised
from fixtures.sae import load_sae
from probes import model_audit
from probes.audit import random_orderings
from probes.embeddings import output_shifts, select_cells
from probes.representations import Readout, cell_sets, hidden_width, per_set_shifts
from probes.sae import SparseAutoencoder

from . import learnedness
from .background import Background, BackgroundSize, draw
from .cache import ArrayCache
from .progress import Progress

T = TypeVar("T")


class RunContext:
    """Lazily loads registry models on one device and memoises probe outputs by key."""

    def __init__(self, registry: dict[str, ModelEntry], device: torch.device, cell_orderings: int = 8,
                 cache: ArrayCache | None = None, progress: Progress | None = None,
                 programs: Sequence[Sequence[str]] = (), background: BackgroundSize = "all",
                 needed: Collection[str] = ()) -> None:
        self.registry = registry
        # the KD lists of the run's panels: a KD's learnedness is judged against the KDs outside them
        self.programs = tuple(dict.fromkeys(tuple(p) for p in programs))
        # the KDs a run computes: every KD its panels name, and a background sample of `background` KDs
        # (suite/background.py)
        self.background_size, self.needed = background, frozenset(needed)
        self._backgrounds: dict[str, Background | None] = {}
        self.progress = progress
        self.device = device
        self.cell_orderings = cell_orderings
        self.cache = cache or ArrayCache(None)
        self._models: dict[str, LoadedModel] = {}
        self._memo: dict[Hashable, object] = {}
        self.cache_counts: dict[str, Counter] = {}    # model -> probe outputs "reused" from disk / "computed"

    def model(self, name: str) -> LoadedModel:
        """A registry model, or (for a name from `reinitialised_name`) its re-initialised copy."""
        if name not in self._models:
            base, seed = parse_reinitialised(name)
            if seed is None:
                model = load_model(self.registry[name], self.device)
                found = self._backgrounds[name] = draw(model.kd_names, self.needed, self.background_size)
                self._models[name] = model if found is None else restricted(model, found)
            else:
                self._models[name] = reinitialised(self.model(base), name, seed)
        return self._models[name]

    def background(self, name: str) -> Background | None:
        """The model's background sample (a re-initialised copy has its model's), None when the run
        computes every KD of it."""
        base = parse_reinitialised(name)[0]
        self.model(base)
        return self._backgrounds.get(base)

    def background_sample(self, names: Sequence[str]) -> frozenset[str] | None:
        """The KDs that nulls, baselines and whole-model statistics of these models draw from: the
        background every one of them was given (None: every KD)."""
        found = [b.sample for b in map(self.background, names) if b is not None]
        return frozenset.intersection(*found) if found else None

    def entry(self, name: str) -> ModelEntry:
        return self.registry[parse_reinitialised(name)[0]]

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """compute() once per key per run (keys include the model name and every parameter)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def stored(self, kind: str, name: str, compute: Callable[[], T], *, disk: bool = True, **parts: Hashable) -> T:
        """The one way a probe family asks for a probe output of model `name`: compute() once per run
        per (kind, name, parts), and, for an array (`disk`), once per model fingerprint, parameters and
        library versions on disk. `disk=False` keeps it for the run only: an output that is not one
        array, or one whose disk cache the family keeps itself (the routing Jacobians' memmap)."""
        if not disk:
            return self.memo((kind, name, *sorted(parts.items())), compute)

        def load() -> np.ndarray:
            key = self.cache.key(kind, fingerprint=self.model(name).fingerprint, **parts)
            found = self.cache.get(key)
            self.tally(name, found is not None)
            if found is None:        # checked before it is cached, so a NaN never reaches the disk
                found = require_finite(compute(), kind, name)
                self.cache.put(key, found)
                return found
            return require_finite(found, kind, name)

        return self.memo((kind, name, *sorted(parts.items())), load)

    def known(self, key: Hashable) -> bool:
        return key in self._memo

    def remember(self, key: Hashable, value: object) -> None:
        """Keep a value computed alongside others (one row of a block of Jacobians) for the run."""
        self._memo[key] = value

    def recall(self, key: Hashable) -> object:
        return self._memo[key]

    def reporter(self, what: str, unit: str) -> Callable[[int, int], None] | None:
        """A (done, total) callback that shows a long probe pass's progress, or None when nobody watches."""
        return self.progress.task(what, unit) if self.progress else None

    def cache_snapshot(self) -> dict[str, Counter]:
        return {name: Counter(counts) for name, counts in self.cache_counts.items()}

    def cache_since(self, snapshot: dict[str, Counter]) -> dict[str, dict[str, int]]:
        """Per model, the probe outputs reused and computed since `snapshot`."""
        changes = {name: counts - snapshot.get(name, Counter()) for name, counts in self.cache_counts.items()}
        return {name: {"reused": c["reused"], "computed": c["computed"]} for name, c in changes.items() if c}

    def tally(self, name: str, reused: bool, n: int = 1) -> None:
        """Count `n` probe outputs of model `name` as reused from disk or computed (the record's `cache`)."""
        self.cache_counts.setdefault(name, Counter())["reused" if reused else "computed"] += n

    def audit(self, name: str) -> model_audit.ModelAudit:
        model = self.model(name)
        shifts = self.output_shifts(name, model.cell_set_len, model_audit.SEED, n_orderings=1)
        return self.memo(("audit", name), lambda: model_audit.audit_model(model, shifts, self.cell_orderings))

    def audit_record(self, name: str) -> dict:
        """What the run's record says of a model (run.models.<name>.audit): what it computes, how many
        of its KDs it learned (observed cells), and which genes and cell matrix it was fed."""
        def compute() -> dict:
            table = self.learnedness(name)
            counts = table.counts()
            learned = {"counts": counts, "kds": len(table.kds), "observed": table.observed,
                       "learned_fraction": counts["learned"] / max(len(table.kds), 1) if table.observed else None,
                       "source": table.source}
            found = self.background(name)
            return (self.audit(name).to_dict() | {"learnedness": learned, "inputs": self.model(name).inputs}
                    | ({"background": found.to_dict()} if found else {}))

        return self.memo(("audit_record", name), compute)

    def audit_records(self, names: Sequence[str]) -> dict[str, dict]:
        """The audit records already made of these models (none is made here: a hook asks this)."""
        return {name: self._memo[("audit_record", name)] for name in names if ("audit_record", name) in self._memo}

    def n_orderings(self, name: str, requested: int | None) -> int:
        """How many cell orderings order-sensitive probes average over: 1 unless the audit found
        that this model's outputs depend on cell order. A re-initialised copy is probed exactly as
        the model it is a control for, so it follows that model's audit (an audit of its own costs
        a pass per copy, and a random-weight copy's order dependence could fall either side of the
        audit's threshold, leaving the two compared on different numbers of orderings)."""
        audited = parse_reinitialised(name)[0]
        return (requested or self.cell_orderings) if self.audit(audited).order_sensitive else 1

    def output_shifts(self, name: str, size: int, seed: int, n_orderings: int, sampling: str = "random") -> np.ndarray:
        """Mean output shift of every perturbation on `size` control cells chosen by `sampling`
        (probes/embeddings.select_cells), order-averaged."""
        model = self.model(name)

        def compute() -> np.ndarray:
            cells = select_cells(model.cells, size, seed, sampling)
            orders = random_orderings(size, n_orderings, seed)
            return output_shifts(model.module, model.pert_onehots, model.pert_index(model.control_pert), cells,
                                 orderings=orders,
                                 progress=self.reporter(f"ΔY of {name} ({n_orderings} ordering(s), {size} {sampling} "
                                                        "cells)", "perturbation passes"))

        return self.stored("output_shifts", name, compute, size=size, seed=seed, orderings=n_orderings,
                           sampling=sampling)

    def learnedness(self, name: str) -> learnedness.Learnedness:
        """Which of the model's KDs it learned (suite/learnedness.py): judged on the registry's observed
        perturbed cells when it gives them, each KD against the KDs outside its program (the run's
        panels that hold it), else only the KDs training never moved are known."""
        def compute() -> learnedness.Learnedness:
            kds = self.model(name).kd_names
            untrained = self.untrained(name)
            column_note = ("" if untrained is None else
                           f"; {int(untrained.sum())} KD(s) whose pert_encoder column training never moved")
            untrained = np.zeros(len(kds), dtype=bool) if untrained is None else untrained
            screen = self.observed_screen(name)
            if screen is None:
                return learnedness.from_checkpoint(kds, untrained, "not judged on observed cells (no 'perturbed:' "
                                                   "in the models registry)" + column_note)
            in_programs = len({k for p in self.programs for k in p} & set(kds))
            programs = (f"; each KD against the KDs outside its program ({in_programs} KDs in {len(self.programs)} "
                        "panels of the run)" if self.programs else "")
            sample = self.background_sample([name])
            said = f"; generic responses of the background's {len(sample)} KDs" if sample else ""
            return learnedness.judge(screen, untrained, self.programs, source=screen.source + programs + said
                                     + column_note, background=sample)

        return self.memo(("learnedness", name), compute)

    def pooled_learnedness(self, name: str, members: Sequence[str]) -> learnedness.Pooled | None:
        """The judgement of these KDs' shared response on the model's observed screen (None without one,
        or with fewer than 2 of them observed): suite/learnedness.pooled."""
        def compute() -> learnedness.Pooled | None:
            screen = self.observed_screen(name)
            return None if screen is None else learnedness.pooled(screen, members, self.programs,
                                                                  self.background_sample([name]))

        return self.memo(("pooled_learnedness", name, tuple(members)), compute)

    def untrained(self, name: str) -> np.ndarray | None:
        """[K] which KDs' pert_encoder columns training never moved (None: the encoder is not one-hot linear)."""
        return _untrained(self.model(name))

    def observed_screen(self, name: str) -> learnedness.Screen | None:
        """The registry's observed perturbed cells of this model and its predictions on their controls
        (None without a 'perturbed:' entry)."""
        entry = self.entry(name).perturbed
        if entry is None:
            return None
        model = self.model(name)

        def compute() -> learnedness.Screen:
            screen = load_screen(model)
            size = min(model.cell_set_len, len(screen.controls))
            n_sets = max(1, min(LEARNEDNESS_SETS, len(screen.controls) // size))
            predicted = self.stored("screen_predictions", name, lambda: self._screen_predictions(
                model, screen.controls if screen.inputs is None else screen.inputs, n_sets, size), sets=n_sets,
                size=size)
            kds = model.kd_names
            return learnedness.Screen(
                kds, predicted[[model.pert_index(k) for k in kds]], tuple(screen.kd_cells.get(k) for k in kds),
                screen.controls, np.array([model.gene_names.index(k) if k in model.gene_names else -1 for k in kds]),
                min_cells=entry.min_cells, seed=LEARNEDNESS_SEED,
                source=f"{screen.path.name}: {len(screen.controls)} control cells, {len(screen.kd_cells)} KDs with "
                       f"perturbed cells; predictions on {n_sets} x {size} of those controls")

        return self.memo(("observed_screen", name), compute)

    def _screen_predictions(self, model: LoadedModel, controls: np.ndarray, n_sets: int, size: int) -> np.ndarray:
        """[n_perts, G] predicted shifts on the screen's controls."""
        cells = torch.as_tensor(controls, device=self.device)
        onehots = model.pert_onehots
        orders = random_orderings(size, self.n_orderings(model.name, None), LEARNEDNESS_SEED)
        sets = cell_sets(cells, n_sets, size, LEARNEDNESS_SEED)
        shifts = per_set_shifts(model.module, onehots, model.pert_index(model.control_pert), sets,
                                Readout("output"), orders)
        return shifts.mean(axis=0)

    def sae(self, name: str) -> tuple[SparseAutoencoder, int]:
        """The registry's SAE of this model and the layer it reads, checked against that layer's width."""
        entry = self.entry(name).sae
        if entry is None:
            raise Inconclusive(f"model '{name}' has no 'sae' entry in the models registry")

        def compute() -> SparseAutoencoder:
            sae = load_sae(Path(entry.path), entry.activation, entry.k)
            model = self.model(name)
            width = hidden_width(model.module, entry.layer, model.cells)
            if sae.d_in != width:
                raise ModelLoadError(f"{entry.path}: the SAE reads {sae.d_in} features but layer {entry.layer} of "
                                     f"model '{name}' has {width}; it belongs to another model or layer. Fix "
                                     "'sae.path' or 'sae.layer' in the models registry.")
            return sae.to(self.device)

        return self.memo(("sae", name), compute), entry.layer


def restricted(model: LoadedModel, background: Background) -> LoadedModel:
    """The model with only the control and the background's KDs among its perturbations, under a
    fingerprint of its own (its probe outputs have other rows than the whole model's)."""
    kept = set(background.kept)
    rows = [i for i, n in enumerate(model.pert_names) if n == model.control_pert or n in kept]
    return replace(model, pert_names=tuple(model.pert_names[i] for i in rows), pert_onehots=model.pert_onehots[rows],
                   fingerprint=f"{model.fingerprint}|kds:{background.digest}", all_perts=model.vocabulary)


def _untrained(model: LoadedModel) -> np.ndarray | None:
    """[K] which KDs' one-hot columns of the pert_encoder's first layer never moved in training (None
    when the encoder does not start with a linear layer over one-hot vectors)."""
    encoder = model.module.pert_encoder
    first = encoder[0] if isinstance(encoder, torch.nn.Sequential) else encoder
    if not isinstance(first, torch.nn.Linear):
        return None
    rows = model.pert_onehots[[model.pert_index(k) for k in model.kd_names]]
    return learnedness.untrained_columns(first.weight.detach().double().cpu().numpy(), rows.double().cpu().numpy())


def pert_reprs(model: LoadedModel, names: Sequence[str]) -> torch.Tensor:
    """[len(names), H] pert_encoder outputs of these perturbations."""
    with torch.no_grad():
        reprs = model.module.pert_encoder(model.pert_onehots[[model.pert_index(k) for k in names]])
    return require_finite(reprs, "pert_encoder outputs", model.name)


A = TypeVar("A", np.ndarray, torch.Tensor)


def require_finite(values: A, what: str, model: str) -> A:
    """`values`, or a ProbeError naming the model and the probe output that holds NaN or inf: a
    non-finite number compares false with every threshold and would otherwise read as a fail."""
    bad = int((~torch.isfinite(values)).sum()) if isinstance(values, torch.Tensor) \
        else int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        total = values.numel() if isinstance(values, torch.Tensor) else values.size
        raise ProbeError(f"model '{model}': {bad} of {total} values of its {what.replace('_', ' ')} are NaN or "
                         "infinite. Check the model's weights and the scale of its cells (the registry's "
                         "'cells:' file) before trusting any verdict.")
    return values


LEARNEDNESS_SETS, LEARNEDNESS_SEED = 8, 0   # control-cell sets the screen's predictions average over

REINITIALISED = "~reinit"


def reinitialised_name(name: str, copy: int) -> str:
    """The name under which RunContext.model gives copy number `copy` of `name`, re-initialised."""
    return f"{name}{REINITIALISED}{copy}"


def parse_reinitialised(name: str) -> tuple[str, int | None]:
    """(registry name, seed of the re-initialised copy or None); each model and copy gets its own seed."""
    base, mark, copy = name.rpartition(REINITIALISED)
    if not mark or not copy.isdigit():
        return name, None
    return base, zlib.crc32(name.encode())
