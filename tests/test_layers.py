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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, names: set[str]) -> set[str]:
    """The project modules this module imports as it is itself imported (the imports that can close
    a cycle: one inside a function runs later, once every module is initialised)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {t for t in targets if t in names}
    return found - {here}


def test_no_module_imports_itself_back_through_a_cycle():
    paths = [p for package in PACKAGES for p in _modules(package)]
    names = {_module_name(p) for p in paths}
    graph = {_module_name(p): _module_level_imports(p, names) for p in paths}
    state: dict[str, int] = {}           # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for node in sorted(graph) if node not in state and (c := visit(node, []))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
    assert "suite.families" in graph["suite.checks.routing"]        # the walk sees relative imports
