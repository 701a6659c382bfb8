"""Inference cost of the ensemble: test images/s against the number of members in one actor.

    python -m bench.members_inference --config configs/cpu.yaml --data ../shared/tgs --tiles 256 \
        --members 1,2,5,10 --out bench/members_inference.json

Times `salt_model.evaluation.inference.ensemble_probs`, the work each Ray Data actor does on its batches (every
member, flip TTA, float32 mean), on real test tiles, with the config's model (weights as initialised:
the cost does not depend on them). One warm-up batch first. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402
from salt_model.config import load_config
from salt_model.data.loading import load_split, resolve_data
from salt_model.device import pick_device
from salt_model.evaluation.inference import ensemble_probs
from salt_model.io import atomic_write_text
from salt_model.model import build_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.members_inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config",
        default="configs/cpu.yaml",
        metavar="FILE",
        help="YAML or JSON config whose model is timed (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        default="../shared/tgs",
        metavar="DIR",
        help="Kaggle-layout folder whose test tiles are predicted, or 'synthetic' (default: %(default)s)",
    )
    parser.add_argument(
        "--tiles", type=int, default=256, metavar="N", help="the first N test tiles (default: %(default)s)"
    )
    parser.add_argument(
        "--members",
        default="1,2,5,10",
        metavar="N,N,...",
        help="member counts to time, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="B",
        help="tiles per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="bench/members_inference.json",
        metavar="FILE",
        help="JSON results file (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    device = pick_device(None)
    test = load_split(resolve_data(args.data, config.data), "test")
    images = test.images[: args.tiles]
    counts = [int(c) for c in args.members.split(",")]
    models = []
    for seed in range(max(counts)):
        torch.manual_seed(seed)
        models.append((build_model(config.model).to(device).eval(), config))
    ensemble_probs(models[:1], images[: args.batch_size], device, args.batch_size)  # warm-up
    rows = []
    for n in counts:
        start = time.perf_counter()
        ensemble_probs(models[:n], images, device, args.batch_size)
        seconds = time.perf_counter() - start
        rows.append({"members": n, "seconds": seconds, "images_per_s": len(images) / seconds})
        print(f"{n:>3} members: {len(images) / seconds:8.1f} img/s ({seconds:.1f}s for {len(images)} tiles)")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    summary = {
        "config": args.config,
        "device": f"{device_name} (torch threads {torch.get_num_threads()})",
        "tiles": len(images),
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(summary, indent=2) + "\n")
    print(f"load average {os.getloadavg()[0]:.2f}; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
