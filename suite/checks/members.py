"""Resolving a panel's names against what a model knows.

A name the model has is used. A name the model lacks but that is a real gene of its
world (in its gene lists or cells) is dropped and reported. A name nobody knows is most
likely a typo: an UnknownNameError with close matches, unless the hypothesis says
`on_unknown: drop`. Too few names left makes the case Inconclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.errors import Inconclusive, UnknownNameError, describe_unknown

from ..panels import Panel


def resolve_members(names: Sequence[str], available: Sequence[str], universe: Iterable[str], *, panel: Panel,
                    model: str, what: str, on_unknown: str, min_members: int) -> tuple[list[str], list[str]]:
    """(present, dropped) members of `names`; raises UnknownNameError or Inconclusive."""
    have = set(available)
    known = set(universe) | have
    present = [n for n in names if n in have]
    dropped = [n for n in names if n not in have]
    unknown = [n for n in dropped if n not in known]
    if unknown and on_unknown == "error":
        raise UnknownNameError(
            f"pathway '{panel.name}': {what} not known to model '{model}': {describe_unknown(unknown, known, 'name')}",
            file=panel.file, line=panel.line, field=f"pathways.{panel.name}",
            hint="fix the spelling, or set 'on_unknown: drop' in the hypothesis params to skip such names")
    if len(present) < min_members:
        missing = f"; not in the model: {', '.join(dropped)}" if dropped else ""
        raise Inconclusive(f"only {len(present)} of {len(names)} {what} of pathway '{panel.name}' are in model "
                           f"'{model}' (need at least {min_members}){missing}")
    return present, dropped
