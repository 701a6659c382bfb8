"""Where the out-of-fold predictions win and lose: the numbers behind the run report.

The breakdowns follow the TGS write-ups' error analysis: the metric by salt-coverage class (the
`round(coverage * 10)` classes the folds are stratified on), per-image score buckets, and the
empty-image confusion (an empty truth with any predicted pixel scores 0, a whole image lost). The
threshold curve is the OOF metric against the pixel threshold with the other chosen thresholds held.
"""

from __future__ import annotations

import numpy as np

from salt_model.data.folds import coverage_class
from salt_model.evaluation.metric import image_scores
from salt_model.evaluation.thresholds import PIXEL_GRID, Thresholds, binarize

SCORE_BUCKETS = (
    (0.0, 0.0, "0 (miss)"),
    (0.1, 0.4, "0.1-0.4"),
    (0.5, 0.9, "0.5-0.9"),
    (1.0, 1.0, "1 (exact)"),
)


def threshold_curve(
    probs: np.ndarray, empty: np.ndarray | None, truth: np.ndarray, chosen: Thresholds
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel thresholds, OOF metric at each) with min_area and the empty threshold as chosen."""
    grid = np.asarray(sorted(set(PIXEL_GRID) | {chosen.pixel}))
    scores = [
        float(
            image_scores(
                truth, binarize(probs, empty, Thresholds(float(p), chosen.min_area, chosen.empty))
            ).mean()
        )
        for p in grid
    ]
    return grid, np.asarray(scores)


def coverage_groups(truth: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, (N,) bool selector) of every non-empty coverage group: "empty", "0 (<5%)" (class 0
    mixes empty tiles with tiny salt: split, they fail differently), then "c (lo-hi%)" for c = 1..10."""
    classes = coverage_class(truth)
    empty = ~truth.any(axis=(1, 2))
    groups = [("empty", (classes == 0) & empty), ("0 (<5%)", (classes == 0) & ~empty)]
    groups += [(f"{c} ({c * 10 - 5}-{min(100, c * 10 + 5)}%)", classes == c) for c in range(1, 11)]
    return [(label, sel) for label, sel in groups if sel.any()]


def by_coverage(truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    """Rows: coverage class, tiles, mean OOF score."""
    scores = image_scores(truth, pred)
    return [
        {"class": label, "tiles": int(sel.sum()), "score": float(scores[sel].mean())}
        for label, sel in coverage_groups(truth)
    ]


def emptiness(truth: np.ndarray, pred: np.ndarray) -> dict:
    """How often emptiness is called wrong: salt tiles predicted empty (each scores 0) and empty tiles
    given salt (each scores 0), overall and per coverage class. In each class row `wrong` counts the
    salt tiles predicted empty (the "empty" row: empty tiles given salt) and `rate` is wrong / tiles."""
    t_empty = ~truth.any(axis=(1, 2))
    p_empty = ~pred.any(axis=(1, 2))
    rows = []
    for label, sel in coverage_groups(truth):
        wrong = int((sel & (p_empty if label != "empty" else ~p_empty)).sum())
        rows.append({"class": label, "tiles": int(sel.sum()), "wrong": wrong, "rate": wrong / int(sel.sum())})
    salt, empty = int((~t_empty).sum()), int(t_empty.sum())
    salt_pred_empty, empty_pred_salt = int((~t_empty & p_empty).sum()), int((t_empty & ~p_empty).sum())
    return {
        "salt_tiles": salt,
        "salt_pred_empty": salt_pred_empty,
        "false_empty_rate": salt_pred_empty / max(salt, 1),
        "empty_tiles": empty,
        "empty_pred_salt": empty_pred_salt,
        "false_salt_rate": empty_pred_salt / max(empty, 1),
        "by_coverage": rows,
    }


def by_score_bucket(truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    """Rows: per-image score bucket, tiles, share of tiles, and how many of them have empty truth."""
    scores = np.round(image_scores(truth, pred), 2)
    empty = ~truth.any(axis=(1, 2))
    rows = []
    for low, high, label in SCORE_BUCKETS:
        sel = (scores >= low) & (scores <= high)
        rows.append(
            {
                "bucket": label,
                "tiles": int(sel.sum()),
                "share": float(sel.mean()),
                "empty_truth": int((sel & empty).sum()),
            }
        )
    return rows


def empty_confusion(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Counts of (truth empty?, prediction empty?) over the tiles."""
    t = ~truth.any(axis=(1, 2))
    p = ~pred.any(axis=(1, 2))
    return {
        "empty_pred_empty": int((t & p).sum()),  # right: scores 1
        "empty_pred_salt": int((t & ~p).sum()),  # false positive: scores 0
        "salt_pred_empty": int((~t & p).sum()),  # missed salt: scores 0
        "salt_pred_salt": int((~t & ~p).sum()),  # scored by IoU
    }
