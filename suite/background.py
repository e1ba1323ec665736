"""The KDs a run computes: its panels' KDs plus one seeded background sample of the rest.

A genome-wide screen has ~2,000 KDs, a run's hypotheses name a few dozen. Every per-KD probe
output (ΔY, representations, pert_encoder outputs, routing Jacobians, the learnedness predictions)
is computed for the panel KDs and for `size` KDs drawn from the whole screen, and every KD-set
null, learnedness baseline and whole-model statistic draws from that sample instead of the
screen (`--background-kds`, default 256; `all` computes every KD, as before this module).

The sample is drawn with permanent random numbers: each KD name gets a uniform number from a
hash of (seed, name), and the `size` KDs with the smallest numbers are the sample. A simple
random sample keeps the screen's mixture of strong and weak KDs in expectation (the
magnitude-stratified nulls then stratify within it), and drawing it from names alone makes it
the same for every model with the same KDs (the two models of a pair are compared on the same
KDs) and the same on every night (a nightly diff shows a new checkpoint, not a new sample). The
frame is every KD, panel KDs included, so the sample is a sample of the screen and a sampled
panel KD is background like any other; the panel KDs outside it are computed for their own
tests only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

BackgroundSize = int | Literal["all"]
DEFAULT_SIZE: BackgroundSize = 256
SEED = 0


@dataclass(frozen=True)
class Background:
    """One model's KDs in a run: the sample drawn from the screen and the panel KDs added to it."""

    sample: frozenset[str]        # the background: what nulls, baselines and whole-model checks draw from
    kept: tuple[str, ...]         # every KD the run computes (sample and panel KDs), in the model's order
    screen: int                   # the model's KDs
    seed: int = SEED

    @property
    def digest(self) -> str:
        """Names the KD set in cache keys (a restricted model's outputs are not the full model's)."""
        return hashlib.sha256("\n".join(self.kept).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"sample": len(self.sample), "kds": len(self.kept), "of": self.screen, "seed": self.seed,
                "digest": self.digest}

    def text(self) -> str:
        return (f"null from a background of {len(self.sample)} of {self.screen} KDs (a seeded random sample of the "
                f"screen, seed {self.seed}; {len(self.kept) - len(self.sample)} panel KDs outside it computed for "
                "their own tests); --background-kds all uses every KD")


def uniform(name: str, seed: int = SEED) -> float:
    """The KD's permanent random number in [0, 1): the same for every model, run and machine."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def draw(kds: Sequence[str], needed: Collection[str], size: BackgroundSize, seed: int = SEED) -> Background | None:
    """The background of a model with these KDs, or None when it would hold them all (`size` all, or
    a screen no larger than the sample and the panel KDs outside it)."""
    if size == "all":
        return None
    sample = frozenset(sorted(kds, key=lambda k: (uniform(k, seed), k))[:size])
    kept = tuple(k for k in kds if k in sample or k in needed)
    if len(kept) == len(kds):
        return None
    return Background(sample, kept, len(kds), seed)


def parse_size(text: str) -> BackgroundSize:
    """`--background-kds`: a whole number of at least 16, or 'all' (ValueError with the fix otherwise)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 16:
        raise ValueError(f"--background-kds {text}: give a number of KDs of at least 16 (default {DEFAULT_SIZE}), "
                         "or 'all' to compute every KD of the screen")
    return value
