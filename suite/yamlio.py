"""YAML reading that remembers where things were written and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; a user who writes `pathway:` twice
loses half a hypothesis that way. Here a duplicate is a SpecError naming both lines,
and every mapping and list remembers the line of each entry for later messages.
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


def parse_yaml(text: str, file: str) -> Any:
    """Parse YAML text; every problem becomes a SpecError naming `file` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as exc:
        raise SpecError(f"duplicate key '{exc.key}' (first written on line {exc.first})",
                        file=file, line=exc.second, field=str(exc.key),
                        hint="keep one of the two entries; YAML would silently drop the first") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"not valid YAML: {problem}", file=file,
                        line=mark.line + 1 if mark else None,
                        hint="check indentation, colons and quoting around this line") from None
    except RecursionError:
        raise SpecError("YAML nested too deeply", file=file) from None


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file, with a SpecError when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", file=str(path),
                        hint="check the path; relative paths are resolved from the file that names them") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read file: {exc}", file=str(path)) from None
    return parse_yaml(text, str(path))
