"""Small inline plots for the report, drawn from numbers alone (no plotting library, no files).

Each function takes the numbers a check put in its case's `details` and returns SVG markup
that Jinja may embed as is: every text inside goes through `escape`.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence

from markupsafe import Markup, escape

GREY, RED, FAINT = "#9aa5b1", "#c62828", "#e4e7eb"


def histogram_svg(hist: dict | None, width: int = 280, height: int = 80) -> Markup:
    """The permutation null as bars, the observed value as a red line, the range underneath."""
    if not hist or not hist.get("counts"):
        return Markup("")
    counts, edges, observed = hist["counts"], hist["edges"], hist.get("observed")
    if not all(_finite(v) for v in (*counts, *edges, observed)):     # NaN became None in the record
        return Markup("")
    low, high = min(edges[0], observed), max(edges[-1], observed)
    to_x = _scale(low, high, 0, width)
    top, plot = max(counts) or 1, height - 26
    bars = "".join(f'<rect x="{to_x(a):.1f}" y="{plot - c / top * plot:.1f}" '
                   f'width="{max(to_x(b) - to_x(a) - .5, .5):.1f}" height="{c / top * plot:.1f}"/>'
                   for a, b, c in zip(edges, edges[1:], counts, strict=False))
    x = to_x(observed)
    label = escape(f"null distribution ({sum(counts)} draws) and the observed value {_fmt(observed)}")
    return _svg("hist", width, height, label,
                f'<g transform="translate(0 12)"><g fill="{GREY}">{bars}</g><line x1="{x:.1f}" x2="{x:.1f}" y1="-4" '
                f'y2="{plot}" stroke="{RED}" stroke-width="2"/></g>'
                f'{_text(x, 9, "observed " + _fmt(observed), "end" if x > width / 2 else "start", RED)}'
                f'{_text(0, height - 2, _fmt(low))}{_text(width, height - 2, _fmt(high), "end")}')


def scatter_svg(points: dict | None, width: int = 220, height: int = 160) -> Markup:
    """A scatter (e.g. pairwise ΔY vs Jacobian cosine); highlighted points in red, drawn last."""
    if not points or not points.get("x"):
        return Markup("")
    xs, ys = [float(v) for v in points["x"]], [float(v) for v in points["y"]]
    flags = points.get("highlight") or [False] * len(xs)
    groups = points.get("groups")
    to_x, to_y = _scale(min(xs), max(xs), 4, width - 4), _scale(min(ys), max(ys), height - 4, 4)
    order = sorted(range(len(xs)), key=lambda i: bool(flags[i]))
    colour = _group_colours(groups, flags) if groups else {}

    def fill(i: int) -> str:
        return RED if flags[i] else colour.get(groups[i], "#7b8794") if groups else "#7b8794"

    titles = [f"<title>{escape(str(g))}</title>" for g in groups] if groups else [""] * len(xs)
    dots = "".join(f'<circle cx="{to_x(xs[i]):.1f}" cy="{to_y(ys[i]):.1f}" r="1.8" fill="{fill(i)}">{titles[i]}'
                   "</circle>" for i in order)
    if colour:      # a legend line: each panel's colour
        shown = [(g, c) for g, c in colour.items()][:6]
        dots += "".join(_text(4 + 36 * n, 10, g[:8], colour=c) for n, (g, c) in enumerate(shown))
    x_label, y_label = points.get("x_label", "x"), points.get("y_label", "y")
    label = escape(f"{x_label} (across) vs {y_label} (up)")
    caption = _text(0, height + 11, f"→ {x_label}   ↑ {y_label}")
    return _svg("scatter", width, height + 14, label, f'<rect width="{width}" height="{height}" fill="none" '
                f'stroke="{FAINT}"/>{dots}{caption}')


PANEL_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")


def _group_colours(groups: Sequence[str], flags: Sequence[bool]) -> dict[str, str]:
    """A colour per named group (the highlighted one is red; 'other' stays grey)."""
    named = [g for g in dict.fromkeys(g for g, f in zip(groups, flags, strict=True) if not f) if g != "other"]
    return {g: PANEL_COLOURS[i % len(PANEL_COLOURS)] for i, g in enumerate(named)}


def bars_svg(labels: Sequence[str], values: Sequence[float | None], reference: float | None = None,
             reference_label: str = "", width: int = 280) -> Markup:
    """Horizontal bars (e.g. per-gene r), zero marked, an optional reference value as a dashed line."""
    pairs = [(str(n), float(v)) for n, v in zip(labels, values, strict=True) if _finite(v)]
    if not pairs:
        return Markup("")
    reference = float(reference) if _finite(reference) else None
    row, left = 12, 70
    height = row * len(pairs) + 14
    span = [min(0.0, *(v for _, v in pairs), reference or 0.0), max(0.0, *(v for _, v in pairs), reference or 0.0)]
    to_x = _scale(span[0], span[1], left, width - 4)
    rows = "".join(f'{_text(left - 3, i * row + 9, name[:12], "end")}<rect x="{min(to_x(0), to_x(v)):.1f}" '
                   f'y="{i * row + 2}" width="{max(abs(to_x(v) - to_x(0)), .5):.1f}" height="{row - 3}" '
                   f'fill="{RED if v < 0 else GREY}"/>' for i, (name, v) in enumerate(pairs))
    marks = f'<line x1="{to_x(0):.1f}" x2="{to_x(0):.1f}" y1="0" y2="{height - 14}" stroke="#52606d"/>'
    if reference is not None:
        marks += (f'<line x1="{to_x(reference):.1f}" x2="{to_x(reference):.1f}" y1="0" y2="{height - 14}" '
                  f'stroke="#1f2933" stroke-dasharray="3 2"/>'
                  f'{_text(to_x(reference), height - 2, f"{reference_label} {_fmt(reference)}", "middle")}')
    label = escape(f"{len(pairs)} bars from {_fmt(span[0])} to {_fmt(span[1])}")
    return _svg("bars", width, height, label, rows + marks)


def intervals_svg(labels: Sequence[str], estimates: Sequence[float | None], intervals: Sequence[Sequence[float] | None],
                  reference: float, reference_label: str = "", width: int = 440) -> Markup:
    """A forest plot of rates in [0, 1]: each row's estimate with its interval, a dashed reference line;
    rows whose whole interval lies above the reference are red."""
    rows = [(str(n), float(e), [float(v) for v in ci]) for n, e, ci in zip(labels, estimates, intervals, strict=True)
            if _finite(e) and ci]
    if not rows:
        return Markup("")
    row, left, head = 14, 200, 14
    height = head + row * len(rows) + 14
    top = min(1.0, max(reference * 3, *(ci[1] for _, _, ci in rows)))
    to_x = _scale(0.0, top, left, width - 8)
    body = "".join(_interval_row(head + i * row, name, e, ci, to_x, reference) for i, (name, e, ci) in enumerate(rows))
    ref = to_x(reference)
    axis = (f'{_text(ref, 10, f"{reference_label} {_fmt(reference)}", "middle")}<line x1="{ref:.1f}" x2="{ref:.1f}" '
            f'y1="{head - 2}" y2="{height - 12}" stroke="#1f2933" stroke-dasharray="3 2"/>'
            f'{_text(left, height - 2, "0")}{_text(width - 8, height - 2, _fmt(top), "end")}')
    label = escape(f"{len(rows)} rates with 95% intervals against {reference_label} {_fmt(reference)}")
    return _svg("intervals", width, height, label, body + axis)


def _interval_row(y: float, name: str, estimate: float, ci: list[float], to_x, reference: float) -> str:
    colour = RED if ci[0] > reference else "#1f2933"
    return (f'{_text(to_x(0) - 4, y + 10, name[:34], "end")}'
            f'<line x1="{to_x(ci[0]):.1f}" x2="{to_x(ci[1]):.1f}" y1="{y + 7}" y2="{y + 7}" stroke="{colour}" '
            f'stroke-opacity=".5" stroke-width="2"/>'
            f'<circle cx="{to_x(estimate):.1f}" cy="{y + 7}" r="3" fill="{colour}"/>')


def heatmap_svg(heatmap: dict | None, size: int = 240) -> Markup:
    """A similarity block as a blue-white-red image (-1 to 1), with the groups marked along the side."""
    if not heatmap or not heatmap.get("values"):
        return Markup("")
    values, groups = heatmap["values"], heatmap["groups"]
    n, left = len(values), 86
    cell = size / n
    png = base64.b64encode(png_rgb([[_diverging(v) for v in row] for row in values])).decode()
    spans = _spans(groups)
    marks = "".join(f'<line x1="{left}" x2="{left + size}" y1="{start * cell:.1f}" y2="{start * cell:.1f}" '
                    f'stroke="#fff"/><line y1="0" y2="{size}" x1="{left + start * cell:.1f}" '
                    f'x2="{left + start * cell:.1f}" stroke="#fff"/>' for _, start, _ in spans[1:])
    names = "".join(_text(left - 4, (start + stop) / 2 * cell + 4, group[:14], "end")
                    for group, start, stop in spans)
    label = escape("cosine similarity, rows and columns: " + ", ".join(heatmap.get("names", [])))
    legend = _text(left + size, size + 12, "cosine: blue −1 · white 0 · red +1", "end")
    return _svg("heatmap", left + size, size + 14, label,
                f'<image x="{left}" width="{size}" height="{size}" preserveAspectRatio="none" '
                f'style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>{marks}{names}{legend}')


def png_rgb(pixels: list[list[tuple[int, int, int]]]) -> bytes:
    """Encode rows of (r, g, b) as a PNG file (8-bit truecolour, no filtering)."""
    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _diverging(value: float | None) -> tuple[int, int, int]:
    if value is None or not math.isfinite(value):
        return (200, 200, 200)
    t = max(-1.0, min(1.0, value))
    fade = int(round(255 * (1 - abs(t))))
    return (255, fade, fade) if t > 0 else (fade, fade, 255)


def _spans(groups: Sequence[str]) -> list[tuple[str, int, int]]:
    """Runs of equal group labels: (group, start, stop)."""
    spans: list[tuple[str, int, int]] = []
    for i, group in enumerate(groups):
        if spans and spans[-1][0] == group:
            spans[-1] = (group, spans[-1][1], i + 1)
        else:
            spans.append((group, i, i + 1))
    return spans


def _scale(low: float, high: float, start: float, stop: float):
    span = (high - low) or 1.0
    return lambda v: start + (v - low) / span * (stop - start)


def _text(x: float, y: float, text: str, anchor: str = "start", colour: str = "#52606d") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" text-anchor="{anchor}" fill="{colour}">'
            f'{escape(text)}</text>')


def _svg(kind: str, width: float, height: float, label: str, body: str) -> Markup:
    return Markup(f'<svg class="{kind}" width="{width:.0f}" height="{height:.0f}" role="img" '  # noqa: S704 - numbers
                  f'aria-label="{label}"><title>{label}</title>{body}</svg>')                 # and escaped text


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: float) -> str:
    return f"{value:.3g}"
