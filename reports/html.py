"""verdict.html: one self-contained page (inline CSS, JS, SVG and PNG; works offline).

Every string from YAML or data goes through Jinja's autoescaping; nothing is marked safe
except the markup reports/plots.py and `dot` build from numbers and escaped text.

Each case's card is rendered on its own (templates/card.html.j2): a case whose details cannot
be drawn (a malformed histogram, a value of the wrong type) gets a plain card that says so, with
its verdict and reason, and the rest of the page is drawn as usual. Should the page itself fail,
a bare page still lists every case, so writing the record never fails on the HTML.
"""

from __future__ import annotations

import json
import math
from itertools import groupby
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from . import plots
from .labels import verdict_label

TEMPLATES = Path(__file__).parent / "templates"
SYMBOL = {"pass": "✓", "fail": "✗", "inconclusive": "?", "error": "!"}


def render_html(document: dict[str, Any]) -> str:
    env = _environment()
    # embedded as JSON for the filter script: escape '<' so data can never close the <script> tag
    data = json.dumps([_row(c) for c in document["cases"]]).replace("<", "\\u003c")
    synthesis = document.get("synthesis") or {"rule": "", "grids": []}
    families = document.get("cards") or {}
    cards = [_card(env, case, families.get(case.get("probe"), {})) for case in document["cases"]]
    try:
        return env.get_template("verdict.html.j2").render(run=document["run"], cases=document["cases"],
                                                          synthesis=synthesis, cards=cards,
                                                          data=Markup(data))  # noqa: S704 - escaped above
    except Exception as exc:    # noqa: BLE001 - the record must be written; the page says what broke
        return _bare_page(document, cards, exc)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["num"] = number
    env.filters["label"] = verdict_label
    env.filters["short"] = lambda text, n=19: (text or "")[:n]
    env.globals.update(histogram_svg=plots.histogram_svg, scatter_svg=plots.scatter_svg, bars_svg=plots.bars_svg,
                       heatmap_svg=plots.heatmap_svg, intervals_svg=plots.intervals_svg, dot=dot, runs=runs)
    return env


def _card(env: Environment, case: dict[str, Any], card: dict[str, Any]) -> Markup:
    """A case's card; `card` is its family's description (settings shown, bars' reference line, and the
    source of a partial of its own, rendered with the case and its details)."""
    try:
        partial = Markup(env.from_string(card["partial"]).render(case=case, d=case.get("details") or {})) \
            if card.get("partial") else None  # noqa: S704 - autoescaped template
        return Markup(env.get_template("card.html.j2").render(case=case, card=card,  # noqa: S704 - autoescaped
                                                              partial=partial))
    except Exception as exc:    # noqa: BLE001 - one case's details never take the report down
        return _plain_card(case, exc)


def _plain_card(case: dict[str, Any], exc: Exception) -> Markup:
    verdict, case_id = escape(str(case.get("verdict", "error"))), escape(str(case.get("case_id", "?")))
    return Markup(  # noqa: S704 - every value escaped
        f'<article class="card v-{verdict}" id="case-{case_id}" data-id="{case_id}"><header><code><b>{case_id}</b>'
        f'</code> <span class="badge {verdict}">{verdict}</span></header><p class="claim">'
        f'{escape(str(case.get("claim", "")))}</p><p>{escape(str(case.get("reason", "")))}</p>'
        f'<p class="warn">The evidence of this case could not be drawn ({escape(type(exc).__name__)}: '
        f'{escape(str(exc)[:300])}); its numbers are in verdicts.json.</p></article>')


def _bare_page(document: dict[str, Any], cards: list[Markup], exc: Exception) -> str:
    run = document.get("run") or {}
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ST hypothesis verdicts</title></head>'
            f'<body><h1>Run {escape(str(run.get("id", "")))}</h1><p>The full report could not be drawn '
            f'({escape(type(exc).__name__)}: {escape(str(exc)[:300])}); every case is below and in verdicts.json.</p>'
            + "".join(cards) + "</body></html>\n")


def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}g}"


def dot(cell: dict[str, Any]) -> Markup:
    """A case in the synthesis grid: its verdict as a coloured dot linking to its evidence card."""
    verdict = cell["verdict"]
    classes = [verdict]
    if cell.get("expected") == "fail":
        classes.append("expected-fail")
    if verdict == "pass" and cell.get("unverified"):
        classes.append("unverified")
    elif verdict == "pass" and not cell.get("discovery"):
        classes.append("not-discovery")
    title = f"{cell['case_id']}: {verdict_label(cell)}, q = {number(cell.get('q'))}"
    return Markup(f'<a class="dot {escape(" ".join(classes))}" href="#case-{escape(cell["case_id"])}" '  # noqa: S704
                  f'title="{escape(title)}">{SYMBOL.get(verdict, "·")}</a>')


def runs(keys: list[Any]) -> list[tuple[Any, int]]:
    """Consecutive equal keys and how many: the spans of a grouped table header."""
    return [(key, len(list(group))) for key, group in groupby(keys)]


def _row(case: dict[str, Any]) -> dict[str, Any]:
    params = case.get("params", {})
    models = [params["model"]] if params.get("model") else (params.get("model_pair") or "").split("-vs-")
    return {"id": case["case_id"], "verdict": case["verdict"], "models": [m for m in models if m],
            "pathway": params.get("pathway"), "hypothesis": case["hypothesis"]}
