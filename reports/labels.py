"""How a verdict reads wherever a person or a CI dashboard sees it (card, grid, JUnit, terminal).

A pass of a KD-set test whose models were not judged on observed perturbed cells is not yet
evidence (KDs a model did not learn collapse onto one generic response and look coherent): it
reads "pass (unverified: no observed cells)", never as a plain pass."""

from __future__ import annotations

from typing import Any

UNVERIFIED = "unverified: no observed cells"


def verdict_label(case: dict[str, Any]) -> str:
    """The verdict of a case record as the report writes it."""
    if case.get("verdict") == "pass" and case.get("unverified"):
        return f"pass ({UNVERIFIED})"
    return case.get("verdict", "error")
