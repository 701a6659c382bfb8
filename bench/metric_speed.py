"""Speed of the competition metric on a full OOF set: 3200 random 101x101 masks, the size of the
labelled TGS data, scored `--repeats` times (after one warm-up); the target is under 0.5 s a call.

    python -m bench.metric_speed --out bench/metric_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402
from salt_model.evaluation.metric import competition_metric  # noqa: E402
from salt_model.io import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metric_speed", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tiles", type=int, default=3200, metavar="N", help="masks per call (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, metavar="R", help="timed calls (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="bench/metric_speed.json", metavar="FILE", help="JSON figures (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    truth = rng.random((args.tiles, 101, 101)) > 0.5
    truth[: args.tiles // 3] = False  # empty tiles, as in the real data
    pred = (rng.random((args.tiles, 101, 101)) > 0.5).astype(np.uint8)
    load_before = os.getloadavg()
    competition_metric(truth, pred)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        competition_metric(truth, pred)
        seconds.append(time.perf_counter() - start)
    summary = {
        "tiles": args.tiles,
        "repeats": args.repeats,
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "target_s": 0.5,
        "cpu": cpu_model(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }
    atomic_write_text(Path(args.out), json.dumps(summary, indent=2) + "\n")
    print(
        f"competition_metric on {args.tiles} tiles: median {summary['median_s']:.3f}s, max {summary['max_s']:.3f}s "
        f"over {args.repeats} calls (target < 0.5s); load {load_before[0]:.2f}; figures in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
