"""Kaggle run-length encoding of 101x101 salt masks.

Format from the TGS Salt Identification Challenge data page
(https://www.kaggle.com/c/tgs-salt-identification-challenge/data): space-separated pairs
``start length``; pixels are numbered from 1, top to bottom and then left to right, i.e. the mask is
flattened in column-major (Fortran) order. An empty mask encodes as the empty string.
"""

from __future__ import annotations

import numpy as np

SHAPE = (101, 101)


def rle_encode(mask: np.ndarray) -> str:
    """Encodes a 2-D mask (bool or 0/1 ints; any non-zero is salt) as a Kaggle RLE string."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode: expected a 2-D (H, W) mask, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])  # column-major
    edges = np.flatnonzero(pixels[1:] != pixels[:-1])  # alternating run starts and ends, 0-indexed
    starts, ends = edges[0::2], edges[1::2]
    runs = np.stack([starts + 1, ends - starts], axis=1).ravel()
    return " ".join(map(str, runs.tolist()))


def rle_decode(rle: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Decodes a Kaggle RLE string into a uint8 {0, 1} mask of `shape`.

    Raises ValueError naming the string when it is malformed: an odd number of values, values that
    are not integers, a start outside 1..H*W or a run past the last pixel, a length < 1, or runs that
    are unsorted or overlap. Runs that merely touch are accepted.
    """
    if not isinstance(rle, str):
        raise ValueError(f"rle_decode: expected a str, got {type(rle).__name__} {rle!r}")
    height, width = shape
    size = height * width
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(
            f"RLE {_short(rle)}: odd number of values ({len(tokens)}); expected 'start length' pairs"
        )
    try:
        values = np.array([int(tok) for tok in tokens], dtype=np.int64)
    except ValueError:
        raise ValueError(f"RLE {_short(rle)}: contains a value that is not an integer") from None
    starts, lengths = values[0::2], values[1::2]
    ends = starts + lengths - 1  # 1-indexed, inclusive
    problems = [
        (starts < 1, f"start outside 1..{size}"),
        (lengths < 1, "length < 1"),
        (ends > size, f"run past pixel {size} of a {height}x{width} mask"),
    ]
    for bad, what in problems:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"RLE {_short(rle)}: pair {i} ({starts[i]} {lengths[i]}): {what}")
    overlap = starts[1:] <= ends[:-1]
    if overlap.any():
        i = int(np.argmax(overlap)) + 1
        raise ValueError(
            f"RLE {_short(rle)}: pair {i} starts at {starts[i]}, before the previous run "
            f"ends at {ends[i - 1]}; runs must be sorted and must not overlap"
        )
    flat = np.zeros(size + 1, dtype=np.int32)
    np.add.at(flat, starts - 1, 1)
    np.add.at(flat, ends, -1)
    return np.cumsum(flat[:-1]).astype(np.uint8).reshape(shape, order="F")


def _short(rle: str, limit: int = 80) -> str:
    return repr(rle if len(rle) <= limit else rle[:limit] + "...")
