"""verdict.html: one self-contained page (inline CSS, JS and SVG; works offline).

Every string from YAML or data goes through Jinja's autoescaping; nothing is marked safe
except the SVG this module builds from numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).parent / "templates"


def render_html(document: dict[str, Any]) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["num"] = number
    env.filters["short"] = lambda text, n=19: (text or "")[:n]
    env.globals["histogram_svg"] = histogram_svg
    env.globals["scatter_svg"] = scatter_svg
    page = env.get_template("verdict.html.j2")
    # embedded as JSON for the filter script: escape '<' so data can never close the <script> tag
    data = json.dumps([_row(c) for c in document["cases"]]).replace("<", "\\u003c")
    return page.render(run=document["run"], cases=document["cases"], data=Markup(data))  # noqa: S704 - escaped above


def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def histogram_svg(hist: dict | None, width: int = 160, height: int = 36) -> Markup:
    """A small bar chart of a null distribution with the observed value as a red line."""
    if not hist or not hist.get("counts"):
        return Markup("")
    counts, edges, observed = hist["counts"], hist["edges"], hist["observed"]
    low, high = min(edges[0], observed), max(edges[-1], observed)
    span = (high - low) or 1.0
    top = max(counts) or 1
    step = width / len(counts) * (edges[-1] - edges[0]) / span
    start = (edges[0] - low) / span * width
    bars = "".join(
        f'<rect x="{start + i * step:.1f}" y="{height - c / top * height:.1f}" width="{max(step - 0.5, 0.5):.1f}" '
        f'height="{c / top * height:.1f}"/>' for i, c in enumerate(counts))
    x = (observed - low) / span * width
    svg = (f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="null distribution">'
           f'<g fill="#9aa5b1">{bars}</g><line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" '
           f'stroke="#c62828" stroke-width="2"/></svg>')
    return Markup(svg)  # noqa: S704 - built from numbers only


def scatter_svg(points: dict | None, width: int = 160, height: int = 120) -> Markup:
    """A small scatter plot (e.g. pairwise ΔY vs Jacobian cosine, or KD scores on two axes);
    highlighted points (a pathway's KDs) in red, drawn last."""
    if not points or not points.get("x"):
        return Markup("")
    xs, ys = points["x"], points["y"]
    flags = points.get("highlight") or [False] * len(xs)
    x_low, x_span = min(xs), (max(xs) - min(xs)) or 1.0
    y_low, y_span = min(ys), (max(ys) - min(ys)) or 1.0

    def dot(x: float, y: float, colour: str) -> str:
        cx, cy = 4 + (x - x_low) / x_span * (width - 8), height - 4 - (y - y_low) / y_span * (height - 8)
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="1.6" fill="{colour}"/>'

    order = sorted(range(len(xs)), key=lambda i: bool(flags[i]))
    dots = "".join(dot(float(xs[i]), float(ys[i]), "#c62828" if flags[i] else "#7b8794") for i in order)
    label = escape(f"{points.get('x_label', 'x')} (across) vs {points.get('y_label', 'y')} (up)")
    return Markup(f'<svg class="scatter" width="{width}" height="{height}" role="img" aria-label="{label}">'  # noqa: S704
                  f'<title>{label}</title><rect width="{width}" height="{height}" fill="none" stroke="#e4e7eb"/>'
                  f'{dots}</svg>')


def _row(case: dict[str, Any]) -> dict[str, Any]:
    params = case.get("params", {})
    return {"id": case["case_id"], "verdict": case["verdict"], "model": params.get("model") or params.get("model_pair"),
            "pathway": params.get("pathway"), "hypothesis": case["hypothesis"]}
