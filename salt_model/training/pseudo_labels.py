"""Pseudo-labels: the test tiles an ensemble is confident about, as extra training tiles.

The 1st-place TGS solution (https://www.kaggle.com/c/tgs-salt-identification-challenge/discussion/69291)
kept a test tile when nearly all of its pixels were confidently salt or confidently not; the 4th place
reported +0.002 on the private board from the same idea. Here a tile is kept when

- at least `min_fraction` of its pixels have a salt probability below `low` or above `high`, and
- the empty head (when the model has one) is as confident: its probability is below `low` or above `high`.

With an empty head a pixel's salt probability is the ensemble's pixel probability times the head's
"not empty" probability: the segmentation head is trained on non-empty tiles only, so on a tile the
head calls empty its pixel map is unconstrained, and the pixel map alone would keep no empty tile
(measured: 504 of 504 tiles kept with salt on the CPU preset before this).

Its label is the mask the submission would hold for it (the round's OOF-chosen thresholds), so a
pseudo-labelled tile says exactly what the previous round would submit. Pseudo-labelled tiles join the
*training* part of every fold, with their own weight in the loss; held-out folds stay real labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_model.data.loading import SaltData
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.io import atomic_savez


def confident_fraction(probs: np.ndarray, low: float, high: float) -> np.ndarray:
    """(N, H, W) probabilities -> (N,) fraction of each tile's pixels below `low` or above `high`."""
    probs = np.asarray(probs, dtype=np.float32)
    return ((probs < low) | (probs > high)).mean(axis=(1, 2), dtype=np.float64)


def confident_tiles(
    probs: np.ndarray, empty: np.ndarray | None, low: float, high: float, min_fraction: float
) -> np.ndarray:
    """(N,) bool: the tiles the rule keeps (see the module docstring)."""
    if empty is None:
        return confident_fraction(probs, low, high) >= min_fraction
    empty = np.asarray(empty, dtype=np.float32)
    salt = np.asarray(probs, dtype=np.float32) * (1.0 - empty)[:, None, None]
    return (confident_fraction(salt, low, high) >= min_fraction) & ((empty < low) | (empty > high))


@dataclass
class PseudoLabels:
    """The pseudo-labelled tiles of one round, and the rule that chose them."""

    ids: np.ndarray  # (M,) str
    images: np.ndarray  # (M, 101, 101) uint8
    masks: np.ndarray  # (M, 101, 101) uint8 {0, 1}
    offered: int  # test tiles the rule looked at
    rule: dict  # low, high, min_fraction, thresholds

    @property
    def data(self) -> SaltData:
        return SaltData(self.ids, self.images, self.masks)

    def summary(self) -> dict:
        salt = int(self.masks.reshape(len(self.ids), -1).any(axis=1).sum()) if len(self.ids) else 0
        return {
            "kept": len(self.ids),
            "offered": self.offered,
            "kept_fraction": len(self.ids) / max(self.offered, 1),
            "kept_with_salt": salt,
            **self.rule,
        }

    def save(self, path: Path) -> None:
        atomic_savez(
            path,
            ids=self.ids,
            images=self.images,
            masks=self.masks,
            offered=np.asarray(self.offered),
            rule=np.asarray(json.dumps(self.rule)),
        )

    @classmethod
    def load(cls, path: Path) -> PseudoLabels:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["ids"], f["images"], f["masks"], int(f["offered"]), json.loads(str(f["rule"])))


def select_pseudo_labels(
    test: SaltData,
    probs: np.ndarray,
    empty: np.ndarray | None,
    thresholds: Thresholds,
    low: float,
    high: float,
    min_fraction: float,
    teacher: str = "ensemble",
) -> PseudoLabels:
    """The confident test tiles with the masks the thresholds give them. `teacher` (pseudo.teacher:
    whose probabilities these are) is recorded in the rule."""
    if probs.shape != test.images.shape:
        raise ValueError(f"test probabilities {probs.shape} do not match the test tiles {test.images.shape}")
    keep = confident_tiles(probs, empty, low, high, min_fraction)
    masks = binarize(probs[keep], None if empty is None else empty[keep], thresholds).astype(np.uint8)
    rule = {
        "low": low,
        "high": high,
        "min_fraction": min_fraction,
        "teacher": teacher,
        "thresholds": thresholds.to_dict(),
    }
    return PseudoLabels(test.ids[keep], test.images[keep], masks, len(test), rule)
