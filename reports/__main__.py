"""Work on kept runs without running the suite:

    .venv/bin/python -m reports render reports/latest          # re-render a run's files from its verdicts.json
    .venv/bin/python -m reports promote reports latest         # make a run (latest, a run id, a folder) the baseline
    .venv/bin/python -m reports diff RUN_A RUN_B               # every field two runs' records differ in, timing aside
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import history
from .compare import differences
from .record import write_run


def render(folder: Path) -> None:
    document = json.loads((folder / "verdicts.json").read_text())
    written = write_run(folder, document["run"], document["cases"], document.get("synthesis"),
                        document.get("cards"))
    print(written["html"])


def promote(root: Path, which: str) -> None:
    folder = history.resolve(root, which)
    history.promote(root, folder)
    print(f"{root / 'baseline'} -> {folder}")


def diff(first: Path, second: Path) -> int:
    found = differences(*(json.loads(_record(f).read_text()) for f in (first, second)))
    for line in found:
        print(line)
    print(f"{len(found)} difference(s) between {first} and {second} (timing and the run's id aside)")
    return 1 if found else 0


def _record(folder: Path) -> Path:
    return folder if folder.suffix == ".json" else folder / "verdicts.json"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render", help="re-render a run folder from its verdicts.json").add_argument(
        "folder", type=Path)
    promoting = commands.add_parser("promote", help="make a kept run the baseline (REPORTS_DIR/baseline)")
    promoting.add_argument("root", type=Path, help="the reports folder (--report-dir of the runs)")
    promoting.add_argument("run", help="latest, a run id, or a run folder")
    differing = commands.add_parser("diff", help="list every field two runs' verdicts.json differ in, timing aside")
    differing.add_argument("first", type=Path, help="a run folder or its verdicts.json")
    differing.add_argument("second", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "render":
            render(args.folder)
        elif args.command == "diff":
            parser.exit(diff(args.first, args.second))
        else:
            promote(args.root, args.run)
    except FileNotFoundError as exc:
        parser.exit(2, f"python -m reports: {exc}\n")


if __name__ == "__main__":
    main()
