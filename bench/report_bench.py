"""The verdict report: its size, how long rendering it takes, and how long Chromium takes to show it.

    .venv/bin/python -m bench.report_bench [--report-dir reports/latest] [--repeats 5]

Re-renders verdict.html from the run's verdicts.json (the same function the plugin calls),
then opens it in Debian's headless Chromium and reads the page's own navigation timing.
The targets (issue 7): a few MB and a couple of seconds; the script prints each measurement
as a ratio to its target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from reports.html import render_html

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"html_mb": 4.0, "render_s": 2.0, "browser_load_s": 2.0}


def render_seconds(document: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_html(document)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def browser_seconds(html: Path, repeats: int) -> float:
    """Median time from navigation start to the load event, read from the page itself."""
    import tempfile

    from tests.helpers import chromium_driver

    driver = chromium_driver(Path(tempfile.mkdtemp(prefix="chromium-")))
    try:
        times = []
        for _ in range(repeats):
            driver.get(html.resolve().as_uri())
            timing = driver.execute_script("return performance.getEntriesByType('navigation')[0].toJSON()")
            times.append(timing["loadEventEnd"] / 1000)
        return statistics.median(times)
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-dir", default=str(ROOT / "reports/latest"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(args.report_dir)
    document = json.loads((folder / "verdicts.json").read_text())
    measured = {"html_mb": (folder / "verdict.html").stat().st_size / 1e6,
                "render_s": render_seconds(document, args.repeats),
                "browser_load_s": browser_seconds(folder / "verdict.html", args.repeats)}
    print(f"{len(document['cases'])} cases; verdicts.json {(folder / 'verdicts.json').stat().st_size / 1e6:.2f} MB")
    for key, value in measured.items():
        print(f"{key:>15}: {value:8.3f}   target {TARGETS[key]:.1f}   ratio to target {value / TARGETS[key]:.2f}")
    out = ROOT / "bench/results/report.json"
    out.write_text(json.dumps({"cases": len(document["cases"]), **measured, "targets": TARGETS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
