"""Hypothesis files: the YAML schema, read into checked dataclasses.

A hypothesis file (one per family, top level of `hypotheses/`)::

    schema_version: 1
    panels: [panels/demo_pathways.yaml]     # default panels for every hypothesis below
    hypotheses:
      - id: pert-embedding-coherence        # lower-case, used in pytest ids
        claim: Same-pathway KDs sit closer in pert_encoder space than random KD sets.
        probe: pert_embedding_coherence     # one of suite.families.CHECKS
        axes: {model: all, pathway: all}    # what the hypothesis expands over
        params: {null_model: magnitude_stratified}   # the probe's own parameters (checked per probe)
        pass_rule: {p_below: 0.05, effect_above: 0.0}   # optional; each probe has a default
        expected:                           # optional known outcomes of *your* models
          - where: {pathway: decoy}
            verdict: fail                   # -> xfail; a pass becomes a strict XPASS failure
            reason: no planted program      # (`exploratory`: no known answer; reported, not asserted)

A top-level `definitions:` mapping may hold YAML anchors (`&negatives`) that hypotheses reuse
(`expected: *negatives`). Everything is validated on load: unknown or duplicate keys, wrong types, values out of
range, unknown probes and pathways, a pass rule that tests nothing are SpecErrors naming the file,
line and field.

Expectations that belong to one set of models (the demo's planted answers) do not go into the
shared hypothesis files, where they would apply to every user's models: they go into an
expectations file that the models registry names (`expectations: expectations.yaml`)::

    schema_version: 1
    expectations:
      pert-embedding-coherence:             # a hypothesis id
        - where: {model: hepg2_fewshot, pathway: decoy}
          verdict: fail
          reason: no planted program
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from core import fields
from core.errors import SpecError, close_matches, typos_of
from core.yamlio import LineDict, LineList, read_yaml

from .baseline import DEFAULT_TOLERANCE, METRICS
from .families import CHECKS, Check
from .panels import Panel, load_panels
from .verdicts import PassRule

SCHEMA_VERSION = 1
MODEL_ATTRIBUTES = ("cell_line", "split", "backbone")   # what `expected: where:` may match besides axes
BACKBONES = ("gpt2", "llama")      # arc-state's transformer_backbone_key values, lower case
_ID = re.compile(r"[a-z0-9][a-z0-9_.-]*")


@dataclass(frozen=True)
class Expectation:
    where: dict
    verdict: Literal["pass", "fail", "exploratory"]   # exploratory: no known answer; reported, not asserted
    reason: str = ""


@dataclass(frozen=True)
class HypothesisSpec:
    id: str
    claim: str
    probe: str
    axes: dict[str, Any]
    params: Any
    pass_rule: PassRule
    expected: tuple[Expectation, ...]
    panels: dict[str, Panel]
    file: str
    line: int | None
    axes_line: int | None = None
    expected_at: tuple[tuple[str, int | None], ...] = field(default=())   # (file, line) of each expectation
    tolerance: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCE))

    @property
    def check(self) -> Check:
        """The check of its probe, from the family that registered it (suite/families.py)."""
        return CHECKS[self.probe]


@dataclass(frozen=True)
class _RawHypothesis:
    id: str
    claim: str
    probe: str
    axes: dict
    params: dict | None = None
    pass_rule: PassRule | None = None
    expected: tuple[Expectation, ...] = ()
    panels: tuple[str, ...] | None = None
    tolerance: dict | None = None          # metric -> how far it may move from the baseline run (drift)


@dataclass(frozen=True)
class _RawFile:
    schema_version: int
    hypotheses: tuple[dict, ...]
    panels: tuple[str, ...] = ()
    definitions: dict | None = None      # a place for YAML anchors (&name) reused below; not read otherwise


def load_spec_dir(directory: Path) -> list[HypothesisSpec]:
    """Every hypothesis in the top-level .yaml/.yml files of `directory` (any case of the suffix), sorted by id."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError("is a file, not a folder" if directory.exists() else "hypotheses folder not found",
                        file=str(directory), hint="pass --hypotheses DIR pointing at a folder of hypothesis YAML files")
    specs: dict[str, HypothesisSpec] = {}
    # any case of the suffix (a file saved as .YAML is no less a hypothesis); hidden files and editor
    # locks (.#name.yaml) are not hypotheses
    files = [p for p in directory.iterdir() if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".")]
    for path in sorted(files):
        for spec in load_spec_file(path):
            if spec.id in specs:
                first = specs[spec.id]
                raise SpecError(f"hypothesis id '{spec.id}' is used twice (also {first.file}, line {first.line})",
                                file=spec.file, line=spec.line, field="id", hint="give each hypothesis its own id")
            specs[spec.id] = spec
    return [specs[k] for k in sorted(specs)]


