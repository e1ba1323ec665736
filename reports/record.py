"""The run record: verdicts.json (the machine contract), verdicts.csv and verdict.html.

verdicts.json::

    {"schema_version": 1,
     "run": {"id", "started", "finished", "suite_commit", "device", "versions",
             "models": {name: {"model_dir", "checkpoint", "cells", "cell_line", "split", "fingerprint"}},
             "counts": {"pass": .., "fail": .., "inconclusive": .., "error": .., "xfailed": .., ...}},
     "cases": [CaseResult fields: case_id, hypothesis, probe, params, statistic, value, effect,
               ci, p, q, n, verdict, expected, outcome, reason, seconds, ...]}
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

SCHEMA_VERSION = 1
CSV_COLUMNS = ("case_id", "hypothesis", "probe", "model", "pathway", "verdict", "expected", "outcome",
               "statistic", "value", "effect", "ci_low", "ci_high", "p", "q", "n", "null", "seed", "reason", "seconds")


def counts(cases: list[dict[str, Any]]) -> dict[str, int]:
    tally = Counter(c["verdict"] for c in cases)
    tally.update(c["outcome"] for c in cases if c.get("outcome") in ("xfailed", "xpassed"))
    return dict(sorted(tally.items()))


def write_run(directory: Path, run: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the three files of a run into `directory`, each atomically."""
    directory = Path(directory)
    run = {**run, "counts": counts(cases)}
    document = {"schema_version": SCHEMA_VERSION, "run": run, "cases": cases}
    texts = {directory / "verdicts.json": json.dumps(document, indent=2, default=str) + "\n",
             directory / "verdicts.csv": to_csv(cases),
             directory / "verdict.html": render_html(document)}
    for path, text in texts.items():   # everything rendered before anything is replaced
        atomic.write_text(path, text)
    return {"json": directory / "verdicts.json", "csv": directory / "verdicts.csv", "html": directory / "verdict.html"}


def to_csv(cases: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        params = case.get("params", {})
        ci = case.get("ci") or [None, None]
        writer.writerow({**case, "model": params.get("model") or params.get("model_pair"),
                         "pathway": params.get("pathway"), "ci_low": ci[0], "ci_high": ci[1],
                         "n": json.dumps(case.get("n", {}), sort_keys=True)})
    return buffer.getvalue()
