"""Every way the suite can refuse to give a verdict, in one tree.

    SuiteError                     base of everything the suite raises on purpose
    ├── SpecError                  a hypothesis, panel or models registry file is wrong:
    │   │                          the message names the file, line and field, and what to do
    │   └── UnknownNameError       a gene or KD symbol is not in the model (close matches listed)
    ├── ModelLoadError             a model_dir, checkpoint, gene list or cells file cannot be used
    │   └── UnsafeCheckpointError  a pickle asks for a global outside the allowlist; refused
    │                              before anything in it runs
    ├── ProbeError                 a probe failed on inputs that passed validation
    ├── FamilyError                a probe family module cannot be registered (suite/families.py)
    └── MergeError                 the runs given to `python -m suite.merge` are not the parts of one
                                   run (a part missing or twice, a case in two parts or in none)

    Inconclusive                   not an error: a test that cannot be run fairly (too few
                                   panel members present, zero variance); carries the reason
                                   and becomes a skipped case, never a pass or a fail

    AssertionError (pytest's failure)
    ├── HypothesisFailed           a case whose verdict is fail: the claim and the numbers
    └── Regression                 a verdict that changed since --baseline (both in suite/verdicts.py,
                                   the layer that turns verdicts into pytest outcomes)

Spec and model errors stop the run or the case loudly; an Inconclusive is an honest
verdict of its own.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SuiteError(Exception):
    """Base class for errors the suite raises deliberately."""


class SpecError(SuiteError):
    """A YAML hypothesis, panel or registry is invalid."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None) -> None:
        self.file, self.line, self.field, self.hint = file, line, field, hint
        self.bare_message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file or "<unknown file>"
        if self.line is not None:
            where += f", line {self.line}"
        if self.field:
            where += f", field '{self.field}'"
        text = f"{where}: {self.bare_message}"
        return f"{text}\n  -> {self.hint}" if self.hint else text


class UnknownNameError(SpecError):
    """A gene or KD name that the model does not know."""


class ModelLoadError(SuiteError):
    """A model_dir, checkpoint, gene list or cells file cannot be used."""


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint whose pickle needs globals outside the allowlist."""


class ProbeError(SuiteError):
    """A probe failed on inputs that passed validation."""


class FamilyError(SuiteError):
    """A probe family module that cannot be imported or registered."""


class MergeError(SuiteError):
    """The runs given to merge are not the parts of one sharded run."""


class Inconclusive(Exception):
    """A test that cannot be run fairly; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def typos_of(name: str, known: Iterable[str]) -> list[str]:
    """Known names one single-character edit from `name` (two for names of 20 characters or more),
    case-insensitive: a mistyped name, not a sibling such as 'lax-coherence' beside 'sae-coherence'."""
    max_edits = 1 if len(name) < 20 else 2
    def distance(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            previous, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
        return row[-1]
    return [k for k in known if distance(name.upper(), k.upper()) <= max_edits]


def repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, each once, in the order they first repeat."""
    seen: set[str] = set()
    return list(dict.fromkeys(n for n in names if n in seen or seen.add(n)))


def close_matches(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Known names that look like `name` (case-insensitive), best first."""
    known = list(known)
    by_upper = {k.upper(): k for k in known}
    hits = difflib.get_close_matches(name.upper(), list(by_upper), n=n, cutoff=0.6)
    return [by_upper[h] for h in hits]


def describe_unknown(names: Iterable[str], known: Iterable[str], kind: str) -> str:
    """'RPL3X (did you mean RPL3, RPL13?), FOO (no close match)' for an error message."""
    known = list(known)
    parts = []
    for name in names:
        hits = close_matches(name, known)
        parts.append(f"{name} (did you mean {', '.join(hits)}?)" if hits else f"{name} (no close {kind})")
    return "; ".join(parts)