def load_spec_file(path: Path) -> list[HypothesisSpec]:
    data = read_yaml(path)
    where = fields.Where(str(path))
    if isinstance(data, dict) and "pathways" in data and "hypotheses" not in data:
        raise where.error("this is a panel file, but it sits among the hypothesis files", data, "pathways",
                          hint="move it into a subfolder (e.g. panels/) and list it under 'panels:'")
    top = fields.build(_RawFile, data, where)
    fields.check_schema_version(top.schema_version, SCHEMA_VERSION, where, data)
    if not top.hypotheses:
        raise where.error("the file lists no hypotheses", data, "hypotheses")
    items: LineList = data["hypotheses"]
    return [_read_hypothesis(item, path, top.panels, where.child(f"hypotheses[{i}]"), items, i)
            for i, item in enumerate(items)]


def _read_hypothesis(item: Any, path: Path, default_panels: tuple[str, ...],
                     where: fields.Where, parent: LineList, index: int) -> HypothesisSpec:
    raw = fields.build(_RawHypothesis, item, where, parent, index)
    if not _ID.fullmatch(raw.id):
        raise where.error(f"id '{raw.id}' must be lower-case letters, digits, '-', '_' or '.'", item, "id")
    check = CHECKS.get(raw.probe)
    if check is None:
        raise where.error(f"unknown probe '{raw.probe}'", item, "probe",
                          hint=_suggest(raw.probe, CHECKS))
    axes = _read_axes(item["axes"], check.axes, where.child("axes"), item)
    params = fields.build(check.params, raw.params, where.child("params"), item, "params")
    problem = check.validate(params)
    if problem:
        raise where.error(problem, item, "params")
    panel_files = raw.panels if raw.panels is not None else default_panels
    for name in panel_files:
        if not (path.parent / name).is_file():
            owner = item if raw.panels is not None else None
            raise SpecError(f"panel file '{name}' not found (looked for {path.parent / name})", file=str(path),
                            line=owner.line_of("panels") if owner else None, field="panels",
                            hint="panel paths are relative to the hypothesis file that names them")
    panels = load_panels([path.parent / p for p in panel_files]) if panel_files else {}
    if "pathway" in axes:
        _check_pathways(axes["pathway"], panels, where.child("axes"), item["axes"])
    for i, exp in enumerate(raw.expected):
        _check_expectation(exp, check.axes, panels, where.child(f"expected[{i}]"), item["expected"], i)
    rule = _pass_rule(raw.pass_rule, item, check.default_rule(params), raw.probe, where)
    tolerance = _read_tolerance(raw.tolerance, where, item) if raw.tolerance is not None else dict(DEFAULT_TOLERANCE)
    return HypothesisSpec(raw.id, " ".join(raw.claim.split()), raw.probe, axes, params, rule,
                          raw.expected, panels, str(path), item.line_of("id"),
                          item.line_of("axes"), tuple((str(path), item["expected"].line_of(i))
                                                      for i in range(len(raw.expected))), tolerance)


@dataclass(frozen=True)
class _RawExpectations:
    schema_version: int
    expectations: dict


def load_expectations(path: Path, specs: list[HypothesisSpec]) -> list[HypothesisSpec]:
    """`specs` with the expectations of an expectations file added to each hypothesis it names."""
    path = Path(path)
    data = read_yaml(path)
    where = fields.Where(str(path))
    top = fields.build(_RawExpectations, data, where)
    fields.check_schema_version(top.schema_version, SCHEMA_VERSION, where, data)
    by_id = {spec.id: spec for spec in specs}
    table = fields.expect_mapping(top.expectations, where.child("expectations"), data, "expectations")
    added: dict[str, tuple[list[Expectation], list[tuple[str, int | None]]]] = {}
    for hypothesis, entries in table.items():
        here = where.child(f"expectations.{hypothesis}")
        spec = by_id.get(str(hypothesis))
        if spec is None:
            # a hypothesis this run did not load (another --hypotheses folder) is no mistake; a near miss is
            hits = typos_of(str(hypothesis), by_id)
            if hits:
                raise here.error(f"no hypothesis has the id '{hypothesis}'", table, hypothesis,
                                 hint=f"did you mean '{hits[0]}'?")
            continue
        if not isinstance(entries, list) or not entries:
            raise here.error("expected a non-empty list of {where, verdict, reason} entries", table, hypothesis)
        found = [fields.build(Expectation, entry, here.child(f"[{i}]"), entries, i) for i, entry in enumerate(entries)]
        for i, exp in enumerate(found):
            _check_expectation(exp, spec.check.axes, spec.panels, here.child(f"[{i}]"), entries, i)
        added[spec.id] = (found, [(str(path), entries.line_of(i)) for i in range(len(entries))])
    return [replace(spec, expected=spec.expected + tuple(added[spec.id][0]),
                    expected_at=spec.expected_at + tuple(added[spec.id][1])) if spec.id in added else spec
            for spec in specs]


