"""The report's inline plots and the heatmap block the coherence checks hand them."""

import base64
import re
import struct
import zlib

import numpy as np
import pytest

from reports import plots
from suite.checks.common import similarity_heatmap


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    return width, height, zlib.decompress(data[start:start + length])


def test_png_holds_the_pixels_given():
    pixels = [[(255, 0, 0), (0, 0, 255)], [(255, 255, 255), (10, 20, 30)]]
    width, height, raw = _decode_png(plots.png_rgb(pixels))
    assert (width, height) == (2, 2)
    assert raw == b"\x00" + bytes([255, 0, 0, 0, 0, 255]) + b"\x00" + bytes([255, 255, 255, 10, 20, 30])


def test_heatmap_colours_run_from_blue_through_white_to_red_and_mark_groups():
    heatmap = {"names": ["A", "B", "<C>"], "groups": ["pathway", "pathway", "<x>"],
               "values": [[1.0, -1.0, 0.0], [-1.0, 1.0, None], [0.0, None, 1.0]]}
    svg = str(plots.heatmap_svg(heatmap))
    _, _, raw = _decode_png(base64.b64decode(re.search(r"base64,([^\"]+)", svg).group(1)))
    first_row = raw[1:10]
    assert list(first_row) == [255, 0, 0, 0, 0, 255, 255, 255, 255]
    assert "&lt;x&gt;" in svg and "<x>" not in svg and "&lt;C&gt;" in svg
    assert svg.count("<line") == 2        # one boundary between the two groups, across and down


def test_histogram_places_the_observed_line_on_the_value_axis():
    svg = str(plots.histogram_svg({"counts": [1, 2, 1], "edges": [0.0, 1.0, 2.0, 3.0], "observed": 4.0}, width=400))
    line = re.search(r'<line x1="([\d.]+)"', svg)
    assert float(line.group(1)) == 400.0
    assert svg.count("<rect") == 3 and "observed 4" in svg


def test_bars_skip_missing_values_and_draw_the_reference():
    svg = str(plots.bars_svg(["a", "b", "c"], [0.5, None, -0.2], reference=0.1, reference_label="all"))
    assert svg.count("<rect") == 2 and 'stroke-dasharray' in svg and "all 0.1" in svg
    assert str(plots.bars_svg(["a"], [float("nan")])) == ""


def test_similarity_heatmap_puts_the_pathway_first_then_other_panels():
    names = [f"K{i}" for i in range(20)]
    sim = np.random.default_rng(0).uniform(-1, 1, (20, 20))
    groups = {"mine": ("K3", "K4", "K5"), "other": ("K10", "K11", "K12", "K13"), "absent": ("ZZZ",)}
    block = similarity_heatmap(lambda idx: sim[np.ix_(idx, idx)], names, np.array([3, 4, 5]), groups, "mine",
                               limit=10)
    assert block["names"][:3] == ["K3", "K4", "K5"]
    assert block["groups"][:3] == ["pathway"] * 3 and block["groups"][3] == "other"
    assert len(block["names"]) == 10 and len(set(block["names"])) == 10
    rows = [names.index(n) for n in block["names"]]
    assert np.allclose(block["values"], np.round(sim[np.ix_(rows, rows)], 2))


def test_intervals_place_estimates_and_mark_rows_wholly_above_the_reference():
    svg = str(plots.intervals_svg(["ok", "<b>high</b>", "skipped"], [0.04, 0.5, None],
                                  [[0.01, 0.09], [0.3, 0.7], None], 0.05, "alpha"))
    assert "&lt;b&gt;high&lt;/b&gt;" in svg and "skipped" not in svg
    dots = re.findall(r'<circle cx="([\d.]+)" cy="[\d.]+" r="3" fill="([^"]+)"', svg)
    assert [colour for _, colour in dots] == ["#1f2933", plots.RED]
    # x axis runs 0 -> 0.7 (the largest upper bound) over pixels 200 -> 432
    assert float(dots[1][0]) == pytest.approx(200 + 0.5 / 0.7 * 232, abs=0.2)
    reference = re.search(r'<line x1="([\d.]+)" x2="\1" y1="12"', svg)
    assert float(reference.group(1)) == pytest.approx(200 + 0.05 / 0.7 * 232, abs=0.2)
    assert plots.intervals_svg([], [], [], 0.05) == ""


def test_the_2d_map_is_the_first_two_principal_components_labelled_by_panel():
    from suite.checks.common import pca_map

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)) * [5, 3, 1, 1, 1, 1]
    names = [f"k{i}" for i in range(30)]
    found = pca_map(x, names, {"p": ("k0", "k1", "k2"), "q": ("k3", "k4")}, "p")
    values, vectors = np.linalg.eigh(np.cov(x.T))               # the covariance's leading eigenvectors
    scores = (x - x.mean(0)) @ vectors[:, ::-1][:, :2]
    for axis, key in enumerate(("x", "y")):
        assert abs(np.corrcoef(found[key], scores[:, axis])[0, 1]) == pytest.approx(1.0, abs=1e-6)
    assert found["x_label"] == f"PC1 ({values[-1] / values.sum():.0%})"
    assert found["groups"][:6] == ["p", "p", "p", "q", "q", "other"] and found["highlight"][:4] == [True] * 3 + [False]
    svg = str(plots.scatter_svg(found))
    assert svg.count(plots.RED) == 3 and svg.count(plots.PANEL_COLOURS[0]) == 3     # 2 dots and the legend
    assert "<title>q</title>" in svg
