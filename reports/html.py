"""verdict.html: one self-contained page (inline CSS, JS, SVG and PNG; works offline).

Every string from YAML or data goes through Jinja's autoescaping; nothing is marked safe
except the markup reports/plots.py and `dot` build from numbers and escaped text.
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

TEMPLATES = Path(__file__).parent / "templates"
SYMBOL = {"pass": "✓", "fail": "✗", "inconclusive": "?", "error": "!"}


def render_html(document: dict[str, Any]) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["num"] = number
    env.filters["short"] = lambda text, n=19: (text or "")[:n]
    env.globals.update(histogram_svg=plots.histogram_svg, scatter_svg=plots.scatter_svg, bars_svg=plots.bars_svg,
                       heatmap_svg=plots.heatmap_svg, intervals_svg=plots.intervals_svg, dot=dot, runs=runs)
    page = env.get_template("verdict.html.j2")
    # embedded as JSON for the filter script: escape '<' so data can never close the <script> tag
    data = json.dumps([_row(c) for c in document["cases"]]).replace("<", "\\u003c")
    synthesis = document.get("synthesis") or {"rule": "", "grids": []}
    return page.render(run=document["run"], cases=document["cases"], synthesis=synthesis,
                       data=Markup(data))  # noqa: S704 - escaped above


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
    if verdict == "pass" and not cell.get("discovery"):
        classes.append("not-discovery")
    title = f"{cell['case_id']}: {verdict}, q = {number(cell.get('q'))}"
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