def _pass_rule(given: PassRule | None, item: LineDict, default: PassRule, probe: str, where: fields.Where
               ) -> PassRule:
    """The probe's default rule with the keys the YAML gives replaced (a key left out keeps the probe's
    default, not PassRule's generic one), refused when no case could ever pass or every case would."""
    if given is None:
        return default
    written = item["pass_rule"] if isinstance(item.get("pass_rule"), dict) else {}
    rule = replace(default, **{key: getattr(given, key) for key in written})
    if not any(v is not None for v in asdict(rule).values()):
        raise where.error("the pass rule tests nothing: every case would pass", item, "pass_rule",
                          hint="give at least one of p_below, effect_above, statistic_above, statistic_below, "
                               "or leave pass_rule out for the probe's default")
    here = where.child("pass_rule")
    if rule.p_below is not None and default.p_below is None:
        raise here.error(f"probe '{probe}' reports no p-value, so 'p_below' could never hold", written, "p_below",
                         hint="use statistic_above / statistic_below, or leave pass_rule out for the probe's default")
    if rule.p_below == 0:
        raise here.error("p_below: 0 can never hold (a p-value is above 0)", written, "p_below")
    if rule.statistic_above is not None and rule.statistic_below is not None \
            and rule.statistic_above >= rule.statistic_below:
        raise here.error(f"statistic_above {rule.statistic_above} and statistic_below {rule.statistic_below} leave "
                         "no value that passes", written, "statistic_below")
    return rule


def _read_tolerance(value: Any, where: fields.Where, item: LineDict) -> dict[str, float]:
    tolerance = fields.expect_mapping(value, where.child("tolerance"), item, "tolerance")
    fields.reject_unknown(tolerance, METRICS, where.child("tolerance"))
    for metric, limit in tolerance.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit <= 1e300:
            raise where.child("tolerance").error(f"'{metric}' must be a number >= 0 (how far it may move from the "
                                                 f"baseline before it is reported as drift)", tolerance, metric)
    return {metric: float(limit) for metric, limit in tolerance.items()}


def _read_axes(value: Any, wanted: tuple[str, ...], where: fields.Where, parent: LineDict) -> dict[str, Any]:
    axes = fields.expect_mapping(value, where, parent, "axes")
    fields.reject_unknown(axes, wanted, where)
    missing = [a for a in wanted if a not in axes]
    if missing:
        raise where.error(f"missing axis '{missing[0]}' (this probe expands over {', '.join(wanted)})", axes)
    out = {}
    for name in wanted:
        value = axes[name]
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, list) and value and all(_axis_item_ok(name, v) for v in value):
            out[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            form = "'all', 'cross_line', 'same_line' or a list of [model, model] pairs" \
                if name == "model_pair" else "'all' or a non-empty list of names"
            raise where.error(f"axis '{name}' must be {form}", axes, name)
    return out


def _axis_item_ok(axis: str, value: Any) -> bool:
    if axis == "model_pair":
        return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def _check_pathways(selected: Any, panels: dict[str, Panel], where: fields.Where, axes: LineDict) -> None:
    if not panels:
        raise where.error("the pathway axis needs panels, but none are given", axes, "pathway",
                          hint="add 'panels: [path/to/panels.yaml]' to the file or the hypothesis")
    if selected == "all":
        return
    if isinstance(selected, str):
        raise where.error(f"axis 'pathway' must be 'all' or a list, got '{selected}'", axes, "pathway")
    for name in selected:
        if name not in panels:
            raise where.error(f"unknown pathway '{name}'", axes, "pathway", hint=_suggest(name, panels))


def _check_expectation(exp: Expectation, axes: tuple[str, ...], panels: dict[str, Panel],
                       where: fields.Where, parent: LineList, index: int) -> None:
    # cell_line, split and backbone are a model's: on a pair probe they would match no case
    allowed = [*axes, *MODEL_ATTRIBUTES] if "model" in axes else list(axes)
    entry = parent[index]
    where_map = fields.expect_mapping(exp.where, where, entry, "where")
    fields.reject_unknown(where_map, allowed, where.child("where"))
    for key, value in where_map.items():
        if not isinstance(value, (str, int, float, bool)):
            raise where.child("where").error(f"'{key}' must be one value (a 'where' matches one case at a time)",
                                             where_map, key, hint="write one expectation per value")
    pathway = where_map.get("pathway")
    if pathway is not None and pathway not in panels:
        raise where.error(f"unknown pathway '{pathway}'", where_map, "pathway", hint=_suggest(str(pathway), panels))


def _suggest(name: str, known: Any) -> str:
    hits = close_matches(name, list(known))
    return f"did you mean '{hits[0]}'?" if hits else f"known: {', '.join(sorted(known))}"
