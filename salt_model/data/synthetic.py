"""A synthetic stand-in for the TGS salt data, written in the competition's own file layout.

It mimics what the real tiles look like (see ../shared/tgs/README.md and the competition data page,
https://www.kaggle.com/c/tgs-salt-identification-challenge/data) so that the real loader path and a
real model both get exercised:
- sediment: sub-horizontal reflectors, a sum of sinusoids of depth measured along gently dipping and
  folded layer boundaries, plus noise;
- salt: smooth blobs (thresholded low-pass-filtered noise with a random vertical trend, often touching
  the tile edge) whose interior is weak, chaotic texture with the reflectors suppressed, and a
  brighter rim at the boundary. Mean intensity is about the same inside and outside, so the salt is
  told apart by texture, not by brightness alone;
- about 39% empty masks (2% of all tiles are a single flat value, with an empty mask), and a
  coverage spread with many small, many large and some nearly full masks (never completely full);
- 8-bit RGB images with identical channels, 16-bit {0, 65535} non-empty masks and 8-bit all-zero
  empty masks, 10-hex-character ids, train.csv (RLE), depths.csv and sample_submission.csv.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from salt_model.data import SIZE
from salt_model.data.rle import rle_encode
from salt_model.io import atomic_write, atomic_write_text

GENERATOR_VERSION = 1  # bump whenever the output for a given seed changes (cached folders use it)
EMPTY_FRACTION = 0.39
FLAT_FRACTION = 0.02
_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def generate(out_dir: str | Path, n_train: int, n_test: int, seed: int) -> Path:
    """Writes n_train labelled and n_test unlabelled tiles under out_dir; deterministic for seed."""
    if n_train < 1 or n_test < 0:
        raise ValueError(f"generate: n_train={n_train} must be >= 1 and n_test={n_test} >= 0")
    out = Path(out_dir)
    for sub in ("train/images", "train/masks", "test/images"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _unique_ids(rng, n_train + n_test)
    kinds = np.concatenate([_tile_kinds(rng, n_train), _tile_kinds(rng, n_test)])
    tile_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(ids))]

    rle_rows, sub_rows = ["id,rle_mask"], ["id,rle_mask"]
    for i, (tile_id, kind, tile_rng) in enumerate(zip(ids, kinds, tile_rngs, strict=True)):
        image, mask = make_tile(tile_rng, kind)
        split = "train" if i < n_train else "test"
        _write_png(out / split / "images" / f"{tile_id}.png", cv2.merge([image, image, image]))
        if split == "train":
            # Like the real data: non-empty masks 16-bit {0, 65535}, empty ones 8-bit zeros.
            stored = mask.astype(np.uint16) * 65535 if mask.any() else mask
            _write_png(out / "train" / "masks" / f"{tile_id}.png", stored)
            rle_rows.append(f"{tile_id},{rle_encode(mask)}")
        else:
            sub_rows.append(f"{tile_id},")
    depths = rng.integers(50, 960, size=len(ids))
    atomic_write_text(out / "train.csv", "\n".join(rle_rows) + "\n")
    atomic_write_text(out / "sample_submission.csv", "\n".join(sub_rows) + "\n")
    atomic_write_text(
        out / "depths.csv", "id,z\n" + "".join(f"{i},{z}\n" for i, z in zip(ids, depths, strict=True))
    )
    return out


def make_tile(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (101, 101), mask uint8 {0,1} (101, 101)); kind is 'flat', 'empty' or 'salt'."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if kind == "flat":
        return np.full((SIZE, SIZE), rng.integers(60, 200), np.uint8), mask
    sediment = _sediment(rng)  # (H, W), zero mean, unit std
    if kind == "salt":
        mask = _salt_mask(rng, _sample_coverage(rng))
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.2)  # 0..1 transition band
        chaos = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), 1.0)
        interior = rng.uniform(0.1, 0.25) * sediment + rng.uniform(0.6, 1.0) * chaos
        rim = 4 * soft * (1 - soft)  # peaks on the boundary
        sediment = (1 - soft) * sediment + soft * interior + rng.uniform(0.8, 1.6) * rim
    noise = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    raw = sediment + rng.uniform(0.1, 0.3) * noise
    image = rng.normal(120, 12) + rng.uniform(20, 36) * (raw - raw.mean()) / (raw.std() + 1e-6)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _sediment(rng: np.random.Generator) -> np.ndarray:
    """Layered reflectors: sinusoids of depth along gently dipping, folded layer boundaries."""
    dip = rng.uniform(-0.25, 0.25)
    fold = rng.uniform(0, 8) * np.sin(2 * np.pi * _X / rng.uniform(60, 250) + rng.uniform(0, 2 * np.pi))
    # folding that grows with depth, so layers are not all parallel
    fold2 = (
        rng.uniform(0, 4) * (_Y / SIZE) * np.sin(2 * np.pi * _X / rng.uniform(40, 120) + rng.uniform(0, 6))
    )
    depth = _Y + dip * _X + fold + fold2
    n_waves = rng.integers(2, 5)
    wavelengths = rng.uniform(4, 18, n_waves)
    amps = rng.uniform(0.4, 1.0, n_waves)
    phases = rng.uniform(0, 2 * np.pi, n_waves)
    layers = sum(
        a * np.sin(2 * np.pi * depth / w + p) for a, w, p in zip(amps, wavelengths, phases, strict=True)
    )
    layers = layers * (1 + 0.3 * np.sin(2 * np.pi * _X / rng.uniform(30, 90) + rng.uniform(0, 6)))
    return ((layers - layers.mean()) / (layers.std() + 1e-6)).astype(np.float32)


def _salt_mask(rng: np.random.Generator, coverage: float) -> np.ndarray:
    """A smooth blob covering `coverage` of the tile: thresholded low-pass noise plus a trend."""
    sigma = rng.uniform(8, 20)
    field = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), sigma)
    field = field / (field.std() + 1e-6)
    angle = rng.uniform(0, 2 * np.pi)  # salt often enters from one side (mostly from below)
    trend = (np.cos(angle) * (_X - 50) + (np.sin(angle) + 0.8) * (_Y - 50)) / 50
    field = field + rng.uniform(0.5, 2.5) * trend
    level = np.quantile(field, 1 - coverage)
    return (field > level).astype(np.uint8)


def _sample_coverage(rng: np.random.Generator) -> float:
    """Coverage of a non-empty mask: many small, many large, some nearly full, never 100%."""
    kind = rng.choice(3, p=[0.2, 0.7, 0.1])  # shares close to the real non-empty masks'
    if kind == 0:
        return float(np.exp(rng.uniform(np.log(0.003), np.log(0.05))))  # small, log-uniform
    if kind == 1:
        return float(rng.uniform(0.05, 0.9))
    return float(rng.uniform(0.9, 0.999))


def _tile_kinds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Exactly round(39% n) empty tiles, round(2% n) of them flat, at random positions."""
    n_empty, n_flat = round(EMPTY_FRACTION * n), round(FLAT_FRACTION * n)
    kinds = np.array(["salt"] * n, dtype=object)
    kinds[:n_empty] = "empty"
    kinds[:n_flat] = "flat"
    return rng.permutation(kinds)


def _unique_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids.setdefault(rng.bytes(5).hex(), None)
    return list(ids)


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - cv2 encodes any uint8/uint16 array
        raise OSError(f"could not encode {path}")
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.tobytes()))
