"""A picture of the out-of-fold predictions: the worst, middling and best tiles at a glance.

`oof_gallery`: each cell is a tile in gray with the true mask's outline in green and the prediction's in red, and
its competition score written beneath. Rows: the lowest-scoring tiles, a random middle, the best
non-empty ones. `overlay_grid`: the worst OOF tiles first, each pixel coloured by outcome (true
positive green, false positive red, false negative blue), as in the TGS write-ups' error analysis.
Written as PNG with OpenCV (no plotting library needed).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from salt_model.evaluation.metric import image_scores
from salt_model.io import atomic_write

SCALE = 2  # 101 px tiles drawn at 202 px


def _cell(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, text: str) -> np.ndarray:
    size = image.shape[0] * SCALE
    big = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)
    cell = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    for mask, color in ((truth, (0, 200, 0)), (pred, (0, 0, 255))):
        up = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(cell, contours, -1, color, 2)
    label = np.full((22, size, 3), 255, dtype=np.uint8)
    cv2.putText(label, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([cell, label])


def oof_gallery(
    path: Path,
    images: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    ids: np.ndarray,
    per_row: int = 8,
    seed: int = 0,
) -> Path:
    """Writes the gallery PNG of `pred` vs `truth` (both (N, 101, 101) bool) and returns its path."""
    scores = image_scores(truth, pred)  # (N,)
    order = np.argsort(scores, kind="stable")
    nonempty = order[truth[order].any(axis=(1, 2))]
    rng = np.random.default_rng(seed)
    rows = [order[:per_row], rng.permutation(order)[:per_row], nonempty[::-1][:per_row]]
    grid = []
    for row in rows:
        cells = [_cell(images[i], truth[i], pred[i], f"{ids[i]} {scores[i]:.2f}") for i in row]
        cells += [np.full_like(cells[0], 255)] * (per_row - len(cells))
        grid.append(np.hstack(cells))
    picture = np.vstack(grid)
    ok, png = cv2.imencode(".png", picture)
    assert ok, "OpenCV failed to encode the gallery"
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(png.tobytes()))
    return Path(path)


# BGR colours of the overlay grid: true positive pixels, false positives, false negatives
TP, FP, FN = (60, 180, 60), (40, 40, 230), (230, 150, 30)


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) uint8 tile -> (H, W, 3) BGR with TP green, FP red and FN blue pixels blended in."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for mask, color in ((truth & pred, TP), (~truth & pred, FP), (truth & ~pred, FN)):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.astype(np.uint8)


def overlay_grid(
    path: Path,
    images: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    ids: np.ndarray,
    count: int = 48,
    per_row: int = 8,
) -> list[str]:
    """Writes a PNG grid of the `count` lowest-scoring OOF tiles that are not perfect (worst first,
    TP/FP/FN coloured); returns the ids shown, in order (empty, and no file, when every tile scores 1)."""
    scores = image_scores(truth, pred)  # (N,)
    order = np.argsort(scores, kind="stable")
    order = order[scores[order] < 1][:count]
    if len(order) == 0:
        return []
    cells = [_labelled(overlay(images[i], truth[i], pred[i]), f"{ids[i]} {scores[i]:.2f}") for i in order]
    cells += [np.full_like(cells[0], 255)] * (-len(cells) % per_row)
    rows = [np.hstack(cells[i : i + per_row]) for i in range(0, len(cells), per_row)]
    ok, png = cv2.imencode(".png", np.vstack(rows))
    assert ok, "OpenCV failed to encode the overlay grid"
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(png.tobytes()))
    return [str(ids[i]) for i in order]


def _labelled(cell: np.ndarray, text: str) -> np.ndarray:
    size = cell.shape[0] * SCALE
    big = cv2.resize(cell, (size, size), interpolation=cv2.INTER_NEAREST)
    label = np.full((22, size, 3), 255, dtype=np.uint8)
    cv2.putText(label, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    border = np.full((22 + size, 4, 3), 255, dtype=np.uint8)
    return np.hstack([np.vstack([big, label]), border])
