"""Where runs are kept: every run whole in ROOT/runs/<run-id>/, with two pointers beside them.

    ROOT/runs/<run-id>/   verdicts.json, verdicts.csv, junit.xml, verdict.html of one run
    ROOT/latest           -> runs/<newest run>       moved by every run that completes
    ROOT/baseline         -> runs/<promoted run>     moved only by --update-baseline

A run is written into a hidden ROOT/runs/.<run-id>.partial/ folder and renamed into place
once every file is there, and only then do the pointers move: a killed run leaves at most
a .partial folder, never a half-written record, and never touches the baseline.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

POINTERS = ("latest", "baseline")


def publish(root: Path, run_id: str, write: Callable[[Path], object]) -> Path:
    """Call write(folder) on a fresh hidden folder, then make it ROOT/runs/<run_id> and point latest at it."""
    root = Path(root)
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    adopt_old_layout(root)
    partial = runs / f".{run_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    final = runs / run_id
    os.replace(partial, final)
    point(root / "latest", final)
    return final


def promote(root: Path, run_folder: Path) -> None:
    """Make `run_folder` the baseline that `--baseline baseline` and the nightly script compare with."""
    point(Path(root) / "baseline", Path(run_folder))


def point(link: Path, target: Path) -> None:
    """Replace the symlink `link` by one to `target` (relative, so the reports folder can move) in one rename."""
    temp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    temp.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    os.replace(temp, link)


def resolve(root: Path, which: str) -> Path:
    """The run folder that `--baseline` names: latest, baseline (the promoted run), a run id under
    ROOT/runs, or a path to a run folder or its verdicts.json."""
    root = Path(root)
    if which in POINTERS:
        if not (root / which / "verdicts.json").is_file():
            hint = "run the suite once first" if which == "latest" else "promote a run with --update-baseline"
            raise FileNotFoundError(f"--baseline {which}: there is no {root / which} yet ({hint})")
        return (root / which).resolve()
    path = Path(which)
    for candidate in (root / "runs" / which, path, path.parent if path.name == "verdicts.json" else None):
        if candidate is not None and (candidate / "verdicts.json").is_file():
            return candidate.resolve()
    known = run_ids(root)
    hits = difflib.get_close_matches(which, known, n=1)
    hint = f"did you mean '{hits[0]}'?" if hits else f"runs kept in {root / 'runs'}: {', '.join(known[-5:]) or 'none'}"
    raise FileNotFoundError(f"--baseline {which}: not 'latest', 'baseline', a run id or a run folder ({hint})")


def run_ids(root: Path) -> list[str]:
    runs = Path(root) / "runs"
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs.is_dir() else []


def adopt_old_layout(root: Path) -> None:
    """Before run history, ROOT/latest was a plain folder: keep it as a run of its own."""
    latest = root / "latest"
    if latest.is_symlink() or not latest.is_dir():
        return
    record = latest / "verdicts.json"
    run_id = json.loads(record.read_text())["run"]["id"] if record.is_file() else "before-history"
    destination = root / "runs" / run_id
    if destination.exists():
        destination = root / "runs" / f"{run_id}-kept"
    os.replace(latest, destination)
    point(latest, destination)
