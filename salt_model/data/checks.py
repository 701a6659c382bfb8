"""Checks of a data folder that run before any training: what load_split alone does not catch.

load_split already refuses a missing folder, unreadable or mis-sized PNGs, non-binary masks, images
without masks and CSV ids without images. Here: the test split a run will end on (an empty
test/images, or a sample_submission.csv id with no image, would otherwise surface only after the
whole training budget), train.csv's RLE column (malformed, or disagreeing with the mask PNGs), and
depths.csv ids that match no tile (only informative: a warning).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from salt_model.data.loading import DataError, SaltData, _check_subset, _csv_ids, _few, _png_files
from salt_model.data.rle import rle_decode


class DataWarning(UserWarning):
    """Something odd in the data folder that does not stop a run."""


def check_data_folder(root: str | Path, train: SaltData) -> bool:
    """All checks below for a run on `root` whose train split is `train`; True if it has a test split."""
    root = Path(root)
    check_train_csv(root / "train.csv", train)
    test_ids = check_test_split(root)
    check_depths(root / "depths.csv", set(train.ids.tolist()) | set(test_ids))
    return bool(test_ids)


def check_test_split(root: Path) -> list[str]:
    """The test ids, or [] when the folder has no test split at all.

    A test/images folder, or a sample_submission.csv, says the run should end with a submission: then
    the folder must hold tiles, and every sample_submission id must have one.
    """
    folder = root / "test" / "images"
    sample = root / "sample_submission.csv"
    if not folder.exists() and not sample.is_file():
        return []
    if not folder.is_dir() or not any(folder.glob("*.png")):
        why = f"{sample} lists test ids" if sample.is_file() else f"{folder} exists"
        raise DataError(
            f"{folder}: no .png test tiles, but {why}; put the test tiles there, or remove the "
            "folder (and sample_submission.csv) to train without a submission"
        )
    images = _png_files(root, folder)
    if not sample.is_file():
        return sorted(images)
    listed = _csv_ids(sample)
    _check_subset(listed, images, f"{sample} lists", f"with no image in {folder}")
    return listed


def check_train_csv(path: Path, train: SaltData) -> None:
    """train.csv's rle_mask (when present) must decode and match the mask PNG of every id."""
    if not path.is_file():
        return
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "rle_mask" not in frame.columns:
        return
    index = {i: n for n, i in enumerate(train.ids.tolist())}
    disagree = []
    for row, (tile_id, rle) in enumerate(zip(frame["id"], frame["rle_mask"], strict=True)):
        try:
            mask = rle_decode(rle, train.masks.shape[1:])
        except ValueError as err:
            raise DataError(f"{path}: row {row + 2}, id {tile_id}: malformed rle_mask: {err}") from None
        if tile_id in index and not np.array_equal(mask, train.masks[index[tile_id]]):
            disagree.append(tile_id)
    if disagree:
        raise DataError(
            f"{path}: rle_mask of {len(disagree)} id(s) disagrees with the mask PNG in train/masks: "
            f"{_few(disagree)}; fix or remove the CSV (the PNG masks are what training reads)"
        )


def check_depths(path: Path, ids: set[str]) -> None:
    """depths.csv is only informative: ids that match no tile are a warning, not an error."""
    if not path.is_file():
        return
    frame = pd.read_csv(path, dtype={"id": str})
    if "id" not in frame.columns:
        raise DataError(f"{path}: no 'id' column; columns are {list(frame.columns)}")
    unknown = sorted(set(frame["id"]) - ids)
    if unknown:
        warnings.warn(
            f"{path}: {len(unknown)} id(s) match no train or test tile (ignored): {_few(unknown)}",
            DataWarning,
            stacklevel=2,
        )
