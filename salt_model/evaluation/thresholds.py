"""From probabilities to binary masks, with thresholds chosen on out-of-fold predictions.

Three knobs, as in the top TGS solutions: the pixel threshold, a minimum predicted area below which a
mask is emptied (small false positives cost a whole image: an empty truth scores 0 for any predicted
pixel), and the empty-head threshold (a confident "empty" vote empties the mask). They are searched
coordinate-wise on the OOF predictions, never guessed, over grids that reach far enough that the
chosen value is not at an edge (`at_edge` says when it is).

Two rules for the empty head (`decode.empty_rule`): `gate` thresholds the pixel map and lets the head
veto a mask; `product` thresholds p x (1 - p_empty), so a confident pixel map can outvote an unsure
head (and the other way round), then applies the same min-area and gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from salt_model.evaluation.metric import image_scores

PIXEL_GRID = tuple(float(v) for v in np.round(np.arange(0.05, 0.951, 0.025), 3))
AREA_GRID = (0, 5, 10, 20, 40, 60, 80, 120, 160, 240, 320, 480)
# 1.01 = the empty head never empties a mask; down to 0.05 (two CPU-preset runs chose 0.4, the old edge)
EMPTY_GRID = (1.01, *(float(v) for v in np.round(np.arange(0.95, 0.049, -0.05), 2)))
RULES = ("gate", "product")


@dataclass(frozen=True)
class Thresholds:
    pixel: float = 0.5  # probability above which a pixel is salt (product rule: p x (1 - p_empty))
    min_area: int = 0  # masks with fewer predicted pixels are emptied
    empty: float = 1.01  # empty-head probability above which the mask is emptied (> 1 = off)
    rule: str = "gate"  # gate | product (decode.empty_rule)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"thresholds rule={self.rule!r} is not allowed; choose one of {list(RULES)}")

    def to_dict(self) -> dict:
        return asdict(self)


def binarize(probs: np.ndarray, empty_probs: np.ndarray | None, th: Thresholds) -> np.ndarray:
    """(N, H, W) float probabilities -> (N, H, W) bool masks; never mutates its inputs."""
    if th.rule == "product" and empty_probs is not None:
        masks = probs * (1.0 - np.asarray(empty_probs, np.float32))[:, None, None] > th.pixel
    else:
        masks = probs > th.pixel  # (N, H, W)
    keep = masks.sum(axis=(1, 2)) >= max(th.min_area, 1)
    if empty_probs is not None:
        keep &= empty_probs <= th.empty
    return masks & keep[:, None, None]


def default_thresholds(empty_probs: np.ndarray | None, rule: str = "gate") -> Thresholds:
    """What the training loop scores val_map with: pixel 0.5, and with an empty head either the gate
    at 0.5 or (product rule) p x (1 - p_empty) > 0.5 with the gate off."""
    if empty_probs is None:
        return Thresholds()
    return Thresholds(empty=0.5) if rule == "gate" else Thresholds(rule="product")


def choose_thresholds(
    probs: np.ndarray,
    empty_probs: np.ndarray | None,
    truth: np.ndarray,
    rounds: int = 2,
    rule: str = "gate",
) -> tuple[Thresholds, float]:
    """Coordinate-wise search of (pixel, min_area, empty) maximising the competition metric.

    Returns the chosen thresholds and the OOF score they reach. Starts from `default_thresholds`, so
    the result is never worse than the training loop's own thresholds on these predictions.
    """
    best = default_thresholds(empty_probs, rule)
    best_score = _score(probs, empty_probs, truth, best)
    grids = _grids(empty_probs is not None)
    for _ in range(rounds):
        for name, grid in grids.items():
            for value in grid:
                candidate = Thresholds(**{**best.to_dict(), name: value})
                score = _score(probs, empty_probs, truth, candidate)
                if score > best_score + 1e-9:
                    best, best_score = candidate, score
    return best, best_score


def at_edge(th: Thresholds, with_empty: bool = True) -> list[str]:
    """The thresholds that sit at an end of their search grid (off, min_area 0 or empty 1.01, is not
    an edge: it is the knob's natural end)."""
    edges = []
    for name, grid in _grids(with_empty).items():
        ends = (grid[0], grid[-1]) if name == "pixel" else (grid[-1],)
        if getattr(th, name) in ends:
            edges.append(name)
    return edges


def _grids(with_empty: bool) -> dict:
    grids = {"pixel": PIXEL_GRID, "min_area": AREA_GRID}
    if with_empty:
        grids["empty"] = EMPTY_GRID
    return grids


def _score(probs, empty_probs, truth, th: Thresholds) -> float:
    return float(image_scores(truth, binarize(probs, empty_probs, th)).mean())
