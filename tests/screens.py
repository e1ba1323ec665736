"""A planted Perturb-seq screen of the shape real screens have, and a 'model' whose learning is known.

Real screens are dominated by a few large programs that many KDs share (ribosome, proteasome,
spliceosome), with 16 to 100 cells per KD, and a trained model learns some programs fully, some
partly and many weak KDs not at all. `planted_screen` draws such a screen (observed cells) and the
predictions of a model whose learning is fixed by construction, so which sets are learned is known
without asking the suite:

  big        36 of 145 KDs (25%), 40-100 cells each, the strongest program: it dominates the mean
             shift over KDs. Learned fully.
  partial    20 KDs, 16-32 cells: the model predicts one response for all of them whose correlation
             with the planted program is about 0.5 (the direction half right). Learned partly.
  small      16 KDs, 16-32 cells. Learned fully.
  elsewhere  12 KDs of a program planted in another cell line only: here they only lower their own
             gene, and the model (trained elsewhere) predicts the program. Not learned here.
  collapsed  12 KDs, 16-32 cells, each with a private response of its own besides the generic one; the
             model gives them all its generic answer. Not learned (the trap: their predictions are
             "coherent").
  weak       10 KDs with 8 cells, held out of training: their encoder columns are untrained and their
             prediction is the model's answer for an empty one-hot, which resembles `big`.
  private    15 fillers with private programs, learned; null: 24 fillers that only lower their own gene.

Every KD with a phenotype carries the generic response (a growth / stress signature). Every KD
lowers its own gene; the model never learned those drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from suite.learnedness import Screen

SIZES = {"big": 36, "partial": 20, "small": 16, "elsewhere": 12, "collapsed": 12, "weak": 10, "private": 15,
         "null": 24}
CELLS = {"big": (40, 100), "partial": (16, 32), "small": (16, 32), "elsewhere": (16, 32), "collapsed": (16, 32),
         "weak": (8, 8), "private": (30, 60), "null": (20, 60)}
PROGRAM_GENES = {"big": range(10, 34), "partial": range(34, 48), "small": range(48, 60), "elsewhere": range(60, 72)}
LEARNED = ("big", "partial", "small")            # the sets the model learned, by construction
TRAPS = ("elsewhere", "collapsed", "weak", "null")


@dataclass(frozen=True)
class PlantedScreen:
    kds: tuple[str, ...]
    genes: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]          # planted set -> its KDs
    screen: Screen                               # observed cells and the model's predictions
    untrained: np.ndarray                        # [K] bool
    default: np.ndarray                          # [G] the model's answer for an empty one-hot
    truth: np.ndarray                            # [K, G] planted (noise-free) shifts

    def panels(self, names=("big", "partial", "small", "elsewhere", "collapsed")) -> tuple[tuple[str, ...], ...]:
        return tuple(self.groups[n] for n in names)


def planted_screen(seed: int = 0, n_genes: int = 260, n_controls: int = 400, noise: float = 0.6,
                   partial_r: float = 0.5, cells: dict[str, tuple[int, int]] | None = None) -> PlantedScreen:
    """The screen of the module docstring; `cells` overrides CELLS (cells per KD, low and high) by set."""
    counts = CELLS | (cells or {})
    rng = np.random.default_rng(seed)
    genes = tuple(f"g{i:03d}" for i in range(n_genes))
    generic = np.zeros(n_genes)
    generic[:8] = rng.choice([-1, 1], 8) * rng.uniform(0.4, 0.7, 8)
    programs = {}
    for name, where in PROGRAM_GENES.items():
        p = np.zeros(n_genes)
        p[list(where)] = rng.choice([-1, 1], len(where)) * rng.uniform(0.5, 1.0, len(where))
        programs[name] = p * (1.4 if name == "big" else 1.0)
    kds, groups, rows, preds, cells_of = [], {}, [], [], []
    own_genes = iter(range(100, n_genes))
    # the model: its generic answer, the programs it learned, and its answer for an empty one-hot
    model_generic = 0.9 * generic
    default = 0.9 * (programs["big"] + generic)
    junk = rng.normal(size=n_genes) * (np.arange(n_genes) < 100)
    junk -= junk @ programs["partial"] / (programs["partial"] @ programs["partial"]) * programs["partial"]
    junk *= np.linalg.norm(programs["partial"]) / np.linalg.norm(junk)
    partial_answer = partial_r * programs["partial"] + np.sqrt(1 - partial_r ** 2) * junk
    for name, size in SIZES.items():
        groups[name] = tuple(f"{name}{i:02d}" for i in range(size))
        for kd in groups[name]:
            own = next(own_genes)
            strength = rng.uniform(0.7, 1.3)
            if name in PROGRAM_GENES and name != "elsewhere":
                truth = generic + programs[name] * (1 + 0.1 * rng.normal(size=n_genes))
                pred = {"big": 0.95 * truth, "small": 0.95 * truth,
                        "partial": model_generic + partial_answer}[name]
            elif name == "elsewhere":
                truth, pred = np.zeros(n_genes), model_generic + programs["elsewhere"]
            elif name in ("collapsed", "weak", "private"):
                private = np.zeros(n_genes)
                where = rng.choice(np.arange(72, 100), 6, replace=False)
                private[where] = rng.choice([-1, 1], 6) * rng.uniform(0.3, 0.6, 6) * (2.0 if name == "private" else 1)
                truth = generic + private
                pred = {"collapsed": model_generic, "weak": default, "private": 0.95 * truth}[name]
            else:
                truth, pred = np.zeros(n_genes), np.zeros(n_genes)
            truth = truth * strength
            truth[own] -= 1.0
            pred = pred * (strength if name != "weak" else 1.0) + rng.normal(0, 0.02, n_genes)
            low, high = counts[name]
            n = int(rng.integers(low, high + 1))
            kds.append(kd)
            rows.append((truth, own))
            preds.append(pred)
            cells_of.append(truth + rng.normal(0, noise, (n, n_genes)))
    controls = rng.normal(0, noise, (n_controls, n_genes))
    own_gene = np.array([own for _, own in rows])
    screen = Screen(tuple(kds), np.array(preds), tuple(cells_of), controls, own_gene, seed=seed,
                    source="planted screen")
    untrained = np.array([k.startswith("weak") for k in kds])
    return PlantedScreen(tuple(kds), genes, groups, screen, untrained, default, np.array([t for t, _ in rows]))
