"""From probabilities to binary masks, with thresholds chosen on out-of-fold predictions.

Three knobs, as in the top TGS solutions: the pixel threshold, a minimum predicted area below which a
mask is emptied (small false positives cost a whole image: an empty truth scores 0 for any predicted
pixel), and the empty-head threshold (a confident "empty" vote empties the mask). They are searched
coordinate-wise on the OOF predictions, never guessed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from salt_model.metric import image_scores

PIXEL_GRID = tuple(float(v) for v in np.round(np.arange(0.20, 0.81, 0.025), 3))
AREA_GRID = (0, 5, 10, 20, 40, 60, 80, 120, 160)
EMPTY_GRID = (1.01, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # 1.01 = the empty head never empties a mask


@dataclass(frozen=True)
class Thresholds:
    pixel: float = 0.5  # probability above which a pixel is salt
    min_area: int = 0  # masks with fewer predicted pixels are emptied
    empty: float = 1.01  # empty-head probability above which the mask is emptied (> 1 = off)

    def to_dict(self) -> dict:
        return asdict(self)


def binarize(probs: np.ndarray, empty_probs: np.ndarray | None, th: Thresholds) -> np.ndarray:
    """(N, H, W) float probabilities -> (N, H, W) bool masks; never mutates its inputs."""
    masks = probs > th.pixel  # (N, H, W)
    keep = masks.sum(axis=(1, 2)) >= max(th.min_area, 1)
    if empty_probs is not None:
        keep &= empty_probs <= th.empty
    return masks & keep[:, None, None]


def default_thresholds(empty_probs: np.ndarray | None) -> Thresholds:
    """What the training loop scores val_map with: pixel 0.5, and the empty head at 0.5 when present."""
    return Thresholds() if empty_probs is None else Thresholds(empty=0.5)


def choose_thresholds(
    probs: np.ndarray, empty_probs: np.ndarray | None, truth: np.ndarray, rounds: int = 2
) -> tuple[Thresholds, float]:
    """Coordinate-wise search of (pixel, min_area, empty) maximising the competition metric.

    Returns the chosen thresholds and the OOF score they reach. Starts from `default_thresholds`, so
    the result is never worse than the training loop's own thresholds on these predictions.
    """
    best = default_thresholds(empty_probs)
    best_score = _score(probs, empty_probs, truth, best)
    grids = {"pixel": PIXEL_GRID, "min_area": AREA_GRID}
    if empty_probs is not None:
        grids["empty"] = EMPTY_GRID
    for _ in range(rounds):
        for name, grid in grids.items():
            for value in grid:
                candidate = Thresholds(**{**best.to_dict(), name: value})
                score = _score(probs, empty_probs, truth, candidate)
                if score > best_score + 1e-9:
                    best, best_score = candidate, score
    return best, best_score


def _score(probs, empty_probs, truth, th: Thresholds) -> float:
    return float(image_scores(truth, binarize(probs, empty_probs, th)).mean())
