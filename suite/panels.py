"""Pathway panels: named sets of KDs and genes, from YAML or GMT files.

YAML panel file::

    schema_version: 1
    pathways:
      ribosome:
        description: cytosolic ribosome
        kds: [RPL3, RPL7, RPL11]          # knockdowns belonging to the pathway
        genes: [RPL3, RPL5, RPL24, RPS15]  # member genes (gene-level probes); default: kds
        regulators: [RPL5, RPS6]           # optional, for targeted Jacobians
        targets: [RPL24, RPS15]            # optional
        unrelated_kds: [MYC, MAX]          # optional: the comparison KDs for targeted Jacobians

GMT (MSigDB's format, one set per line: name, description, genes tab-separated) gives
panels whose KDs and genes are the set's genes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import fields
from core.errors import SpecError, repeated
from core.yamlio import read_text, read_yaml

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Panel:
    name: str
    kds: tuple[str, ...]
    genes: tuple[str, ...]
    regulators: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    description: str = ""
    file: str = ""            # where the panel was defined, for messages
    line: int | None = None
    unrelated_kds: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class _PanelEntry:
    kds: tuple[str, ...] = ()
    genes: tuple[str, ...] = ()
    regulators: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    description: str = ""
    unrelated_kds: tuple[str, ...] = ()


@dataclass(frozen=True)
class _PanelFile:
    schema_version: int
    pathways: dict


def load_panels(paths: list[Path]) -> dict[str, Panel]:
    """All panels of the given files; a pathway defined twice is an error."""
    panels: dict[str, Panel] = {}
    for path in paths:
        for panel in _read_gmt(path) if path.suffix.lower() == ".gmt" else _read_yaml(path):
            if panel.name in panels:
                raise SpecError(f"pathway '{panel.name}' is defined twice (also at {panels[panel.name].source})",
                                file=panel.file, line=panel.line,
                                hint="rename one of them or drop one file from 'panels'")
            panels[panel.name] = panel
    return panels


def _read_yaml(path: Path) -> list[Panel]:
    data = read_yaml(path)
    where = fields.Where(str(path))
    top = fields.build(_PanelFile, data, where)
    fields.check_schema_version(top.schema_version, SCHEMA_VERSION, where, data)
    pathways = fields.expect_mapping(top.pathways, where, data, "pathways")
    panels = []
    for name, body in pathways.items():
        _check_name(name, str(path), pathways.line_of(name))
        entry = fields.build(_PanelEntry, body, where.child(f"pathways.{name}"), pathways, name)
        _refuse_repeats(entry, body, where.child(f"pathways.{name}"))
        kds = entry.kds or entry.genes
        if not kds:
            raise where.error(f"pathway '{name}' lists neither 'kds' nor 'genes'", pathways, name)
        panels.append(Panel(str(name), kds, entry.genes or kds, entry.regulators, entry.targets,
                            description=entry.description, file=str(path), line=pathways.line_of(name),
                            unrelated_kds=entry.unrelated_kds))
    return panels


def _check_name(name: object, file: str, line: int | None) -> None:
    """A pathway name becomes part of pytest ids, file names and report anchors."""
    text = str(name)
    if not isinstance(name, str) or not text.strip() or not text.isprintable():
        raise SpecError(f"pathway name {text!r} must be printable text (no control characters, not empty)",
                        file=file, line=line, hint="rename the pathway")


def _refuse_repeats(entry: _PanelEntry, body: dict, where: fields.Where) -> None:
    """A member listed twice would count twice: two distinct KDs written four times each would pass
    a `min_members: 3` test as eight."""
    for name in ("kds", "genes", "regulators", "targets", "unrelated_kds"):
        twice = repeated(getattr(entry, name))
        if twice:
            raise where.error(f"lists {', '.join(twice)} more than once", body, name,
                              hint="list each member once")


def _read_gmt(path: Path) -> list[Panel]:
    lines = read_text(path).splitlines()
    panels = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split("\t")]
        genes = tuple(c for c in cells[2:] if c)
        if len(cells) < 3 or not cells[0] or not genes:
            raise SpecError("a GMT line needs: name <TAB> description <TAB> gene <TAB> gene ...",
                            file=str(path), line=number, hint="separate columns with tabs, not spaces")
        _check_name(cells[0], str(path), number)
        if repeated(genes):
            raise SpecError(f"set '{cells[0]}' lists {', '.join(repeated(genes))} more than once", file=str(path),
                            line=number, hint="list each gene once (a repeated member would count twice)")
        panels.append(Panel(cells[0], genes, genes, description=cells[1], file=str(path), line=number))
    return panels
