"""A picture of the out-of-fold predictions: the worst, middling and best tiles at a glance.

Each cell is a tile in gray with the true mask's outline in green and the prediction's in red, and
its competition score written beneath. Rows: the lowest-scoring tiles, a random middle, the best
non-empty ones. Written as PNG with OpenCV (no plotting library needed).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from salt_model.io import atomic_write
from salt_model.metric import image_scores

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
