"""Paths and small helpers shared by the suite's own tests."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "demo"
PANELS = ROOT / "hypotheses" / "panels" / "demo_pathways.yaml"
