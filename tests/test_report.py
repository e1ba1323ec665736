"""The run record files: escaped, self-contained, and never half-written."""

import json
import re

import pytest

from reports import record
from reports.html import render_html

EVIL = "<script>alert('x')</script>"


def _document():
    case = {"case_id": f"h-{EVIL}", "hypothesis": "h", "probe": "pert_embedding_coherence", "claim": EVIL,
            "params": {"model": EVIL, "pathway": "ribosome"}, "verdict": "pass", "reason": EVIL, "expected": None,
            "statistic": EVIL, "value": 0.5, "effect": 0.2, "ci": [0.1, 0.3], "p": 0.001, "q": 0.002,
            "n": {"members": 8}, "null": EVIL, "seed": 0, "outcome": "passed", "seconds": 0.1,
            "details": {"null_histogram": {"counts": [1, 3, 1], "edges": [0.0, 0.1, 0.2, 0.3], "observed": 0.5}}}
    run = {"id": "r1", "started": "now", "suite_commit": "abc", "device": "cpu",
           "models": {EVIL: {"model_dir": EVIL, "checkpoint": "c", "cells": "x", "cell_line": "l", "split": "s",
                             "fingerprint": "sha256:0123456789abcdef0123"}}}
    return run, [case]


def test_text_from_yaml_or_data_renders_inert():
    run, cases = _document()
    html = render_html({"run": {**run, "counts": record.counts(cases)}, "cases": cases})
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    # the embedded filter data cannot close its <script> element either
    assert html.count("</script>") == 1 and "\\u003cscript>" in html


def test_report_is_self_contained_and_shows_the_numbers():
    run, cases = _document()
    html = render_html({"run": {**run, "counts": record.counts(cases)}, "cases": cases})
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "sha256:0123456789a" in html and "[0.1, 0.3]" in html and "0.002" in html
    assert "<svg" in html


def test_write_run_replaces_nothing_when_rendering_fails(tmp_path, monkeypatch):
    run, cases = _document()
    record.write_run(tmp_path, run, cases)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    monkeypatch.setattr(record, "render_html", lambda document: 1 / 0)
    changed = [{**cases[0], "verdict": "fail"}]
    with pytest.raises(ZeroDivisionError):
        record.write_run(tmp_path, run, changed)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
    assert json.loads((tmp_path / "verdicts.json").read_text())["cases"][0]["verdict"] == "pass"
    assert not list(tmp_path.glob(".*tmp"))
