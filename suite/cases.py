"""Expanding hypotheses over their axes into cases, one pytest test each.

Axis values:
  model:      'all' (every registry model) or a list of names
  pathway:    'all' (every pathway of the panels) or a list of names
  model_pair: 'cross_line' (same split, different cell_line), 'same_line' (same cell_line,
              different split), 'all' (every pair) or a list of [model, model]
The case id joins the hypothesis id and the axis values:
`pert-embedding-coherence-hepg2_fewshot-ribosome`, `...-hepg2_fewshot-vs-jurkat_fewshot-...`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from core.errors import SpecError, close_matches, typos_of

from .spec import BACKBONES, MODEL_ATTRIBUTES, Expectation, HypothesisSpec


@dataclass(frozen=True)
class ModelInfo:
    """What case expansion needs to know about a registry model."""

    name: str
    cell_line: str
    split: str
    backbone: str = "unknown"      # as declared in the model's config.yaml, lower case


@dataclass(frozen=True)
class Case:
    case_id: str
    spec: HypothesisSpec
    axes: dict[str, Any]             # {"model": "hepg2_fewshot", "pathway": "ribosome"} ...
    expected: Expectation | None

    @property
    def models(self) -> tuple[str, ...]:
        if "model" in self.axes:
            return (self.axes["model"],)
        return tuple(self.axes.get("model_pair", ()))

    def params(self) -> dict[str, Any]:
        """Axis values (pairs as 'a-vs-b') for reports."""
        return {k: "-vs-".join(v) if isinstance(v, tuple) else v for k, v in self.axes.items()}


def expand_all(specs: list[HypothesisSpec], models: list[ModelInfo]) -> list[Case]:
    cases = [case for spec in specs for case in expand(spec, models)]
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise SpecError(f"two cases share the id '{case.case_id}'", file=case.spec.file, line=case.spec.line,
                            hint="give the hypotheses ids that do not run into each other")
        seen[case.case_id] = case
    return cases


def expand(spec: HypothesisSpec, models: list[ModelInfo]) -> list[Case]:
    axis_names = spec.check.axes
    values = [_axis_values(spec, name, models) for name in axis_names]
    _check_expectation_values(spec, models)
    cases = []
    for combo in itertools.product(*values):
        axes = dict(zip(axis_names, combo, strict=True))
        parts = ["-vs-".join(v) if isinstance(v, tuple) else v for v in combo]
        expected = _expected_for(spec, axes, {m.name: m for m in models})
        cases.append(Case("-".join([spec.id, *parts]), spec, axes, expected))
    return cases


def _axis_values(spec: HypothesisSpec, axis: str, models: list[ModelInfo]) -> list[Any]:
    chosen = spec.axes[axis]
    names = [m.name for m in models]
    if axis == "pathway":
        return list(spec.panels) if chosen == "all" else list(chosen)
    if axis == "model":
        if chosen == "all":
            return names
        if isinstance(chosen, str):     # a bare name would be read letter by letter
            raise SpecError(f"axis 'model' must be 'all' or a list of names, got '{chosen}'", file=spec.file,
                            line=spec.axes_line, field="axes.model", hint=f"write model: [{chosen}]")
        _require_models(spec, chosen, names)
        return list(chosen)
    return _model_pairs(spec, chosen, models)


def _model_pairs(spec: HypothesisSpec, chosen: Any, models: list[ModelInfo]) -> list[tuple[str, str]]:
    pairs = list(itertools.combinations(models, 2))
    if chosen == "all":
        return [(a.name, b.name) for a, b in pairs]
    if chosen == "cross_line":
        return [(a.name, b.name) for a, b in pairs if a.split == b.split and a.cell_line != b.cell_line]
    if chosen == "same_line":
        return [(a.name, b.name) for a, b in pairs if a.cell_line == b.cell_line and a.split != b.split]
    if isinstance(chosen, str):
        raise SpecError(f"unknown model_pair selector '{chosen}'", file=spec.file, line=spec.axes_line,
                        field="axes.model_pair", hint="use cross_line, same_line, all or a list of pairs")
    _require_models(spec, [n for pair in chosen for n in pair], [m.name for m in models])
    same = [a for a, b in chosen if a == b]
    if same:
        raise SpecError(f"model_pair [{same[0]}, {same[0]}] compares a model with itself", file=spec.file,
                        line=spec.axes_line, field="axes.model_pair", hint="name two different models")
    return [tuple(pair) for pair in chosen]


def _require_models(spec: HypothesisSpec, wanted: list[str], names: list[str]) -> None:
    for name in wanted:
        if name not in names:
            hits = close_matches(name, names)
            raise SpecError(f"model '{name}' is not in the models registry",
                            file=spec.file, line=spec.axes_line, field="axes",
                            hint=f"did you mean '{hits[0]}'?" if hits else f"registry models: {', '.join(names)}")


def _expected_for(spec: HypothesisSpec, axes: dict[str, Any], models: dict[str, ModelInfo]) -> Expectation | None:
    matches = [(i, e) for i, e in enumerate(spec.expected) if _matches(e.where, axes, models)]
    verdicts = {e.verdict for _, e in matches}
    if len(verdicts) > 1:
        file, line = _origin(spec, matches[-1][0])
        raise SpecError(f"expectations disagree for one case ({', '.join(sorted(verdicts))})",
                        file=file, line=line, field="expected",
                        hint="narrow the 'where' of one of them so each case gets one expected verdict")
    return matches[0][1] if matches else None


def _origin(spec: HypothesisSpec, index: int) -> tuple[str, int | None]:
    return spec.expected_at[index] if index < len(spec.expected_at) else (spec.file, spec.line)


def _check_expectation_values(spec: HypothesisSpec, models: list[ModelInfo]) -> None:
    """An expectation whose `where` names a model, pair or attribute value the registry does not have
    matches no case and is never checked. In the registry's own expectations file (written for exactly
    these models) and for `backbone` (a fixed vocabulary) that is an error; in a hypothesis file, which
    other registries share, it is an error when the value is a typo of one the registry has."""
    names = [m.name for m in models]
    pairs = ["-vs-".join(pair) for pair in itertools.permutations(names, 2)]
    known = {"model": names, "model_pair": pairs} | {
        attr: sorted({getattr(m, attr).lower() for m in models}) for attr in MODEL_ATTRIBUTES}
    known["backbone"] = list(BACKBONES)
    for i, exp in enumerate(spec.expected):
        file, line = _origin(spec, i)
        for key, value in exp.where.items():
            allowed = known.get(key)
            wanted = str(value).lower() if key in MODEL_ATTRIBUTES else str(value)
            if allowed is None or wanted in allowed:
                continue
            typos = typos_of(wanted, allowed)
            if file == spec.file and key != "backbone" and not typos:
                continue
            hits = typos or close_matches(str(value), list(allowed))
            raise SpecError(f"expectation of '{spec.id}' names {key} '{value}', which no registry model has",
                            file=file, line=line, field=f"expected[{i}].where.{key}" if file == spec.file
                            else f"expectations.{spec.id}.where.{key}",
                            hint=f"did you mean '{hits[0]}'?" if hits else f"known: {', '.join(allowed) or 'none'}")


def _matches(where: dict, axes: dict[str, Any], models: dict[str, ModelInfo]) -> bool:
    for key, want in where.items():
        if key in axes:
            have = axes[key]
            # a pair matches in either order: the pair checks are symmetric in their two models
            spelled = {"-vs-".join(have), "-vs-".join(reversed(have))} if isinstance(have, tuple) else {have}
            if str(want) not in spelled:
                return False
        elif key in MODEL_ATTRIBUTES:
            model = models.get(axes.get("model", ""))
            if model is None or getattr(model, key).lower() != str(want).lower():
                return False
        else:
            return False
    return True
