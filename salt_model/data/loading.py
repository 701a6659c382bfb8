"""Loading the TGS Salt Identification Challenge tiles from the competition's file layout.

Layout (https://www.kaggle.com/c/tgs-salt-identification-challenge/data)::

    root/train/images/<id>.png   root/train/masks/<id>.png   root/train.csv (id,rle_mask, optional)
    root/test/images/<id>.png    root/sample_submission.csv (optional)   root/depths.csv (id,z, optional)

Quirks of the real files (../shared/tgs/README.md): images are 8-bit RGB with identical channels,
read as one gray channel; non-empty masks are 16-bit {0, 65535} and empty ones 8-bit zeros, both
binarised with ``> 0``. Anything wrong with the folder raises ``DataError`` saying what and where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from salt_model.config import DataConfig
from salt_model.data import SIZE, synthetic

SPLITS = ("train", "test")
LAYOUT = "root/train/images/<id>.png, root/train/masks/<id>.png and root/test/images/<id>.png"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DataError(ValueError):
    """The data folder does not hold valid competition data; the message says what and where."""


@dataclass
class SaltData:
    """Tiles of one split. ids (N,) str; images uint8 (N, 101, 101); masks uint8 {0,1} or None."""

    ids: np.ndarray
    images: np.ndarray
    masks: np.ndarray | None = None
    depths: np.ndarray | None = None  # float32 (N,), NaN for ids missing from depths.csv

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.images.shape[0] != n or (self.masks is not None and self.masks.shape != self.images.shape):
            raise ValueError(
                f"SaltData: {n} ids but images {self.images.shape}, masks "
                f"{None if self.masks is None else self.masks.shape}; expected (N, H, W) each"
            )
        if self.depths is not None and self.depths.shape != (n,):
            raise ValueError(f"SaltData: {n} ids but depths of shape {self.depths.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | slice | list[int]) -> SaltData:
        """The tiles at `index` (integer indices, a boolean mask or a slice), as copies."""
        if not isinstance(index, slice):
            index = np.asarray(index)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.array(a[index], copy=True)

        return SaltData(take(self.ids), take(self.images), take(self.masks), take(self.depths))

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of salt pixels per tile, (N,) float64."""
        return self._require_masks().mean(axis=(1, 2), dtype=np.float64)

    @property
    def empty(self) -> np.ndarray:
        """True where the mask has no salt pixel, (N,) bool."""
        return ~self._require_masks().reshape(len(self), -1).any(axis=1)

    def _require_masks(self) -> np.ndarray:
        if self.masks is None:
            raise ValueError("SaltData has no masks (a test split); coverage/empty need labelled tiles")
        return self.masks


def load_split(root: str | Path, split: str) -> SaltData:
    """Loads the 'train' (images, masks, depths) or 'test' (images, depths) split under root."""
    if split not in SPLITS:
        raise ValueError(f"load_split: split={split!r}; choose one of {list(SPLITS)}")
    root = Path(root)
    images = _png_files(root, root / split / "images")
    order_csv = root / ("train.csv" if split == "train" else "sample_submission.csv")
    if order_csv.is_file():
        listed = _csv_ids(order_csv)
        _check_subset(listed, images, f"{order_csv} lists", f"with no image in {root / split / 'images'}")
        # sample_submission.csv defines the test ids and their order; train keeps every image.
        ids = listed if split == "test" else sorted(images)
    else:
        ids = sorted(images)
    masks = None
    if split == "train":
        mask_files = _png_files(root, root / "train" / "masks")
        _check_subset(list(images), mask_files, "images", f"without a mask in {root / 'train' / 'masks'}")
        _check_subset(list(mask_files), images, "masks", f"without an image in {root / 'train' / 'images'}")
        masks = np.stack(_read_all(_read_mask, [mask_files[i] for i in ids]))
    image_array = np.stack(_read_all(_read_image, [images[i] for i in ids]))
    return SaltData(np.array(ids, dtype=str), image_array, masks, _depths(root, ids))


def has_test(root: str | Path) -> bool:
    """True when root/test/images holds at least one PNG tile."""
    folder = Path(root) / "test" / "images"
    return folder.is_dir() and any(folder.glob("*.png"))


