"""The TGS Salt Identification Challenge metric, vectorised over a batch of masks.

From the competition's evaluation page (https://www.kaggle.com/c/tgs-salt-identification-challenge/
overview/evaluation): each image is scored by its precision TP / (TP + FP + FN) averaged over the IoU
thresholds t = 0.50, 0.55, ..., 0.95, and the leaderboard score is the mean over images. A tile holds
at most one object, so at threshold t an image is a hit (precision 1) when IoU > t and a miss
(precision 0) otherwise. The page says a prediction matches "with an IoU *above* the threshold", and
the public kernels use ``iou > t``: an IoU exactly at a threshold does NOT count at that threshold.

Empty masks: an empty truth scores 1 for an empty prediction and 0 for any predicted pixel (a false
positive); a non-empty truth with an empty prediction scores 0. Defining IoU(empty, empty) = 1.0
makes the same ``mean_t(iou > t)`` formula give these values for every image.
"""

from __future__ import annotations

import numpy as np

# Written as exact decimals so that e.g. an IoU of 11/20 compares equal to the 0.55 threshold.
THRESHOLDS = (50 + 5 * np.arange(10)) / 100


def iou(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-image intersection over union, (N,) float64; both empty -> 1.0."""
    t_bits, p_bits = _packed(truth, "truth"), _packed(pred, "pred")
    if t_bits.shape != p_bits.shape:
        raise ValueError(f"truth shape {np.shape(truth)} != pred shape {np.shape(pred)}")
    inter = np.bitwise_count(t_bits & p_bits).sum(axis=1, dtype=np.int64)
    union = np.bitwise_count(t_bits | p_bits).sum(axis=1, dtype=np.int64)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def image_scores(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-image competition score, (N,): mean over the 10 thresholds of (IoU > t)."""
    return (iou(truth, pred)[:, None] > THRESHOLDS[None, :]).mean(axis=1)


def competition_metric(truth: np.ndarray, pred: np.ndarray) -> float:
    """The leaderboard score: mean of `image_scores`."""
    return float(image_scores(truth, pred).mean())


def mean_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-image IoU (both-empty images count as 1.0)."""
    return float(iou(truth, pred).mean())


def _packed(masks: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) or (H, W) binary masks -> (N, ceil(H*W/8)) uint8 bit-packed rows; never mutates."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"{name}: expected (N, H, W) or (H, W) masks, got shape {masks.shape}")
    if masks.dtype != np.bool_:
        if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
            raise ValueError(f"{name}: expected bool or 0/1 numbers, got dtype {masks.dtype}")
        bad = (masks != 0) & (masks != 1)
        if bad.any():
            raise ValueError(
                f"{name}: masks must be binary (0/1 or bool), found value {masks[bad][0]!r}; "
                "threshold probabilities first (e.g. probs > 0.5)"
            )
        masks = masks != 0
    return np.packbits(masks.reshape(len(masks), -1), axis=1)
