"""Probe outputs cached on disk, keyed by the model's fingerprint and every parameter that shapes them.

The folder is pytest's own cache (`.pytest_cache/d/st-hypotheses`, cleared by `--cache-clear`,
moved by `-o cache_dir=...`); with `-p no:cacheprovider` nothing is written. A cached array is
only ever seen whole: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

VERSION = 1     # bump when a probe's numbers change for the same inputs


def cache_key(kind: str, **parts: object) -> str:
    """A file-name-safe key: `kind` plus a digest of the parts (fingerprints, parameters)."""
    blob = json.dumps({"version": VERSION, "kind": kind, **parts}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


class ArrayCache:
    """Arrays by key in one folder, or nowhere (root None: compute every time, hold in memory)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits: list[str] = []
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def array(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for key, else compute() saved under it."""
        path = self._path(key)
        if path is not None and path.exists():
            self.hits.append(key)
            return np.load(path, mmap_mode="r")
        value = compute()
        if path is not None:
            _atomic_save(path, lambda tmp: np.save(tmp, value))
        return value

    def filled(self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
        """A float32 array too large to hold twice: fill(out) writes into a disk memmap that is renamed
        into place once complete (an in-memory array when there is no cache folder)."""
        path = self._path(key)
        if path is None:
            out = np.zeros(shape, dtype=np.float32)
            fill(out)
            return out
        if path.exists():
            self.hits.append(key)
            return np.load(path, mmap_mode="r")

        def write(tmp: Path) -> None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            fill(out)
            out.flush()
            del out

        _atomic_save(path, write)
        return np.load(path, mmap_mode="r")

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.npy"


def _atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
