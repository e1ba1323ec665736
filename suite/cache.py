"""Probe outputs cached on disk, keyed by the model's fingerprint, every parameter that shapes them
and the versions of the libraries that compute them.

The folder is `--cache-dir`, by default pytest's own cache (`.pytest_cache/d/st-hypotheses`,
cleared by `--cache-clear`); `--no-cache` or `-p no:cacheprovider` writes nothing. A cached
array is only ever seen whole: it is written under a temporary name (unique per process) and
renamed into place, so workers sharing the folder never read a partial file; two that compute
the same entry at once write the same bytes, and the last rename wins. An entry that cannot be
read (a damaged disk, a file copied in by hand) is deleted and recomputed, with a CacheWarning
naming it: a cache may lose work, never give a wrong array or stop a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

VERSION = 1     # bump when a probe's numbers change for the same inputs


class CacheWarning(UserWarning):
    """A cache entry could not be read and is being recomputed."""


def cache_key(kind: str, **parts: object) -> str:
    """A file-name-safe key: `kind` plus a digest of the parts (fingerprints, parameters, versions)."""
    blob = json.dumps({"version": VERSION, "kind": kind, **parts}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


class ArrayCache:
    """Arrays by key in one folder, or nowhere (root None: compute every time, hold in memory).
    `salt` (e.g. library versions) enters every key made by `key()`."""

    def __init__(self, root: Path | None, salt: dict[str, str] | None = None) -> None:
        self.root = root
        self.salt = dict(salt or {})
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def key(self, kind: str, **parts: object) -> str:
        return cache_key(kind, **parts, libraries=self.salt)

    def has(self, key: str) -> bool:
        path = self._path(key)
        return path is not None and path.exists()

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The entry, or None when there is none or it cannot be read (or has another shape than `shape`)."""
        if not self.has(key):
            return None
        path = self._path(key)
        try:
            found = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(found, np.ndarray) or (shape is not None and found.shape != tuple(shape)):
                raise ValueError(f"holds {getattr(found, 'shape', type(found).__name__)}, expected an array of "
                                 f"shape {shape}")
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"cache entry {path} cannot be used ({exc}); recomputing it", CacheWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return found

    def put(self, key: str, value: np.ndarray) -> None:
        path = self._path(key)
        if path is not None:
            _atomic_save(path, lambda tmp: np.save(tmp, value))

    def array(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for key, else compute() saved under it."""
        found = self.get(key)
        if found is not None:
            return found
        value = compute()
        self.put(key, value)
        return value

    def filled(self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
        """A float32 array too large to hold twice: fill(out) writes into a disk memmap that is renamed
        into place once complete (an in-memory array when there is no cache folder)."""
        path = self._path(key)
        if path is None:
            out = np.zeros(shape, dtype=np.float32)
            fill(out)
            return out
        found = self.get(key, shape)
        if found is not None:
            return found

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
