"""Connecting to Ray and sizing fold workers to the cluster it finds.

The measured Ray 2.60 facts behind these choices are in the project notes: keep the dashboard on
(a trial stopped early leaked its placement group without it), use the gloo backend (folds share
no gradients, and NCCL fails on fake GPUs), and take each worker's device from Ray, never `.cuda()`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import ray

from orchestrator import console

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None, resources: dict | None = None) -> None:
    """Connects to `address` (or RAY_ADDRESS) if given, else starts a local Ray with the dashboard."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # Train run state in the dashboard API
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, log_to_driver=True)
    else:
        context = ray.init(
            num_cpus=num_cpus,
            resources=resources,
            include_dashboard=True,
            dashboard_host="127.0.0.1",  # a local Ray's dashboard is not reachable from the network
            log_to_driver=True,
        )
    console.capture_ray_logs()  # worker lines -> the run folder's logs, our own -> the console
    url = getattr(context, "dashboard_url", None)
    if url:
        console.say(f"Ray dashboard: http://{url}")


@dataclass(frozen=True)
class FoldResources:
    cpus: float  # logical CPUs per fold worker
    gpus: float  # GPUs per fold worker (fractions pack several folds on one GPU)
    threads: int  # torch threads per fold worker

    def as_dict(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus} if self.gpus else {"CPU": self.cpus}


def fold_resources(
    k: int, cpus_per_fold: float | None, gpus_per_fold: float | None, concurrent_runs: int = 1
) -> FoldResources:
    """Resources of one fold worker so that `concurrent_runs` k-fold runs fit the cluster.

    GPUs: one per fold when the cluster has GPUs, unless --gpus-per-fold says otherwise (0.25 packs
    four folds on a GPU). CPUs: what the user asked, else the cluster's CPUs shared out among all
    fold workers (at most 4 each, at least a tenth of one, so k folds still run at once on a laptop).
    """
    total = ray.cluster_resources()
    total_cpus, total_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    workers = k * concurrent_runs
    if gpus_per_fold is None:
        gpus_per_fold = 1.0 if total_gpus >= 1 else 0.0
    if gpus_per_fold < 0 or (gpus_per_fold > 1 and not float(gpus_per_fold).is_integer()):
        raise ValueError(
            f"--gpus-per-fold={gpus_per_fold}: expected 0, a fraction in (0, 1] or a whole number"
        )
    if gpus_per_fold > 0 and total_gpus == 0:
        raise ValueError(f"--gpus-per-fold={gpus_per_fold} but the Ray cluster has no GPUs; use 0")
    if cpus_per_fold is None:
        cpus_per_fold = max(0.1, min(4.0, math.floor(10 * total_cpus / workers) / 10))
    if cpus_per_fold <= 0:
        raise ValueError(f"--cpus-per-fold={cpus_per_fold}: expected a positive number")
    needed = workers * cpus_per_fold
    if needed > total_cpus + 1e-9:
        log.warning(
            "%d fold workers x %.2f CPUs exceed the cluster's %.0f CPUs: Ray Train starts a run "
            "only when all k of its workers fit (an autoscaling cluster adds nodes)",
            workers,
            cpus_per_fold,
            total_cpus,
        )
    return FoldResources(cpus=cpus_per_fold, gpus=gpus_per_fold, threads=max(1, int(cpus_per_fold)))
