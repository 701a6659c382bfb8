import cv2
import numpy as np
import pytest
import torch

from salt_model.config import DataConfig
from salt_model.data.augment import (
    SaltDataset,
    eval_transform,
    pad_amounts,
    pad_batch,
    train_transform,
    unpad,
)

LOW, HIGH = 40, 200


def _marker(seed=0):
    """A blocky random pattern: image is LOW/HIGH, mask == (image > mid)."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((13, 13)) > 0.5
    mask = cv2.resize(blocks.astype(np.uint8), (101, 101), interpolation=cv2.INTER_NEAREST)
    return np.where(mask == 1, HIGH, LOW).astype(np.uint8), mask


def test_pad_amounts_match_albumentations():
    assert pad_amounts(101, 128) == (13, 14, 13, 14)
    out = eval_transform(DataConfig(pad_mode="replicate"))(
        image=np.arange(101 * 101, dtype=np.uint8).reshape(101, 101)
    )
    top, _, left, _ = pad_amounts(101, 128)
    np.testing.assert_array_equal(
        out["image"][top : top + 101, left : left + 101],
        np.arange(101 * 101, dtype=np.uint8).reshape(101, 101),
    )
    with pytest.raises(ValueError, match="pad=100"):
        pad_amounts(101, 100)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("pad", [128, 160])
def test_pad_batch_equals_eval_transform(mode, pad):
    cfg = DataConfig(pad=pad, pad_mode=mode)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 101, 101), dtype=np.uint8)
    before = images.copy()
    batch = pad_batch(images, cfg)
    assert batch.shape == (3, pad, pad)
    for image, padded in zip(images, batch, strict=True):
        np.testing.assert_array_equal(eval_transform(cfg)(image=image)["image"], padded)
    np.testing.assert_array_equal(unpad(batch), images)
    np.testing.assert_array_equal(images, before)


def test_unpad_works_on_tensors():
    x = torch.arange(2 * 128 * 128).reshape(2, 1, 128, 128)
    assert unpad(x).shape == (2, 1, 101, 101)
    assert unpad(x)[0, 0, 0, 0] == 13 * 128 + 13


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_train_transform_keeps_image_and_mask_aligned(mode):
    cfg = DataConfig(pad_mode=mode, crop_prob=1.0, crop_size=70, intensity_prob=0.0)
    image, mask = _marker()
    changed = 0
    for seed in range(12):
        out = train_transform(cfg, seed=seed)(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        assert img.shape == msk.shape == (128, 128) and msk.dtype == np.uint8
        # Bilinear image vs nearest-exact mask: wherever the image is clearly LOW or HIGH (not a
        # blend), its nearest source pixel has the same label, so mask == (image > mid) there.
        span = HIGH - LOW
        clear = (img <= LOW + span // 4) | (img >= HIGH - span // 4)
        assert clear.mean() > 0.8
        np.testing.assert_array_equal(msk[clear], (img[clear] > (LOW + HIGH) // 2).astype(np.uint8))
        changed += not np.array_equal(unpad(img), image)
    assert changed == 12  # every draw crops (crop_prob=1), so no output equals the input


def test_train_transform_intensity_changes_only_image():
    cfg = DataConfig(crop_prob=0.0, intensity_prob=1.0)
    image, mask = _marker(1)
    outs = [train_transform(cfg, seed=s)(image=image, mask=mask) for s in range(6)]
    assert any(not np.isin(o["image"], [LOW, HIGH]).all() for o in outs)
    for o in outs:
        assert set(np.unique(o["mask"])) <= {0, 1}
        flipped = not np.array_equal(unpad(o["mask"]), mask)
        np.testing.assert_array_equal(unpad(o["mask"]), mask[:, ::-1] if flipped else mask)


def test_dataset_returns_uint8_tensors():
    image, mask = _marker()
    ds = SaltDataset(np.stack([image, image]), np.stack([mask, mask]), eval_transform(DataConfig()))
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == y.shape == (1, 128, 128) and x.dtype == y.dtype == torch.uint8
    np.testing.assert_array_equal(unpad(y[0]).numpy(), mask)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 1, 128, 128)
    with pytest.raises(ValueError, match="must both be"):
        SaltDataset(np.stack([image]), mask, eval_transform(DataConfig()))


def _worker_batches(ds, epochs, workers=2):
    """The batches of each epoch through persistent workers, shuffle off: batch b comes from worker b % 2."""
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0
    )
    out = []
    for seed in epochs:
        if seed is not None:
            ds.set_epoch(seed)
        out.append([x.clone() for x, _ in loader])
    return out


def test_loader_workers_draw_different_augmentations_reproducibly():
    """Every tile is the same image: only the augmentation makes two batches differ."""
    image, mask = _marker()
    n = 16
    cfg = DataConfig(crop_prob=1.0, intensity_prob=1.0)
    ds = SaltDataset(np.stack([image] * n), np.stack([mask] * n), train_transform(cfg))
    (first,) = _worker_batches(ds, [None])
    assert not torch.equal(first[0], first[1]), "worker 0's first batch equals worker 1's"

    ds = SaltDataset(np.stack([image] * n), np.stack([mask] * n), train_transform(cfg))
    epoch7, epoch8, epoch7_again = _worker_batches(ds, [7, 8, 7])
    assert not torch.equal(epoch7[0], epoch7[1])
    assert not any(torch.equal(a, b) for a, b in zip(epoch7, epoch8, strict=True)), "epochs repeat"
    for a, b in zip(epoch7, epoch7_again, strict=True):  # a resumed epoch repeats its augmentation
        assert torch.equal(a, b)
    # the same epoch seed gives the same tiles with or without worker processes
    (in_process,) = _worker_batches(ds, [7], workers=0)
    assert all(torch.equal(a, b) for a, b in zip(epoch7, in_process, strict=True))
