"""On the driver: how many GPUs each fold worker gets when the user does not say, so paid GPUs do not
sit idle.

A fold worker uses at most one GPU, and k folds x R runs at once (R: the search's trials at once, 1
for orchestrator.train) at one GPU each can leave GPUs idle for a whole search: 8 GPUs and 5 folds run
one trial at a time with 3 GPUs idle. Sharing a GPU between folds (Ray's fractional GPUs) packs more
trials: at 0.5 GPU per fold three 5-fold trials busy 7.5 of the 8. The share is the largest of SHARES
that keeps the most GPUs busy, so folds keep a whole GPU unless packing frees idle ones. Pure functions
of the cluster's capacity (orchestrator.capacity), tested in tests/test_packing.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHARES = (1.0, 0.5, 0.25)  # GPUs per fold worker to choose from, largest first


@dataclass(frozen=True)
class GpuPlan:
    runs: int  # k-fold runs at once (trials, or 1 for orchestrator.train)
    folds: int  # fold workers per run
    share: float  # GPUs per fold worker
    total: float  # GPUs the largest possible cluster has (inf: no limit)
    noun: str = "trial"

    @property
    def busy(self) -> float:
        return self.runs * self.folds * self.share

    def line(self) -> str:
        """e.g. "3 trials at once x 5 folds x 0.5 GPU = 7.5 of 8 GPUs busy"."""
        runs = f"{self.runs} {self.noun}{'s' if self.runs != 1 else ''}"
        total = f"{self.total:g}" if math.isfinite(self.total) else "unlimited"
        return (
            f"{runs} at once x {self.folds} folds x {self.share:g} GPU = {self.busy:g} of {total} GPUs busy"
        )


def runs_that_fit(folds: int, share: float, total: float, wanted: int) -> int:
    """k-fold runs at once on `total` GPUs at `share` GPUs per fold, at most `wanted` (0: none fits)."""
    if not math.isfinite(total):
        return wanted
    return min(wanted, math.floor(total / (folds * share) + 1e-9))


def folds_fit_the_node(share: float, node: dict, cpus_per_fold: float) -> bool:
    """Whether a GPU node holds as many folds as its GPUs take at `share`, at `cpus_per_fold` each."""
    per_node = math.floor(float(node.get("GPU", 0)) / share + 1e-9)
    return share <= float(node.get("GPU", 0)) and per_node * cpus_per_fold <= float(node.get("CPU", 0)) + 1e-9


def plan_gpus(
    folds: int,
    wanted: int,
    total: float,
    node: dict,
    cpus_per_fold: float | None = None,
    noun: str = "trial",
    shares: tuple[float, ...] = SHARES,
) -> GpuPlan | None:
    """The largest share in `shares` that keeps the most of `total` GPUs busy with up to `wanted` runs
    of `folds` folds, on GPU nodes shaped like `node` ({"GPU": g, "CPU": c}) at `cpus_per_fold` CPUs
    per fold (None: at least one). None when not even one run fits at the smallest share."""
    best = None
    for share in sorted(shares, reverse=True):
        if not folds_fit_the_node(share, node, cpus_per_fold or 1.0):
            continue
        runs = runs_that_fit(folds, share, total, wanted)
        if runs < 1:
            continue
        plan = GpuPlan(runs, folds, share, total, noun)
        if best is None or plan.busy > best.busy + 1e-9:  # a tie keeps the larger share: faster folds
            best = plan
    return best
