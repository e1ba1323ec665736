"""The run record: verdicts.json (the machine contract), verdicts.csv, junit.xml and verdict.html.

verdicts.json::

    {"schema_version": 1,
     "run": {"id", "started", "finished", "suite_commit", "device", "versions",
             "models": {name: {"model_dir", "checkpoint", "cells", "cell_line", "split", "fingerprint"}},
             "counts": {"pass": .., "fail": .., "inconclusive": .., "error": .., "xfailed": .., ...,
                        "unexpected": .., "regressions": .., "drift": .. (with a baseline)},
             "cache": {model: {"reused", "computed"}},
             "baseline": {"id", "folder", "fingerprint_changes", "gone"} (with --baseline)},
     "synthesis": {"rule", "alpha", "grids": [{"name", "kind", "columns", "rows", "overall"}]},
     "cards": {probe: {"family", "settings", "reference", "partial"}},
     "cases": [CaseResult fields: case_id, hypothesis, probe, side, params, statistic, value, effect,
               ci, p, q, n, verdict, expected, baseline, change, outcome, reason, seconds, ...]}
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from . import atomic
from .html import render_html
from .junit import to_junit

SCHEMA_VERSION = 1
CSV_COLUMNS = ("case_id", "hypothesis", "probe", "side", "model", "pathway", "verdict", "expected", "baseline",
               "change", "outcome", "statistic", "value", "effect", "ci_low", "ci_high", "p", "q", "n", "null", "seed",
               "reason", "seconds", "unverified")


def counts(cases: list[dict[str, Any]]) -> dict[str, int]:
    """Verdicts, pytest's xfailed/xpassed, exploratory cases (no known answer), cases whose verdict
    is not the expected one, and (when compared with a baseline) regressions (verdict flips) and drifts."""
    tally = Counter(c["verdict"] for c in cases)
    tally.update(c["outcome"] for c in cases if c.get("outcome") in ("xfailed", "xpassed", "exploratory"))
    if any(c["verdict"] == "pass" and c.get("unverified") for c in cases):
        tally["unverified"] = sum(c["verdict"] == "pass" and bool(c.get("unverified")) for c in cases)
    tally["unexpected"] = sum(c.get("expected") in ("pass", "fail") and c["verdict"] in ("pass", "fail")
                              and c["verdict"] != c["expected"] for c in cases)
    changes = Counter((c.get("change") or {}).get("kind") for c in cases)
    if any(c.get("change") for c in cases):
        tally["regressions"], tally["drift"] = changes["flip"], changes["drift"]
    return dict(sorted(tally.items()))


def write_run(directory: Path, run: dict[str, Any], cases: list[dict[str, Any]],
              synthesis: dict[str, Any] | None = None, cards: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the files of a run into `directory`, each atomically, all rendered before any is replaced.
    `cards`: per probe, what its family's card shows (suite/families.py Card.to_dict)."""
    directory = Path(directory)
    run = {**run, "counts": counts(cases)}
    document = {"schema_version": SCHEMA_VERSION, "run": run, "synthesis": synthesis, "cases": cases,
                "cards": cards or {}}
    texts = {"json": (directory / "verdicts.json", json.dumps(document, separators=(",", ":"), default=str) + "\n"),
             "csv": (directory / "verdicts.csv", to_csv(cases)),
             "junit": (directory / "junit.xml", to_junit(run, cases)),
             "html": (directory / "verdict.html", render_html(document))}
    for path, text in texts.values():
        atomic.write_text(path, text)
    return {kind: path for kind, (path, _) in texts.items()}


def to_csv(cases: list[dict[str, Any]]) -> str:
    """One row per case. A text cell a spreadsheet would run as a formula (starting with =, +, -, @,
    a tab or a carriage return) gets a leading apostrophe, OWASP's advice; numbers stay numbers."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        params = case.get("params", {})
        ci = case.get("ci") or [None, None]
        row = {**case, "change": (case.get("change") or {}).get("kind"),
                         "model": params.get("model") or params.get("model_pair"),
                         "pathway": params.get("pathway"), "ci_low": ci[0], "ci_high": ci[1],
                         "n": json.dumps(case.get("n", {}), sort_keys=True, default=str)}
        writer.writerow({key: _inert(value) for key, value in row.items()})
    return buffer.getvalue()


def _inert(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