def resolve_data(spec: str, data_cfg: DataConfig, cache_dir: str | Path | None = None) -> Path:
    """'synthetic' -> a cached generated folder (made once, atomically); anything else -> that folder.

    The synthetic folder is named from (generator version, seed, n_train, n_test) and generated into a
    temporary folder beside it, then renamed into place; when a concurrent process wins the rename,
    its (identical) folder is used and ours is deleted.
    """
    if spec != "synthetic":
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise DataError(
                f"data folder {path}: not found (or not a directory); expected 'synthetic' "
                f"or a folder in the competition layout: {LAYOUT}"
            )
        return path
    cache = Path(cache_dir or Path.home() / ".cache" / "salt-orchestrator").expanduser()
    name = (
        f"synthetic-v{synthetic.GENERATOR_VERSION}-seed{data_cfg.synthetic_seed}"
        f"-train{data_cfg.synthetic_train}-test{data_cfg.synthetic_test}"
    )
    target = cache / name
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    try:
        synthetic.generate(tmp, data_cfg.synthetic_train, data_cfg.synthetic_test, data_cfg.synthetic_seed)
        os.rename(tmp, target)  # atomic; fails if another process already renamed its copy there
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _png_files(root: Path, folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; expected the competition layout under {root}: {LAYOUT}")
    files = {p.stem: p for p in sorted(folder.glob("*.png"))}
    if not files:
        raise DataError(f"{folder}: no .png tiles found; expected {LAYOUT}")
    return files


def _check_subset(ids: list[str], available: dict[str, Path], what: str, problem: str) -> None:
    missing = [i for i in ids if i not in available]
    if missing:
        raise DataError(f"{what} {len(missing)} id(s) {problem}: {_few(missing)}")


def _few(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _csv_ids(path: Path) -> list[str]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    if "id" not in frame.columns:
        raise DataError(f"{path}: no 'id' column; columns are {list(frame.columns)}")
    ids = frame["id"].tolist()
    dupes = sorted(set(frame["id"][frame["id"].duplicated()]))
    if dupes:
        raise DataError(f"{path}: {len(dupes)} duplicated id(s): {_few(dupes)}")
    return ids


def _depths(root: Path, ids: list[str]) -> np.ndarray | None:
    path = root / "depths.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"id": str})
        z = frame.set_index("id")["z"].astype(np.float32)
    except (ValueError, KeyError, OSError) as err:
        raise DataError(f"{path}: expected columns id,z with numeric z ({err!r})") from None
    z = z[~z.index.duplicated()]
    return z.reindex(ids).to_numpy(np.float32)


def _read_all(reader, paths: list[Path]) -> list[np.ndarray]:
    # cv2 releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(reader, paths, chunksize=64))


def _read_png(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data[:8].tobytes() == _PNG_MAGIC else None
    if array is None:
        raise DataError(f"{path}: not a readable PNG file")
    if array.shape[:2] != (SIZE, SIZE):
        raise DataError(f"{path}: tile of shape {array.shape}; expected {SIZE}x{SIZE}")
    if array.ndim == 3:
        channels = array[..., :3]  # BGR(A) -> BGR; alpha is ignored
        if channels.shape[2] == 1 or (channels == channels[..., :1]).all():
            array = channels[..., 0]
        else:
            array = cv2.cvtColor(np.ascontiguousarray(channels), cv2.COLOR_BGR2GRAY)
    return array


def _read_image(path: Path) -> np.ndarray:
    image = _read_png(path)
    if image.dtype == np.uint16:  # not in the competition data, but scale rather than truncate
        image = np.rint(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: pixel type {image.dtype}; expected 8- or 16-bit")
    return image


def _read_mask(path: Path) -> np.ndarray:
    mask = _read_png(path)
    positive = mask[mask > 0]
    if positive.size and positive.min() != positive.max():
        seen = np.unique(mask)
        raise DataError(
            f"{path}: mask is not binary; values seen {seen[:8].tolist()}"
            f"{' ...' if seen.size > 8 else ''}; expected 0 and one positive value"
        )
    return (mask > 0).astype(np.uint8)
