"""The dual-probe synthesis: is a pathway organized (representations), routed (Jacobians), both or neither?

Each probe that reads one model and one pathway speaks for one side: the representation
probes (pert_encoder space, ΔY, layers, SAE features) for "organized", the causal probes
(targeted Jacobians, routing axes, in-silico knockouts) for "routed" (`Check.side`). Per
model and pathway the two sides are read by RULE; the grid beside the line shows every
case the line came from. Cases over a model pair get a grid of their own; a pair case whose
check has a side (the pathway drives features both models conserve) speaks for that side of
both its models, and shows in their grids too. Cases without a pathway do not enter the line.

Seed note 002's strongest claim, convergent evidence of a circuit, is read beside the line: a
pathway whose targeted Jacobian (dY[target]/dX[regulator], Option 3) and SAE feature patching
(NB07) both pass and survive the correction in one model (CIRCUIT).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .verdicts import ALPHA

SIDES = ("organized", "routed")
RULE = (f"A side holds when more than half of its cases pass and survive the run's Benjamini-Hochberg correction "
        f"(q < {ALPHA}); it does not hold when more than half reached a verdict and do not (fail, or pass only "
        f"before correction). A pass unverified for want of observed cells counts for neither. "
        f"Otherwise (evidence split, too many cases inconclusive or errored, or no case of "
        f"that side for the pathway) the side is inconclusive, and so is the line. One stray pass among several "
        f"probes does not make a pathway organized or routed.")
LINES = {(True, True): "organized and routed", (True, False): "organized but not routed",
         (False, True): "routed but not organized", (False, False): "neither"}
# the two analyses whose joint pass is the note's convergent evidence: the input-sensitivity probe and the
# feature-ablation probe must each find the pathway specific (probe names of suite/checks/)
CIRCUIT = ("targeted_jacobian", "sae_feature_patching")
CIRCUIT_TEXT = ("convergent circuit evidence: the targeted Jacobian (input sensitivity) and SAE feature patching "
                "(feature ablation) are both pathway-specific")


@dataclass(frozen=True)
class Cell:
    """One case in a grid."""

    case_id: str
    verdict: str
    expected: str | None
    q: float | None
    discovery: bool                    # passes, survives the run's BH correction, and is verified
    unverified: str | None = None      # a pass whose KDs were not judged on observed cells (suite/verdicts.py)


@dataclass(frozen=True)
class SideReading:
    side: str
    state: str                 # holds | does not hold | inconclusive
    text: str                  # the counts behind the state, in words


@dataclass(frozen=True)
class Reading:
    """The one line for a pathway in a model."""

    line: str
    organized: SideReading
    routed: SideReading
    circuit: str | None = None         # CIRCUIT_TEXT where both circuit probes are discoveries


@dataclass
class Row:
    pathway: str
    cells: list[list[Cell]]            # one list per column (a column's hypothesis may give several cases)
    reading: Reading | None = None


@dataclass
class Grid:
    """Pathways x hypotheses for one model (or one model pair)."""

    name: str
    kind: str                          # model | pair
    columns: list[dict[str, Any]]      # {"hypothesis", "probe", "side"}
    rows: list[Row] = field(default_factory=list)
    overall: list[dict[str, Any]] = field(default_factory=list)   # cases without a pathway: {"hypothesis", "cells"}


def synthesize(cases: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The run's synthesis: the rule, a grid per model and per model pair, and each model's lines."""
    cases = list(cases)
    grids = [_grid(name, kind, [c for c in cases if _unit(c) == (kind, name) or _speaks_for(c, kind, name)])
             for kind, name in _units(cases)]
    return {"rule": RULE, "alpha": ALPHA, "grids": [asdict(g) for g in grids]}


def read_sides(organized: list[Cell], routed: list[Cell], pathway: str) -> Reading:
    sides = {side: read_side(side, cells, pathway) for side, cells in zip(SIDES, (organized, routed), strict=True)}
    states = [sides[s].state for s in SIDES]
    if "inconclusive" in states:
        line = "inconclusive"
    else:
        line = LINES[tuple(state == "holds" for state in states)]
    return Reading(line, sides["organized"], sides["routed"])


