"""The `run` object of verdicts.json: when, with what code, on which device, which models."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from core.errors import SuiteError
from fixtures.arc_state import model_fingerprint
from fixtures.device import describe, resolve_device
from fixtures.registry import ModelEntry

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "arc-state", "numpy", "scipy", "anndata", "pingouin")


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def run_info(run_id: str, started: str, device_choice: str, registry_path: Path,
             registry: dict[str, ModelEntry]) -> dict:
    return {"id": run_id, "started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "suite_commit": git_commit(), "device": _device_text(device_choice),
            "models_registry": str(registry_path), "versions": versions(), "determinism": determinism(),
            "models": {name: model_summary(entry) for name, entry in registry.items()}}


def model_summary(entry: ModelEntry) -> dict:
    try:
        fingerprint = model_fingerprint(entry)
    except SuiteError as exc:
        fingerprint = f"unavailable: {exc}"
    return {"model_dir": str(entry.model_dir), "checkpoint": str(entry.checkpoint), "cells": str(entry.cells_path),
            "cell_line": entry.cell_line, "split": entry.split, "fingerprint": fingerprint}


def git_commit() -> str:
    """HEAD of the suite's repository, with '-dirty' when tracked files have changed."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown (not a git checkout, or no commits yet)"
    commit = head.stdout.strip()
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def determinism() -> dict[str, object]:
    """The torch settings that decide whether reruns give the same bits."""
    cudnn = torch.backends.cudnn
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": cudnn.deterministic, "cudnn_benchmark": cudnn.benchmark,
            "torch_threads": torch.get_num_threads(), "matmul_precision": torch.get_float32_matmul_precision()}


def _device_text(choice: str) -> str:
    try:
        return describe(resolve_device(choice))
    except ValueError:
        return choice
