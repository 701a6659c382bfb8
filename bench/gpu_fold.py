"""One fold of the GPU run (bench/gpu_run.py): `python -m salt_model.train` with cuDNN autotuning on.

    python -m bench.gpu_fold [salt_model.train arguments]

The tiles are all 128x128 and the batch fixed, so cuDNN's benchmark mode picks each convolution's
fastest algorithm once and keeps it; salt_model leaves the flag at torch's default (off).
"""

from __future__ import annotations

import torch

from salt_model.cli import run_cli
from salt_model.train import main

if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    run_cli(main)
