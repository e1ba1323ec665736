"""A nightly rerun with nothing changed: cold run (empty probe cache) vs warm rerun, in one go.

    .venv/bin/python -m bench.nightly_bench [--models fixtures/demo/models.yaml] [-- pytest options]

Both runs are the README's main job (`pytest` over every hypothesis) in a subprocess, with the
same fresh --cache-dir; the warm run also compares with the cold one (--baseline latest), as
a nightly does. Prints both wall times, their ratio, and checks the verdicts agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(options: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options], cwd=ROOT,
                            capture_output=True, text=True)
    return time.perf_counter() - start, result.returncode


def verdicts(reports: Path) -> dict[str, str]:
    document = json.loads((reports / "latest" / "verdicts.json").read_text())
    return {c["case_id"]: c["verdict"] for c in document["cases"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(ROOT / "fixtures/demo/models.yaml"))
    parser.add_argument("pytest_options", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nightly-bench-"))
    options = [f"--models={args.models}", f"--report-dir={work / 'reports'}", f"--cache-dir={work / 'cache'}",
               *args.pytest_options]
    cold, cold_rc = timed_run(options)
    cold_verdicts = verdicts(work / "reports")
    warm, warm_rc = timed_run([*options, "--baseline=latest"])
    same = verdicts(work / "reports") == cold_verdicts
    cache = json.loads((work / "reports/latest/verdicts.json").read_text())["run"]["cache"]
    print(f"cases: {len(cold_verdicts)}; exit codes cold {cold_rc}, warm {warm_rc}; verdicts identical: {same}")
    print(f"probe outputs in the warm run (from disk / computed): "
          f"{ {m: (c['reused'], c['computed']) for m, c in cache.items()} }")
    print(f"cold run {cold:7.1f} s   warm rerun {warm:7.1f} s   ratio cold/warm {cold / warm:.2f}")
    out = ROOT / "bench/results/nightly.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cold_s": cold, "warm_s": warm, "ratio": cold / warm, "cases": len(cold_verdicts),
                               "verdicts_identical": same, "warm_cache": cache}, indent=2) + "\n")


if __name__ == "__main__":
    main()
