"""Re-render a run's files from its verdicts.json (after a template change, or to rebuild a lost HTML):

    .venv/bin/python -m reports reports/latest
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .record import write_run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.splitlines()[0])
    parser.add_argument("run_folder", type=Path, help="a folder holding verdicts.json")
    folder = parser.parse_args().run_folder
    document = json.loads((folder / "verdicts.json").read_text())
    written = write_run(folder, document["run"], document["cases"], document.get("synthesis"))
    print(written["html"])


if __name__ == "__main__":
    main()
