"""Whole sections through the tile model: amplitude scaling, sliding windows, smooth blending.

A SEG-Y section is (traces, samples); the model was trained on tiles with depth down the rows, so a
section is transposed to (samples, traces) before tiling and back after. Windows of the training tile
size (101) overlap by `stride` (default about half a tile); each window is predicted exactly as the
evaluation predicts a tile (`salt_model.evaluation.inference.ensemble_probs`: padding to cfg.pad, horizontal-flip
TTA, the mean over every fold member), and overlapping windows are blended with smooth weights
normalised by their sum, as in nnU-Net's sliding-window inference (Isensee et al., 2021,
https://www.nature.com/articles/s41592-020-01008-z), so that no window border shows. The empty-mask
head is not used: the output is a probability field, emptiness is not decided per window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from salt_model.data.augment import _NP_MODE, SIZE
from salt_model.device import pick_device
from salt_model.evaluation.inference import ensemble_probs

BLENDS = ("gaussian", "hann")
# The 8-bit tile domain: the synthetic generator's tiles (salt_model.data.synthetic: mean ~120, std 20..36)
# and the Kaggle tiles' grey levels sit about here.
TILE_MEAN, TILE_STD = 120.0, 28.0
ROBUST_SIGMAS = 2.326  # the 1st/99th percentiles of a normal distribution, in standard deviations


@dataclass(frozen=True)
class Scaling:
    """Raw amplitude a -> 8-bit tile value: u = clip(round(tile_mean + tile_std * (a - center) / scale),
    0, 255) with a clipped to [lo, hi]. Inverse (inside the clip): a = center + (u - tile_mean) *
    scale / tile_std."""

    lo: float  # the `percentile`-th percentile of the sampled amplitudes
    hi: float  # the (100 - percentile)-th
    center: float  # their median
    scale: float  # (hi - lo) / (2 * ROBUST_SIGMAS): a robust standard deviation
    percentile: float
    tile_mean: float = TILE_MEAN
    tile_std: float = TILE_STD
    traces_sampled: int = 0

    def apply(self, amplitudes: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(amplitudes, np.float32), self.lo, self.hi)
        u = self.tile_mean + self.tile_std * (a - self.center) / self.scale
        return np.clip(np.rint(u), 0, 255).astype(np.uint8)

    def invert(self, tiles: np.ndarray) -> np.ndarray:
        return self.center + (np.asarray(tiles, np.float32) - self.tile_mean) * self.scale / self.tile_std

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "formula": "u8 = clip(round(tile_mean + tile_std * (clip(a, lo, hi) - center) / scale), 0, 255)",
        }


def fit_scaling(amplitudes: np.ndarray, percentile: float = 1.0) -> Scaling:
    """A robust mapping of raw amplitudes (any shape; live traces only) to the tiles' 8-bit domain."""
    if not 0 <= percentile < 50:
        raise ValueError(f"percentile={percentile}: expected 0 <= percentile < 50")
    a = np.asarray(amplitudes, np.float32).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("amplitude scaling: no finite amplitude in the sampled traces (all dead?)")
    lo, center, hi = (float(v) for v in np.percentile(a, [percentile, 50, 100 - percentile]))
    scale = (hi - lo) / (2 * ROBUST_SIGMAS)
    if not scale > 0:
        scale = max(float(np.abs(a).max()), 1.0)  # a constant section: everything maps to tile_mean
        lo, hi = center - scale, center + scale
    n = amplitudes.shape[0] if np.ndim(amplitudes) == 2 else 1
    return Scaling(lo, hi, center, scale, percentile, traces_sampled=int(n))


def window_starts(length: int, window: int = SIZE, stride: int | None = None) -> list[int]:
    """Start positions covering 0..length with windows of `window`; the last one ends at `length`."""
    stride = default_stride(window) if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(
            f"stride={stride}: expected 1..{window} (the window size) so windows overlap or touch"
        )
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def default_stride(window: int = SIZE) -> int:
    return (window + 1) // 2


def blend_weights(window: int = SIZE, kind: str = "gaussian") -> np.ndarray:
    """(window, window) float32 weights, largest in the centre, never zero (the section's own border
    is covered by one window only). gaussian: sigma = window / 8 as in nnU-Net; hann: a raised cosine."""
    if kind not in BLENDS:
        raise ValueError(f"blend={kind!r}: expected one of {', '.join(BLENDS)}")
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2
    if kind == "gaussian":
        w1 = np.exp(-0.5 * (x / (window / 8)) ** 2)
    else:
        w1 = 0.5 + 0.5 * np.cos(np.pi * x / ((window + 1) / 2))
    w = np.outer(w1, w1)
    w = w / w.max()
    return np.maximum(w, 1e-6).astype(np.float32)


@torch.no_grad()
def predict_section(
    members: list,
    section: np.ndarray,
    scaling: Scaling | None = None,
    stride: int | None = None,
    blend: str = "gaussian",
    device: str | torch.device | None = None,
    batch_size: int = 64,
    live: np.ndarray | None = None,
) -> np.ndarray:
    """One SEG-Y section (traces, samples) -> salt probability (traces, samples) float32, no Ray.

    `members`: (model, config) pairs (salt_model.evaluation.inference.model_from_payload), all averaged.
    `section`: raw amplitudes (scaled with `scaling`, fitted on this section when None) or, when
    uint8, already in the tile domain. `live` (traces,) bool: rows False come back NaN (dead or
    missing traces, read as zeros).
    """
    if not members:
        raise ValueError("predict_section: no ensemble members")
    section = np.asarray(section)
    if section.ndim != 2 or min(section.shape) < 1:
        raise ValueError(f"predict_section: section of shape {section.shape}; expected (traces, samples)")
    if section.dtype != np.uint8:
        section = (scaling or fit_scaling(section)).apply(section)
    image = section.T  # (samples, traces): depth down the rows, as in the tiles
    window = SIZE
    height, width = image.shape
    pad_mode = _NP_MODE[members[0][1].data.pad_mode]
    grow = ((0, max(window - height, 0)), (0, max(window - width, 0)))
    if grow != ((0, 0), (0, 0)):  # a section smaller than a window: mirrored as the tiles are padded
        image = _pad_to(image, grow, pad_mode)
    rows, cols = window_starts(image.shape[0], window, stride), window_starts(image.shape[1], window, stride)
    corners = [(r, c) for r in rows for c in cols]
    windows = np.stack([image[r : r + window, c : c + window] for r, c in corners])  # (n, 101, 101)
    probs, _ = ensemble_probs(members, windows, pick_device(device), batch_size)
    weights = blend_weights(window, blend)
    total = np.zeros(image.shape, np.float64)
    norm = np.zeros(image.shape, np.float64)
    for (r, c), p in zip(corners, probs, strict=True):
        total[r : r + window, c : c + window] += weights * p
        norm[r : r + window, c : c + window] += weights
    out = (total / norm)[:height, :width].T.astype(np.float32)  # back to (traces, samples)
    if live is not None:
        out[~np.asarray(live, bool)] = np.nan
    return out


def _pad_to(image: np.ndarray, widths, mode: str) -> np.ndarray:
    """np.pad that also grows a 1-pixel side (numpy's reflect needs at least 2)."""
    if mode == "reflect" and min(image.shape) < 2:
        mode = "edge"
    return np.pad(image, widths, mode=mode)
