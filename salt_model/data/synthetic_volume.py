"""A generated seismic cube with salt bodies and known truth, written as SEG-Y.

The recipe is the tile generator's (salt_model.data.synthetic) in 3D, so a model trained on the synthetic
tiles sees the same textures along any inline or crossline: layered reflectors along gently dipping,
folded surfaces, plus noise; salt as smooth blobs (low-pass noise thresholded, growing with depth)
whose interior is weak chaotic texture with a brighter rim. Amplitudes are raw floats around +-1000
(not 8-bit), so the path's amplitude scaling is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from salt_model.io import atomic_write


def blur3d(volume: np.ndarray, sigma: float | tuple[float, float, float]) -> np.ndarray:
    """Separable Gaussian blur of a 3D float32 array (reflecting borders)."""
    sigmas = (sigma,) * 3 if np.isscalar(sigma) else sigma
    out = np.ascontiguousarray(volume, np.float32)
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        kernel = cv2.getGaussianKernel(2 * int(np.ceil(3 * s)) + 1, s).astype(np.float32)
        moved = np.moveaxis(out, axis, 0)
        flat = np.ascontiguousarray(moved.reshape(moved.shape[0], -1))
        blurred = cv2.sepFilter2D(
            flat, -1, np.ones((1, 1), np.float32), kernel, borderType=cv2.BORDER_REFLECT_101
        )
        out = np.ascontiguousarray(np.moveaxis(blurred.reshape(moved.shape), 0, axis))
    return out


def make_cube(shape: tuple[int, int, int], seed: int = 0, salt_fraction: float = 0.3):
    """(amplitudes float32 (n_il, n_xl, n_samples), truth uint8 {0,1} same shape)."""
    n_il, n_xl, ns = shape
    if min(shape) < 2:
        raise ValueError(f"make_cube: shape {shape}; expected at least 2 along every axis")
    rng = np.random.default_rng(seed)
    il, xl, z = np.meshgrid(
        np.arange(n_il, dtype=np.float32),
        np.arange(n_xl, dtype=np.float32),
        np.arange(ns, dtype=np.float32),
        indexing="ij",
    )
    # sediment: sinusoids of depth along a dipping, folded surface
    depth = z + rng.uniform(-0.2, 0.2) * il + rng.uniform(-0.2, 0.2) * xl
    depth += rng.uniform(2, 8) * np.sin(2 * np.pi * il / rng.uniform(60, 200) + rng.uniform(0, 6))
    depth += rng.uniform(2, 8) * np.sin(2 * np.pi * xl / rng.uniform(60, 200) + rng.uniform(0, 6))
    layers = np.zeros(shape, np.float32)
    for _ in range(rng.integers(3, 5)):
        layers += rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * depth / rng.uniform(4, 18) + rng.uniform(0, 6))
    layers = (layers - layers.mean()) / (layers.std() + 1e-6)
    # salt: smooth blobs, more of them deeper
    field = blur3d(rng.standard_normal(shape).astype(np.float32), (12, 12, 16))
    field = field / (field.std() + 1e-6) + 1.5 * (z / ns - 0.5)
    truth = (field > np.quantile(field, 1 - salt_fraction)).astype(np.uint8)
    soft = blur3d(truth.astype(np.float32), 1.2)
    chaos = blur3d(rng.standard_normal(shape).astype(np.float32), 1.0)
    chaos /= chaos.std() + 1e-6
    interior = 0.15 * layers + 0.8 * chaos
    rim = 4 * soft * (1 - soft)
    raw = (1 - soft) * layers + soft * interior + 1.2 * rim
    raw += 0.2 * rng.standard_normal(shape).astype(np.float32)
    amplitudes = (1000 * (raw - raw.mean()) / (raw.std() + 1e-6)).astype(np.float32)
    return amplitudes, truth


def write_cube_segy(path: Path, amplitudes: np.ndarray, sample_interval_us: int = 4000) -> Path:
    """An inline-sorted IEEE-float SEG-Y (inline/crossline numbers at bytes 189/193, from 1), atomically."""
    import segyio

    def write(tmp: Path) -> None:
        segyio.tools.from_array3D(
            str(tmp), amplitudes, format=segyio.SegySampleFormat.IEEE_FLOAT_4_BYTE, dt=sample_interval_us
        )

    atomic_write(Path(path), write)
    return Path(path)
