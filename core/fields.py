"""Typed reading of YAML mappings into dataclasses, with errors that say where and what to do.

A dataclass describes a section of a spec: its field types give the allowed YAML types,
`Literal[...]` gives the allowed choices, and an optional class attribute `LIMITS`
({field: (low, high)}) gives numeric ranges. Unknown keys are errors with a close match.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import SpecError, close_matches
from .yamlio import LineDict


@dataclasses.dataclass(frozen=True)
class Where:
    """Where a mapping came from, for error messages."""

    file: str
    section: str = ""

    def child(self, key: str) -> Where:
        return Where(self.file, f"{self.section}.{key}" if self.section else key)

    def error(self, message: str, mapping: Any = None, key: Any = None, hint: str | None = None) -> SpecError:
        line = None
        if isinstance(mapping, LineDict):
            line = mapping.line_of(key) if key is not None else mapping.line
        elif mapping is not None:
            line = getattr(mapping, "line", None)
        field = self.section or None
        # callers pass the value's own Where together with its key: name the key once
        if key is not None and not (self.section == str(key) or self.section.endswith(f".{key}")):
            field = self.child(str(key)).section
        return SpecError(message, file=self.file, line=line, field=field, hint=hint)


def expect_mapping(value: Any, where: Where, parent: Any = None, key: Any = None) -> LineDict:
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping (key: value lines), got {_kind(value)}", parent, key)
    return value if isinstance(value, LineDict) else LineDict(value)


def reject_unknown(mapping: LineDict, allowed: typing.Iterable[str], where: Where) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            if key is None or isinstance(key, bool):
                raise where.error(f"a key reads as the YAML value {_kind(key)}", mapping, key,
                                  hint="YAML turns bare null/true/false/yes/no keys into values; quote the key")
            hits = close_matches(str(key), allowed)
            hint = f"did you mean '{hits[0]}'?" if hits else f"allowed keys: {', '.join(allowed)}"
            raise where.error(f"unknown key '{key}'", mapping, key, hint=hint)


def check_schema_version(found: int, supported: int, where: Where, mapping: Any) -> None:
    if found != supported:
        raise where.error(f"schema_version {found} is not supported (this suite reads {supported})",
                          mapping, "schema_version", hint=f"write 'schema_version: {supported}'")


def build(cls: type, value: Any, where: Where, parent: Any = None, key: Any = None) -> Any:
    """Build dataclass `cls` from a YAML mapping, checking keys, types, choices and limits."""
    mapping = LineDict() if value is None else expect_mapping(value, where, parent, key)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    reject_unknown(mapping, fields, where)
    kwargs = {}
    for name, field in fields.items():
        if name in mapping:
            kwargs[name] = convert(hints[name], mapping[name], where.child(name), mapping, name)
            _check_limits(cls, name, kwargs[name], where, mapping)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise where.error(f"missing required key '{name}'", mapping, hint=f"add '{name}:' here")
    return cls(**kwargs)


def convert(tp: Any, value: Any, where: Where, parent: Any, key: Any) -> Any:
    """Check `value` against type `tp`; return it converted (lists to tuples, ints to floats)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return convert(inner[0], value, where, parent, key)
        # a number or a word ('directions: 64' or 'directions: all'): the first type that takes the value
        for option in inner:
            try:
                return convert(option, value, where, parent, key)
            except SpecError:
                continue
        raise where.error(f"expected {' or '.join(_describe(a) for a in inner)}, got {_kind(value)}", parent, key)
    if origin is Literal:
        if value not in args:
            hits = close_matches(str(value), [str(a) for a in args])
            hint = f"did you mean '{hits[0]}'?" if hits else None
            raise where.error(f"'{value}' is not one of: {', '.join(map(str, args))}", parent, key, hint=hint)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise where.error(f"expected a list, got {_kind(value)}", parent, key)
        return tuple(convert(args[0], v, where, value, i) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {_kind(value)}", parent, key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected a whole number, got {_kind(value)}", parent, key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(f"expected a number, got {_kind(value)}", parent, key)
        if isinstance(value, int) and abs(value) > 1e300:
            raise where.error(f"the number {str(value)[:20]}... is too large", parent, key)
        if not math.isfinite(value):    # .nan passes no threshold and .inf every one: neither tests anything
            raise where.error(f"expected a finite number, got {value}", parent, key)
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise where.error(f"expected a non-empty text, got {_kind(value)}", parent, key)
        return value
    if tp is dict:
        return expect_mapping(value, where, parent, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, parent, key)
    return value


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " or ".join(f"'{a}'" for a in get_args(tp))
    return {int: "a whole number", float: "a number", str: "a text", bool: "true or false"}.get(tp, str(tp))


def _check_limits(cls: type, name: str, value: Any, where: Where, mapping: LineDict) -> None:
    limits = getattr(cls, "LIMITS", {}).get(name)
    if limits is None or value is None or isinstance(value, str):
        return
    low, high = limits
    if not low <= value <= high:
        raise where.error(f"{value} is out of range [{low}, {high}]", mapping, name)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number"}
    for tp, text in names.items():
        if isinstance(value, tp):
            return f"{text} ({value!r})" if tp in (str, int, float, bool) else text
    return type(value).__name__
