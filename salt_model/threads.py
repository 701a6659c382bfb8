"""CPU thread pools of one process: torch's intra-op pool and OpenCV's, sized together.

A process that shares its cores (a Ray fold worker holding a fraction of a node) must not run more busy
threads than its share: 5 fold workers of 3 threads each on 2 cores thrash (issue 13, defect 8).
"""

from __future__ import annotations

import cv2
import torch


def set_cpu_threads(threads: int) -> None:
    """Sizes torch's intra-op pool and OpenCV's pool to `threads` (0 leaves both as they are)."""
    if threads < 0:
        raise ValueError(f"threads={threads}: expected >= 0 (0 leaves the defaults)")
    if threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
