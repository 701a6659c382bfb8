"""The probability cube on disk: a float32 .npy of shape (n_il, n_xl, n_samples) read and written one
section or trace at a time with pread/pwrite, so a process holding it keeps only a few sections in
memory (a memory map would count every touched page of the cube in the process's RSS)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ProbabilityStore:
    """A C-ordered float32 .npy, filled with NaN (missing or dead traces stay NaN)."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape = Path(path), tuple(int(s) for s in shape)
        header = _npy_header(self.shape)
        self._offset = len(header)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, header, 0)
        n_il, n_xl, ns = self.shape
        nan_inline = np.full(n_xl * ns, np.nan, np.float32).tobytes()
        for i in range(n_il):
            os.pwrite(self._fd, nan_inline, self._offset + i * len(nan_inline))

    def _at(self, i: int, x: int) -> int:
        return self._offset + ((i * self.shape[1]) + x) * self.shape[2] * 4

    def trace(self, i: int, x: int) -> np.ndarray:
        data = os.pread(self._fd, self.shape[2] * 4, self._at(i, x))
        return np.frombuffer(data, np.float32)

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        return self.trace(*key)

    def section(self, direction: str, i: int) -> np.ndarray:
        """(traces, samples) of inline i or crossline i."""
        n_il, n_xl, ns = self.shape
        if direction == "inline":
            return np.frombuffer(os.pread(self._fd, n_xl * ns * 4, self._at(i, 0)), np.float32).reshape(
                n_xl, ns
            )
        return np.stack([self.trace(j, i) for j in range(n_il)])

    def put(self, direction: str, i: int, probs: np.ndarray, average_with_existing: bool = False) -> None:
        """Writes section i (traces, samples); with `average_with_existing` the mean with what is there
        (the second pass of --direction both). NaN rows (not live) stay NaN."""
        probs = np.asarray(probs, np.float32)
        if average_with_existing:
            probs = (self.section(direction, i) + probs) / 2
        if direction == "inline":
            os.pwrite(self._fd, np.ascontiguousarray(probs).tobytes(), self._at(i, 0))
        else:
            for j in range(self.shape[0]):
                os.pwrite(self._fd, probs[j].tobytes(), self._at(j, i))

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header for C-ordered little-endian float32 of `shape` (padded to 64 bytes)."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")
