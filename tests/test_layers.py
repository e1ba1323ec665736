"""The packages import downward only: core at the bottom, then probes, fixtures and reports, and the
pytest plugin (suite) on top. Checked by parsing every module's imports, function-level ones
included; imports under `if TYPE_CHECKING:` never run and are left out."""

import ast
from pathlib import Path

import pytest

from .helpers import ROOT

PACKAGES = ("core", "probes", "fixtures", "reports", "suite")
ALLOWED = {                   # a package may import these of the project's packages (and itself)
    "core": set(),
    "probes": {"core"},
    "fixtures": {"core", "probes"},
    "reports": {"core"},
    "suite": {"core", "probes", "fixtures", "reports"},
}


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Top-level package names this module imports when it runs."""
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for node in guarded for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _modules(package: str) -> list[Path]:
    return [p for p in sorted((ROOT / package).rglob("*.py")) if "demo" not in p.parts or package != "fixtures"]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = {}
    for path in _modules(package):
        imported = _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))) & set(PACKAGES)
        beyond = imported - ALLOWED[package] - {package}
        if beyond:
            wrong[str(path.relative_to(ROOT))] = sorted(beyond)
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of the project'}: {wrong}"


def test_the_layering_check_sees_a_wrong_import():
    tree = ast.parse("from typing import TYPE_CHECKING\nimport suite.plugin\nif TYPE_CHECKING:\n    import reports\n"
                     "def f():\n    from probes import forward\n")
    assert _runtime_imports(tree) == {"typing", "suite", "probes"}
