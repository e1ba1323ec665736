"""Join the runs of `pytest --shard I/N` (suite/shard.py) into the run one machine would have written:

    .venv/bin/python -m suite.merge --report-dir reports RUN_DIR...     # one run folder per part

The parts' cases in the whole run's order, BH q recomputed over all of them, the synthesis
rebuilt, the models' audits and cache tallies joined, the baseline comparison (if the parts had
one) redone over the whole run; written with the same writer as any run (verdicts.json, CSV,
JUnit, HTML) as a new run of REPORT_DIR, which `latest` then points at. A part missing or given
twice, a case in two parts, a case of the run in none, or parts of different runs is an error
that names them. (It lives here, not in `python -m reports`: the q and the synthesis are the
suite's, and reports/ imports nothing above it.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import MergeError, SuiteError
from reports import history
from reports.record import write_run

from .baseline import against_baseline, load_baseline
from .calibration import ALPHA, summarize
from .runinfo import new_run_id
from .stats import benjamini_hochberg
from .synthesis import synthesize


def merge(documents: Sequence[tuple[Path, dict[str, Any]]]) -> tuple[dict, list[dict], dict, dict]:
    """(run, cases, synthesis, cards) of the whole run from its parts' verdicts.json documents."""
    if not documents:
        raise MergeError("give the run folders of the parts to merge")
    parts = {}
    for folder, document in documents:
        shard = (document.get("run") or {}).get("shard")
        if not shard:
            raise MergeError(f"{folder}: not a part of a sharded run (its run has no 'shard'); run each part with "
                             "--shard I/N")
        if shard["index"] in parts:
            raise MergeError(f"part {shard['index']}/{shard['count']} given twice: {parts[shard['index']][0]} and "
                             f"{folder}")
        parts[shard["index"]] = (folder, document)
    first_folder, first = parts[min(parts)]
    count, whole = first["run"]["shard"]["count"], first["run"]["shard"]["cases"]
    for folder, document in parts.values():
        shard = document["run"]["shard"]
        if shard["count"] != count or shard["cases"] != whole:
            raise MergeError(f"{folder} is a part of another run than {first_folder} (its parts or its cases "
                             "differ); merge the parts of one run")
    missing = sorted(set(range(1, count + 1)) - set(parts))
    if missing:
        raise MergeError(f"part(s) {', '.join(f'{i}/{count}' for i in missing)} missing: give every part's run folder "
                         "(a part with no cases writes no record: use at most as many parts as models)")
    seen: dict[str, Path] = {}
    by_id: dict[str, dict] = {}
    for folder, document in parts.values():
        for case in document["cases"]:
            if case["case_id"] in seen:
                raise MergeError(f"case {case['case_id']} is in two parts: {seen[case['case_id']]} and {folder}")
            seen[case["case_id"]] = folder
            by_id[case["case_id"]] = case
    absent = [c for c in whole if c not in by_id]
    stray = [c for c in by_id if c not in set(whole)]
    if absent or stray:
        raise MergeError(f"the parts do not hold the run's cases: {len(absent)} missing ({', '.join(absent[:5])}), "
                         f"{len(stray)} not of the run ({', '.join(stray[:5])}); rerun the part that lost them")
    cases = [by_id[c] for c in whole]
    for case, q in zip(cases, benjamini_hochberg([c["p"] for c in cases]), strict=True):
        case["q"] = q
    run = _joined_run([d["run"] for _, d in parts.values()], cases)
    return run, cases, synthesize(cases), first.get("cards") or {}


def _joined_run(runs: list[dict], cases: list[dict]) -> dict:
    run = {k: v for k, v in runs[0].items() if k not in ("shard", "counts")}
    run |= {"id": new_run_id(), "started": min(r["started"] for r in runs),
            "finished": max(r["finished"] for r in runs), "merged_from": [r["id"] for r in runs]}
    models: dict[str, dict] = {}
    for part in runs:
        for name, summary in part["models"].items():
            models.setdefault(name, dict(summary))
            if "audit" in summary:
                models[name]["audit"] = summary["audit"]
    run["models"] = models
    cache: dict[str, dict[str, int]] = {}
    for part in runs:
        for name, counts in (part.get("cache") or {}).items():
            total = cache.setdefault(name, {"reused": 0, "computed": 0})
            total["reused"] += counts["reused"]
            total["computed"] += counts["computed"]
    run["cache"] = cache
    if runs[0].get("baseline"):
        run["baseline"] = against_baseline(load_baseline(Path(runs[0]["baseline"]["folder"])), cases, models)
    if runs[0].get("calibration"):
        run["calibration"] = {**runs[0]["calibration"], "alpha": ALPHA, "rows": summarize(cases)}
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.merge", description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", type=Path, help="the run folders (or verdicts.json) of the parts")
    parser.add_argument("--report-dir", type=Path, required=True, help="where the merged run is kept (as a run)")
    args = parser.parse_args(argv)
    try:
        documents = [(folder, _read(folder)) for folder in args.parts]
        run, cases, synthesis, cards = merge(documents)
    except SuiteError as exc:
        print(f"python -m suite.merge: {exc}", file=sys.stderr)
        return 2
    folder = history.publish(args.report_dir, run["id"], lambda out: write_run(out, run, cases, synthesis, cards))
    print(folder / "verdict.html")
    return 0


def _read(folder: Path) -> dict:
    path = folder if folder.suffix == ".json" else folder / "verdicts.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergeError(f"{path}: cannot read a run record ({type(exc).__name__}: {exc})") from None


if __name__ == "__main__":
    sys.exit(main())
