"""Two runs' records side by side: every field that differs, timing and place aside.

    .venv/bin/python -m reports diff RUN_A RUN_B      # exit 0: the same record; 1: the differences listed

Used to show that a change of the suite's code leaves the demo's record as it was (a refactoring
changes no verdict, number or reason), and by anyone who wants to know what moved between two
runs beyond what the baseline comparison (a verdict flip, a metric's drift) reports. Cases are
matched by case_id; numbers must be equal, not close.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# what differs between two runs of the same code on the same inputs
VOLATILE = ("run.id", "run.started", "run.finished", "run.suite_commit", "run.cache_dir", "cases.*.seconds")


def differences(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = VOLATILE) -> list[str]:
    """'path: A -> B' for each field where two verdicts.json documents differ. Each document's
    paths are read relative to the folder of its models registry, so two checkouts compare equal."""
    found: list[str] = []
    _walk(_relative(a), _relative(b), "", set(ignore), found)
    return found


def _walk(a: Any, b: Any, path: str, ignore: set[str], found: list[str]) -> None:
    if _ignored(path, ignore):
        return
    if path == "cases" and isinstance(a, list) and isinstance(b, list):
        a, b = _by_id(a), _by_id(b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in b or key not in a:
                if not _ignored(where, ignore):
                    found.append(f"{where}: {'only in A' if key in a else 'only in B'}")
                continue
            _walk(a[key], b[key], where, ignore, found)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, f"{path}[{i}]", ignore, found)
    elif a != b or type(a) is not type(b):
        found.append(f"{path}: {_short(a)} -> {_short(b)}")


def _ignored(path: str, ignore: set[str]) -> bool:
    parts = path.split(".")
    return any(len(p := rule.split(".")) == len(parts) and all(r in ("*", s) for r, s in zip(p, parts, strict=True))
               for rule in ignore)


def _by_id(cases: list[Any]) -> dict[str, Any]:
    return {str(c.get("case_id")) if isinstance(c, dict) else str(i): c for i, c in enumerate(cases)}


def _relative(document: dict[str, Any]) -> Any:
    registry = (document.get("run") or {}).get("models_registry")
    root = str(Path(registry).parent) if registry else None

    def strip(value: Any) -> Any:
        if isinstance(value, str) and root:
            return value.replace(root, "<registry folder>")
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(document)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
