"""Stratified k-fold split by salt coverage class.

Stratifying the folds on round(coverage * 10) (11 classes, empty masks in class 0) is what most top
TGS solutions did (e.g. the 1st-place write-up, https://www.kaggle.com/c/tgs-salt-identification-
challenge/discussion/69291), so every fold sees the same mix of empty, small and large masks.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from salt_model.data.loading import DataError
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
    classes = merge_small_classes(classes, k)
    rng = np.random.default_rng(seed)
    folds = np.empty(n, dtype=np.int64)
    offset = 0
    for cls in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == cls))
        folds[members] = (offset + np.arange(len(members))) % k
        offset = (offset + len(members)) % k
    return folds


def merge_small_classes(classes: np.ndarray, k: int) -> np.ndarray:
    """Classes with fewer than k tiles cannot be in every fold: each joins its next (else previous)
    class, with a warning naming both."""
    classes = classes.copy()
    values, counts = np.unique(classes, return_counts=True)
    pending: list[int] = []
    for i, (cls, count) in enumerate(zip(values.tolist(), counts.tolist(), strict=True)):
        size = count + sum(int((classes == p).sum()) for p in pending)
        if size < k and i < len(values) - 1:
            pending.append(cls)
            continue
        for small in pending:
            _warn_merge(small, int((classes == small).sum()), cls, k)
            classes[classes == small] = cls
        pending = []
        if size < k and i == len(values) - 1 and i > 0:  # the last class is small: join the previous
            target = int(classes[classes != cls].max())
            _warn_merge(cls, size, target, k)
            classes[classes == cls] = target
    return classes


def _warn_merge(small: int, count: int, into: int, k: int) -> None:
    warnings.warn(
        f"coverage class {small} has {count} tile(s), fewer than data.folds={k}: "
        f"stratified together with class {into}",
        UserWarning,
        stacklevel=3,
    )


def check_folds_trainable(folds: np.ndarray, k: int, batch_size: int) -> None:
    """Every fold holds out at least one tile and leaves at least one full batch to train on.

    Checked before any training starts: a fold that fails this fails the same way on every retry.
    """
    folds = np.asarray(folds)
    for fold in range(k):
        held_out = int((folds == fold).sum())
        train = len(folds) - held_out
        if held_out == 0:
            raise ValueError(
                f"fold {fold} of data.folds={k} holds out no tile ({len(folds)} tiles); use fewer folds"
            )
        if train < batch_size:
            raise ValueError(
                f"fold {fold} has {train} training tiles, fewer than train.batch_size={batch_size}; "
                "lower the batch size or use more data"
            )


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
