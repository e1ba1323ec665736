"""The verdict report as a reader sees it: the demo run's verdict.html in headless Chromium.

Chromium is Debian's (`make browser`, part of `make test`, installs chromium and
chromium-driver). Without it the tests skip with the reason, except under CI, where a
missing browser is a failure rather than a silent pass.
"""

import json
import os
from pathlib import Path

import pytest

from reports.record import write_run
from suite.synthesis import synthesize

from .helpers import CHROMEDRIVER, CHROMIUM, chromium_driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("selenium")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "Debian's chromium and chromium-driver are not installed (run `make browser`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    driver = chromium_driver(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


def _open(browser, html: Path) -> list[dict]:
    """Load the page and return what its console said."""
    browser.get(html.resolve().as_uri())
    return browser.get_log("browser")


def _visible(browser, selector: str) -> list:
    return [e for e in browser.find_elements("css selector", selector) if e.is_displayed()]


def test_demo_report_shows_grid_lines_and_every_card(browser, demo_report):
    record = json.loads((demo_report / "verdicts.json").read_text())
    console = _open(browser, demo_report / "verdict.html")
    assert [m for m in console if m["level"] in ("SEVERE", "WARNING")] == []
    grids = [g for g in record["synthesis"]["grids"] if g["kind"] == "model"]
    assert {g["name"] for g in grids} == set(record["run"]["models"])
    for grid in grids:
        block = browser.find_element("css selector", f'.synthesis[data-unit="{grid["name"]}"]')
        shown = [line.text for line in block.find_elements("css selector", "td.line b")]
        assert shown == [row["reading"]["line"] for row in grid["rows"]]
        assert len(block.find_elements("css selector", "table.grid a.dot")) == sum(
            len(cells) for row in grid["rows"] for cells in row["cells"])
    cards = browser.find_elements("css selector", "#cards article.card")
    assert [c.get_attribute("data-id") for c in cards] == [c["case_id"] for c in record["cases"]]
    screenshot = demo_report / "verdict.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_filters_and_grid_links_work_without_a_server(browser, demo_report):
    from selenium.webdriver.support.ui import Select

    record = json.loads((demo_report / "verdicts.json").read_text())
    _open(browser, demo_report / "verdict.html")
    Select(browser.find_element("id", "f-model")).select_by_visible_text("jurkat_fewshot")
    Select(browser.find_element("id", "f-verdict")).select_by_visible_text("pass")
    wanted = [c["case_id"] for c in record["cases"] if c["verdict"] == "pass" and "jurkat_fewshot" in
              (c["params"].get("model") or c["params"].get("model_pair", "")).split("-vs-")]
    assert [c.get_attribute("data-id") for c in _visible(browser, "#cards article.card")] == wanted
    assert browser.find_element("id", "f-count").text == f"{len(wanted)} of {len(record['cases'])} cases"
    assert [b.get_attribute("data-unit") for b in _visible(browser, ".synthesis")] == [
        g["name"] for g in record["synthesis"]["grids"] if "jurkat_fewshot" in g["name"].split("-vs-")]
    dot = _visible(browser, '.synthesis[data-unit="jurkat_fewshot"] a.dot')[0]
    target = dot.get_attribute("href").split("#", 1)[1]
    dot.click()
    assert browser.execute_script("return location.hash") == f"#{target}"
    assert browser.find_element("id", target).is_displayed()


def test_script_in_yaml_or_data_stays_inert_in_a_browser(browser, tmp_path):
    evil = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"
    case = {"case_id": "h-m-p", "hypothesis": evil, "probe": "p", "claim": evil, "params": {"model": evil,
            "pathway": evil}, "verdict": "pass", "reason": evil, "expected": None, "statistic": evil, "value": 1.0,
            "effect": 1.0, "ci": None, "p": 0.01, "q": 0.01, "n": {evil: 1}, "null": evil, "seed": 0,
            "details": {"table": [{evil: evil}], "heatmap": {"names": [evil], "groups": [evil], "values": [[1.0]]}},
            "threshold": {}, "side": "organized"}
    run = {"id": evil, "started": evil, "finished": evil, "suite_commit": evil, "device": evil,
           "models": {evil: {"model_dir": evil, "checkpoint": evil, "cells": evil, "cell_line": evil,
                             "split": evil, "fingerprint": evil}}}
    written = write_run(tmp_path, run, [case], synthesize([case]))
    console = _open(browser, written["html"])
    assert browser.execute_script("return window.__pwned === undefined")
    assert [m for m in console if m["level"] == "SEVERE"] == []
    assert evil in browser.find_element("css selector", "#cards .claim").text


def test_report_files_stay_small(demo_report):
    sizes = {p.name: p.stat().st_size for p in demo_report.iterdir()}
    assert sizes["verdict.html"] < 4_000_000, sizes
    assert {"verdicts.json", "verdicts.csv", "junit.xml", "verdict.html"} <= set(sizes)
