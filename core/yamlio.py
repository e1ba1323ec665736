"""YAML reading that remembers where things were written and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; a user who writes `pathway:` twice
loses half a hypothesis that way. Here a duplicate is a SpecError naming both lines,
and every mapping and list remembers the line of each entry for later messages.

A few hundred bytes of nested aliases can stand for billions of nodes once expanded (the
"billion laughs"), and a FIFO or device named *.yaml never ends: a file is read only when it
is a regular file under MAX_BYTES, and parsed only when its aliases expand to at most
MAX_NODES nodes; otherwise a SpecError names the file (and the alias's line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError


class LineDict(dict):
    """A dict read from YAML; `line_of(key)` is the 1-based line the key was written on."""

    def __init__(self, *args: Any, line: int | None = None, key_lines: dict | None = None) -> None:
        super().__init__(*args)
        self.line = line
        self.key_lines = key_lines or {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list read from YAML; `line_of(i)` is the line of item i."""

    def __init__(self, *args: Any, line: int | None = None, item_lines: list | None = None) -> None:
        super().__init__(*args)
        self.line = line
        self.item_lines = item_lines or []

    def line_of(self, index: int) -> int | None:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode):
    data = LineDict(line=node.start_mark.line + 1)
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if key in data.key_lines:
            raise _DuplicateKey(key, data.key_lines[key], line)
        data.key_lines[key] = line
        data[key] = loader.construct_object(value_node, deep=True)


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode):
    data = LineList(line=node.start_mark.line + 1)
    yield data
    for item in node.value:
        data.item_lines.append(item.start_mark.line + 1)
        data.append(loader.construct_object(item, deep=True))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


MAX_BYTES = 8 * 2 ** 20     # far above any hypothesis, panel or registry file
MAX_NODES = 200_000         # nodes after alias expansion; the bundled files have a few thousand


class _TooLarge(yaml.YAMLError):
    def __init__(self, problem: str, node: yaml.Node) -> None:
        self.problem, self.problem_mark = problem, node.start_mark


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the document holds with every alias expanded, without expanding it: each node's
    size is computed once. Stops as soon as MAX_NODES is passed or an alias contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _TooLarge("an alias refers to a node that contains it (a recursive structure)", node)
        open_nodes.add(id(node))
        children = [] if isinstance(node, yaml.ScalarNode) else \
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value
        total = 1 + sum(size(child) for child in children)
        if total > MAX_NODES:
            raise _TooLarge(f"its aliases expand to more than {MAX_NODES:,} nodes", node)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def _load(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str) -> Any:
    """Parse YAML text; every problem becomes a SpecError naming `file` and the line."""
    try:
        return _load(text)
    except _TooLarge as exc:
        raise SpecError(f"refused: {exc.problem}", file=file, line=exc.problem_mark.line + 1,
                        hint="write the entries out, or use fewer nested aliases (&name / *name)") from None
    except _DuplicateKey as exc:
        raise SpecError(f"duplicate key '{exc.key}' (first written on line {exc.first})",
                        file=file, line=exc.second, field=str(exc.key),
                        hint="keep one of the two entries; YAML would silently drop the first") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise SpecError(f"not allowed in these files: {exc.problem}", file=file, line=mark.line + 1 if mark else None,
                        hint="write plain values: tags such as !!python/... are refused, never run") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"not valid YAML: {problem}", file=file,
                        line=mark.line + 1 if mark else None,
                        hint="check indentation, colons and quoting around this line") from None
    except RecursionError:
        raise SpecError("YAML nested too deeply", file=file) from None
    except ValueError as exc:       # e.g. an integer of more digits than Python converts
        raise SpecError(f"a value cannot be read: {exc}", file=file, hint="shorten the value") from None


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file, with a SpecError when it cannot be read."""
    return parse_yaml(read_text(path), str(path))


def read_text(path: Path) -> str:
    """A regular UTF-8 text file of at most MAX_BYTES (a UTF-8 byte-order mark is allowed)."""
    path = Path(path)
    if not path.exists():
        raise SpecError("file not found", file=str(path),
                        hint="check the path; relative paths are resolved from the file that names them")
    if not path.is_file():
        raise SpecError("not a regular file (a folder, FIFO or device)", file=str(path),
                        hint="point at a YAML file, or move this entry out of the folder")
    if path.stat().st_size > MAX_BYTES:
        raise SpecError(f"file of {path.stat().st_size:,} bytes, more than the {MAX_BYTES:,} a YAML file here may "
                        "have", file=str(path), hint="is this the right file?")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r})",
                        file=str(path), hint="save the file as UTF-8") from None
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from None
