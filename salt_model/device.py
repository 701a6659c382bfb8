"""Where and how a process computes: the torch device, the autocast precision, the CPU thread pools.

Training, inference and the orchestrator's workers all take their device and precision from here, so
training does not import the inference module to find them. `precision` is config.train.precision
(auto | fp32 | bf16 | fp16): on CUDA auto means bf16 where supported, else fp16; on a CPU only an
explicit bf16 autocasts.

Thread pools: torch's intra-op pool and OpenCV's are sized together. A process that shares its cores (a
Ray fold worker holding a fraction of a node) must not run more busy threads than its share: 5 fold
workers of 3 threads each on 2 cores thrash.
"""

from __future__ import annotations

import contextlib

import cv2
import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None: CUDA when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this precision on this device; None means full fp32. On a CPU only an
    explicit bf16 autocasts (the GPU users' precision path, runnable anywhere); auto stays fp32."""
    if precision == "fp32":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if precision == "bf16" else None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on this device type; a no-op context when dtype is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def set_cpu_threads(threads: int) -> None:
    """Sizes torch's intra-op pool and OpenCV's pool to `threads` (0 leaves both as they are)."""
    if threads < 0:
        raise ValueError(f"threads={threads}: expected >= 0 (0 leaves the defaults)")
    if threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