def read_side(side: str, cells: list[Cell], pathway: str) -> SideReading:
    if not cells:
        return SideReading(side, "inconclusive", f"no {side} hypothesis covers {pathway}")
    found = sum(c.discovery for c in cells)
    unverified = sum(c.verdict == "pass" and bool(c.unverified) for c in cells)
    uncorrected = sum(c.verdict == "pass" and not c.discovery and not c.unverified for c in cells)
    unsettled = sum(c.verdict in ("inconclusive", "error") for c in cells) + unverified
    text = f"{found} of {len(cells)} pass with q < {ALPHA}"
    if uncorrected:
        text += f"; {uncorrected} more pass only before correction"
    if unverified:
        text += f"; {unverified} pass unverified (no observed cells: which KDs the model learned is not known)"
    if unsettled - unverified:
        text += f"; {unsettled - unverified} inconclusive or errored"
    if found > len(cells) / 2:
        return SideReading(side, "holds", text)
    if len(cells) - found - unsettled > len(cells) / 2:
        return SideReading(side, "does not hold", text)
    return SideReading(side, "inconclusive", text)


def _units(cases: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, name) of every model and model pair, in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    for case in cases:
        seen.setdefault(_unit(case))
    return [unit for unit in seen if unit[1] is not None]


def _unit(case: dict[str, Any]) -> tuple[str, str | None]:
    params = case.get("params", {})
    if params.get("model_pair"):
        return "pair", params["model_pair"]
    return "model", params.get("model")


def _speaks_for(case: dict[str, Any], kind: str, name: str) -> bool:
    """A pair case with a side and a pathway counts for each of its two models."""
    pair = case.get("params", {}).get("model_pair")
    return (kind == "model" and bool(pair) and case.get("side") in SIDES and case["params"].get("pathway") is not None
            and name in pair.split("-vs-"))


def _grid(name: str, kind: str, cases: list[dict[str, Any]]) -> Grid:
    per_pathway = [c for c in cases if c["params"].get("pathway") is not None]
    ordered = sorted(per_pathway, key=lambda c: SIDES.index(c["side"]) if c.get("side") in SIDES else len(SIDES))
    columns: dict[str, dict[str, Any]] = {}
    for c in ordered:
        columns.setdefault(c["hypothesis"], {"hypothesis": c["hypothesis"], "probe": c["probe"], "side": c.get("side")})
    grid = Grid(name, kind, list(columns.values()))
    for pathway in dict.fromkeys(c["params"]["pathway"] for c in per_pathway):
        mine = [c for c in per_pathway if c["params"]["pathway"] == pathway]
        cells = [[_cell(c) for c in mine if c["hypothesis"] == column["hypothesis"]] for column in grid.columns]
        grid.rows.append(Row(pathway, cells, _reading(kind, pathway, mine)))
    rest = [c for c in cases if c["params"].get("pathway") is None]
    for hypothesis in dict.fromkeys(c["hypothesis"] for c in rest):
        cells = [_cell(c) for c in rest if c["hypothesis"] == hypothesis]
        grid.overall.append({"hypothesis": hypothesis, "cells": cells})
    return grid


def _reading(kind: str, pathway: str, cases: list[dict[str, Any]]) -> Reading | None:
    if kind != "model":
        return None
    by_side = {side: [_cell(c) for c in cases if c.get("side") == side] for side in SIDES}
    reading = read_sides(by_side["organized"], by_side["routed"], pathway)
    found = {probe: any(_cell(c).discovery for c in cases if c.get("probe") == probe) for probe in CIRCUIT}
    return replace(reading, circuit=CIRCUIT_TEXT) if all(found.values()) else reading


def _cell(case: dict[str, Any]) -> Cell:
    q = case.get("q")
    unverified = case.get("unverified") if case["verdict"] == "pass" else None
    discovery = case["verdict"] == "pass" and (q is None or q < ALPHA) and not unverified
    return Cell(case["case_id"], case["verdict"], case.get("expected"), q, discovery, unverified)
