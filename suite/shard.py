"""Runs that outgrow one machine: `--shard I/N` runs the I-th of N parts of the cases, and
`python -m suite.merge` joins the parts' records into the run a single machine would have written.

A case's part is that of the first model it uses (the key the xdist scheduler of
suite/distribute.py groups by), so every case of one model, and the pairs that start with it, run
in one part and each part loads only the models its cases use. Models are dealt to parts
largest first (by case count), each to the part with the fewest cases so far. Each part's
record names its place and every case of the whole run (`run.shard`), so the merge can tell a
missing part or case from a duplicated one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from .cases import Case


@dataclass(frozen=True)
class Shard:
    index: int            # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
            raise pytest.UsageError(f"--shard {text}: write I/N with 1 <= I <= N (e.g. --shard 2/4 runs the second "
                                    "of four parts)")
        return cls(int(found.group(1)), int(found.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def assign(cases: Sequence[Case], count: int) -> dict[str, int]:
    """case_id -> its part (1..count): whole models dealt out largest first to the emptiest part."""
    sizes = Counter(case.models[0] for case in cases)
    load = [0] * count
    part_of: dict[str, int] = {}
    for model, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        part = min(range(count), key=lambda i: (load[i], i))
        part_of[model] = part + 1
        load[part] += size
    return {case.case_id: part_of[case.models[0]] for case in cases}


def select(items: list[pytest.Item], config: pytest.Config, shard: Shard) -> list[str]:
    """Keep this part's cases in `items` (the others deselected, as -k does); every case id of the run."""
    cases = [item.callspec.params["case"] for item in items if _case(item) is not None]
    parts = assign(cases, shard.count)
    kept, dropped = [], []
    for item in items:
        case = _case(item)
        (kept if case is None or parts[case.case_id] == shard.index else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    return [case.case_id for case in cases]


def _case(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("case") if callspec is not None else None
    return case if isinstance(case, Case) else None
