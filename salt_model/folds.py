"""Stratified k-fold split by salt coverage class.

Stratifying the folds on round(coverage * 10) (11 classes, empty masks in class 0) is what most top
TGS solutions did (e.g. the 1st-place write-up, https://www.kaggle.com/c/tgs-salt-identification-
challenge/discussion/69291), so every fold sees the same mix of empty, small and large masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from salt_model.data import DataError
from salt_model.io import atomic_write_text


def coverage_class(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) binary masks -> (N,) int class round(coverage * 10) in 0..10."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"coverage_class: expected (N, H, W) masks, got shape {masks.shape}")
    coverage = (masks != 0).mean(axis=(1, 2))
    return np.round(coverage * 10).astype(np.int64)


def make_folds(masks: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in 0..k-1, stratified by coverage class and deterministic for seed.

    Each class's members are shuffled and dealt round-robin, the deal continuing where the previous
    class stopped: per class, fold counts differ by at most one, and so do the fold sizes.
    """
    classes = coverage_class(masks)
    n = len(classes)
    if k < 2 or n < k:
        raise ValueError(f"make_folds: k={k} with {n} samples; expected 2 <= k <= number of samples")
    rng = np.random.default_rng(seed)
    folds = np.empty(n, dtype=np.int64)
    offset = 0
    for cls in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == cls))
        folds[members] = (offset + np.arange(len(members))) % k
        offset = (offset + len(members)) % k
    return folds


def save_folds(path: str | Path, ids: np.ndarray, folds: np.ndarray) -> None:
    """Writes an `id,fold` CSV atomically."""
    ids, folds = np.asarray(ids), np.asarray(folds)
    if ids.shape != folds.shape or ids.ndim != 1:
        raise ValueError(f"save_folds: ids {ids.shape} and folds {folds.shape} must be equal-length 1-D")
    rows = "".join(f"{i},{int(f)}\n" for i, f in zip(ids.tolist(), folds.tolist(), strict=True))
    atomic_write_text(Path(path), "id,fold\n" + rows)


def load_folds(path: str | Path, ids: np.ndarray) -> np.ndarray:
    """Reads an `id,fold` CSV and returns the folds in the order of `ids`; it must hold exactly them."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"folds file {path}: not readable ({err})") from None
    if list(frame.columns) != ["id", "fold"]:
        raise DataError(f"folds file {path}: columns {list(frame.columns)}; expected ['id', 'fold']")
    if not pd.api.types.is_integer_dtype(frame["fold"]) or (frame["fold"] < 0).any():
        raise DataError(f"folds file {path}: 'fold' must hold integers >= 0")
    dupes = frame["id"][frame["id"].duplicated()].tolist()
    if dupes:
        raise DataError(f"folds file {path}: duplicated id(s) {dupes[:5]}")
    wanted = [str(i) for i in np.asarray(ids).tolist()]
    have = set(frame["id"])
    missing = [i for i in wanted if i not in have]
    extra = sorted(have - set(wanted))
    if missing or extra:
        raise DataError(
            f"folds file {path} does not match the data: {len(missing)} id(s) missing "
            f"{missing[:5]}, {len(extra)} unexpected id(s) {extra[:5]}"
        )
    return frame.set_index("id")["fold"].reindex(wanted).to_numpy(np.int64)
