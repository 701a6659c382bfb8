"""Whole-volume throughput: traces/s of orchestrator.volume on a generated SEG-Y cube, one vs several
actors on the same CPUs, and the driver's peak memory while it streams.

    python -m bench.volume --shape 200,200,400 --actors 1,2 --cpus 2 --out bench/volume.json

Members are the default config's model (random weights: speed does not depend on them); --tiny uses
the test suite's tiny model instead. The driver's RSS is sampled every 20 ms during the run (the cube
is generated and written to SEG-Y before, and freed). `uptime` before and after is recorded: on a
shared machine the figures are only as good as the load allowed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import cpu_model
from salt_model.config import load_config
from salt_model.data.segy import SegyReader, read_geometry
from salt_model.data.synthetic_volume import make_cube, write_cube_segy
from salt_model.evaluation.section_inference import fit_scaling
from salt_model.model import build_model

TINY = ["model.encoder=resnet18", "model.width=0.125"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    def __init__(self, every_s: float = 0.02):
        self.peak, self.every_s, self._stop = rss_mib(), every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shape",
        default="200,200,400",
        metavar="IL,XL,NS",
        help="cube size: inlines, crosslines, samples per trace (default: %(default)s)",
    )
    parser.add_argument(
        "--actors",
        default="1,2",
        metavar="N,N",
        help="actor counts to compare, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--cpus", type=int, default=2, metavar="N", help="CPUs given to the local Ray (default: %(default)s)"
    )
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        metavar="N",
        help="ensemble members, each a randomly initialised model (default: %(default)s)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the tests' tiny model instead of the default config's"
    )
    parser.add_argument(
        "--out", default="bench/volume.json", metavar="FILE", help="JSON results file (default: %(default)s)"
    )
    args = parser.parse_args()

    import ray

    from orchestrator.runtime import init_ray
    from orchestrator.volume import run_volume

    shape = tuple(int(v) for v in args.shape.split(","))
    config = load_config(None, TINY if args.tiny else [])
    payloads = []
    for f in range(args.members):
        torch.manual_seed(f)
        payloads.append(
            {
                "config": config.to_dict(),
                "state_dict": build_model(config.model).state_dict(),
                "fold": f,
                "member": "last",
            }
        )
    work = Path(tempfile.mkdtemp(prefix="bench-volume-"))
    amplitudes, _ = make_cube(shape, seed=0)
    path = write_cube_segy(work / "cube.sgy", amplitudes)
    del amplitudes
    gc.collect()
    geometry = read_geometry(path)
    with SegyReader(geometry) as reader:
        scaling = fit_scaling(reader.sample_traces())
    init_ray(num_cpus=args.cpus)
    results = {
        "command": "python -m bench.volume "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (False, None)),
        "machine": cpu_model(),
        "shape": shape,
        "traces": geometry.n_traces,
        "members": args.members,
        "model": "tiny (resnet18 x 0.125)" if args.tiny else f"default ({config.model.encoder})",
        "uptime_before": uptime(),
        "runs": [],
    }
    print(results["uptime_before"])
    for count in (int(v) for v in args.actors.split(",")):
        out = work / f"out-{count}"
        out.mkdir()
        rss_before = rss_mib()
        with PeakRss() as peak:
            t0 = time.perf_counter()
            summary = run_volume(
                geometry, payloads, scaling, out, ["inline"], (0.0, args.cpus / count, count)
            )
            wall = time.perf_counter() - t0
        run = {
            "actors": count,
            "cpus_each": args.cpus / count,
            "wall_s": round(wall, 2),
            "predict_s": round(summary["timings"]["predict_inline_s"], 2),
            "traces_per_s": round(summary["traces_per_s"], 2),
            "sections_per_s": round(shape[0] / summary["timings"]["predict_inline_s"], 3),
            "driver_rss_before_mib": round(rss_before, 1),
            "driver_rss_peak_mib": round(peak.peak, 1),
            "uptime_after": uptime(),
        }
        results["runs"].append(run)
        print(json.dumps(run))
    results["cube_float32_mib"] = round(np.prod(shape) * 4 / 2**20, 1)
    results["uptime_after"] = uptime()
    ray.shutdown()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
