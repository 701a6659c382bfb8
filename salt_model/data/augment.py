"""Training and evaluation transforms (albumentations 2.0.8) and fast batch padding.

The recipe follows the common TGS solutions (e.g. the 1st-place write-up,
https://www.kaggle.com/c/tgs-salt-identification-challenge/discussion/69291): horizontal flips only
(seismic has a real up/down), a random crop resized back to 101x101, mild brightness/contrast/gamma,
and padding 101 -> data.pad (128 by default; 112 or 104 cost less) by reflection, so that the
encoder's five 2x downsamplings divide the input.

Image and mask must stay aligned: the crop resizes the image bilinearly and the mask with
INTER_NEAREST_EXACT, whose pixel-centre convention matches INTER_LINEAR (cv2's INTER_NEAREST is
shifted by up to half a source pixel).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from salt_model.config import DataConfig
from salt_model.data import SIZE

_CV2_BORDER = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE}
_NP_MODE = {"reflect": "reflect", "replicate": "edge"}  # numpy 'reflect' == cv2 BORDER_REFLECT_101


def pad_amounts(size: int = SIZE, pad: int = 128) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of a size x size tile to pad x pad, centred like PadIfNeeded."""
    if pad < size:
        raise ValueError(f"pad={pad} is smaller than the tile size {size}; expected pad >= {size}")
    before = (pad - size) // 2
    return before, pad - size - before, before, pad - size - before


def train_transform(cfg: DataConfig, seed: int | None = None) -> A.Compose:
    """Flip, random crop resized back to 101, one intensity change, then pad to cfg.pad.

    seed makes the random draws reproducible (albumentations keeps its own generator, not numpy's).
    """
    intensity = A.OneOf(
        [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.2, p=1.0),
            A.RandomGamma(gamma_limit=(80, 120), p=1.0),
        ],
        p=cfg.intensity_prob,
    )
    crop = A.RandomSizedCrop(
        min_max_height=(cfg.crop_size, cfg.crop_size),
        size=(SIZE, SIZE),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
        p=cfg.crop_prob,
    )
    return A.Compose([A.HorizontalFlip(p=0.5), crop, intensity, _pad(cfg)], seed=seed)


def eval_transform(cfg: DataConfig) -> A.Compose:
    """Padding only; `pad_batch` does the same on a whole batch at once."""
    return A.Compose([_pad(cfg)])


def pad_batch(images: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """(..., 101, 101) -> (..., cfg.pad, cfg.pad), padded like `eval_transform`; returns a new array."""
    images = np.asarray(images)
    top, bottom, left, right = pad_amounts(images.shape[-1], cfg.pad)
    widths = [(0, 0)] * (images.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(images, widths, mode=_NP_MODE[cfg.pad_mode])


def unpad(array, size: int = SIZE):
    """Crops the centre size x size of the last two axes (numpy arrays or torch tensors); a view."""
    top, _, left, _ = pad_amounts(size, array.shape[-1])
    return array[..., top : top + size, left : left + size]


class SaltDataset(torch.utils.data.Dataset):
    """(image, mask) pairs as uint8 tensors (1, P, P); the training loop makes them float on the device.
    With `weights` (N,), each item also carries its tile's loss weight (pseudo-labelled tiles).

    Augmentation randomness is a pure function of (epoch seed, tile index): before each tile the
    transform's own generator (albumentations keeps one, which torch does not reseed in DataLoader
    workers) is seeded from both. So every worker draws different augmentations, a resumed epoch
    repeats its augmentation exactly, and the tiles are the same with or without worker processes.
    The epoch seed lives in shared memory, so `set_epoch` reaches persistent workers too.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        transform: A.Compose,
        seed: int = 0,
        weights: np.ndarray | None = None,
    ) -> None:
        if images.ndim != 3 or images.shape != masks.shape:
            raise ValueError(
                f"SaltDataset: images {images.shape} and masks {masks.shape} must both be (N, H, W)"
            )
        if weights is not None and np.shape(weights) != (len(images),):
            raise ValueError(f"SaltDataset: {len(images)} tiles but weights of shape {np.shape(weights)}")
        self.images, self.masks, self.transform = images, masks, transform
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self._epoch_seed = torch.tensor([seed], dtype=torch.int64).share_memory_()

    def set_epoch(self, seed: int) -> None:
        """The seed of the coming epoch's augmentations; call it before iterating the DataLoader."""
        self._epoch_seed[0] = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(sample_seed(int(self._epoch_seed[0]), i))
        out = self.transform(image=self.images[i], mask=self.masks[i])
        image = torch.from_numpy(np.ascontiguousarray(out["image"]).reshape(1, *out["image"].shape[:2]))
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]).reshape(1, *out["mask"].shape[:2]))
        if self.weights is not None:  # (image, mask, loss weight) with pseudo-labelled tiles
            return image, mask, self.weights[i]
        return image, mask


def sample_seed(epoch_seed: int, index: int) -> int:
    """A 32-bit seed for one tile of one epoch; distinct (epoch, index) pairs give unrelated streams."""
    return int(np.random.SeedSequence([epoch_seed & 0xFFFFFFFF, int(index)]).generate_state(1)[0])


def loader_worker_init(worker_id: int) -> None:
    """DataLoader worker_init_fn: one OpenCV thread per worker (torch already runs one there)."""
    cv2.setNumThreads(1)


def _pad(cfg: DataConfig) -> A.PadIfNeeded:
    return A.PadIfNeeded(
        min_height=cfg.pad,
        min_width=cfg.pad,
        position="center",
        border_mode=_CV2_BORDER[cfg.pad_mode],
        fill=0,
        fill_mask=0,
        p=1.0,
    )
