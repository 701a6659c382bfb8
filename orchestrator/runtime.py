"""Connecting to Ray and sizing fold workers to what the cluster can hold.

The measured Ray 2.60 facts behind these choices are in the project notes: keep the dashboard on
(a trial stopped early leaked its placement group without it), use the gloo backend (folds share
no gradients, and NCCL fails on fake GPUs), and take each worker's device from Ray, never `.cuda()`.

Attaching: on a node where `ray start` runs, with `--address auto|HOST:PORT` or `RAY_ADDRESS`, Ray
refuses `num_cpus`/`resources` ("When connecting to an existing cluster, resources must not be
provided"), so those are only passed when a new local Ray starts. Ray turns token auth on by itself
only for an address it finds (none or "auto"), and then even for a cluster without auth; here the
driver asks the cluster (one unauthenticated GCS call) and turns it on only when the cluster refuses
callers without a token, using `~/.ray/auth_token`, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.
The public route, `ray.init` and a retry in token mode on the auth error, does not work in 2.60
(measured against a `ray start --head` in token mode): the first `ray.init` retries the refused GCS
for 20 s and raises ConnectionError, and a second one after setting RAY_AUTH_MODE=token fails the
same way, 20 s later, because a process reads its auth mode once.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass

import ray
import torch

from orchestrator import console
from orchestrator.capacity import Capacity, cluster_capacity
from orchestrator.packing import plan_gpus

log = logging.getLogger(__name__)

# Read by the process that calls fit(): the driver for orchestrator.train, the trial actor for
# orchestrator.tune, which inherits the job's runtime env and not the driver's shell.
JOB_ENV = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
# "1": GPU resources with no CUDA behind them (the tests' fake GPU nodes) train on the CPU. init_ray
# forwards it to every worker of the job.
FAKE_GPUS = "SALT_FAKE_GPUS"


def add_address_arg(parser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="the Ray cluster to attach to, or 'local' for a new local Ray (default: RAY_ADDRESS, else the "
        "cluster `ray start` left on this machine, else a new local Ray)",
    )


def existing_cluster(address: str | None) -> str | None:
    """HOST:PORT of the cluster to attach to: `address`, RAY_ADDRESS, or the one `ray start` left in
    RAY_TMPDIR (/tmp/ray)/ray_current_cluster; None to start a local Ray ("local" forces that)."""
    from ray._private.services import canonicalize_bootstrap_address

    explicit = address or os.environ.get("RAY_ADDRESS") or None
    if explicit == "local":
        return None
    try:
        found = canonicalize_bootstrap_address(explicit)
    except ConnectionError as error:  # "auto" and no cluster on this machine
        raise ValueError(f"--address {explicit}: {error}") from error
    if found and not explicit and not _reachable(found):
        # `ray start` was killed without `ray stop`: ray.init would retry the dead GCS for minutes.
        console.say(f"note: no Ray at {found} (left in ray_current_cluster); starting a local Ray")
        return None
    return found


def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def cluster_wants_token(address: str) -> bool:
    """Whether the cluster's GCS refuses a caller without a token (one unauthenticated request)."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        GcsClient(address=address).internal_kv_get(b"salt-orchestrator-auth-probe", None, timeout=10)
    except AuthenticationError:
        return True
    except Exception:  # unreachable or slow: ray.init reports that itself
        return False
    return False


def use_token_auth_for(address: str) -> None:
    """RAY_AUTH_MODE=token for this process and its children when the cluster needs it and no mode is
    set. Not when it does not: a driver in token mode refuses the cluster's unauthenticated calls."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    if "RAY_AUTH_MODE" in os.environ or not cluster_wants_token(address):
        return
    if not maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
        raise ValueError(
            f"the Ray cluster at {address} uses token authentication and this machine has no token: "
            "copy the cluster's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN)"
        )


def init_ray(address: str | None = None, num_cpus: int | None = None, resources: dict | None = None) -> bool:
    """Attaches to an existing cluster (see `existing_cluster`) or starts a local Ray with the dashboard
    and `num_cpus`/`resources`. Returns True when attached to an existing cluster."""
    if ray.is_initialized():
        return False
    os.environ.update(JOB_ENV)  # the driver: orchestrator.train calls fit() here
    target = existing_cluster(address)
    runtime_env = {"env_vars": {**JOB_ENV, **{k: os.environ[k] for k in (FAKE_GPUS,) if k in os.environ}}}
    if target:
        use_token_auth_for(target)
        context = ray.init(address=target, runtime_env=runtime_env, log_to_driver=True)
        console.say(f"attached to the Ray cluster at {target}")
    else:
        context = ray.init(
            num_cpus=num_cpus,
            resources=resources,
            include_dashboard=True,
            runtime_env=runtime_env,
            dashboard_host="127.0.0.1",  # a local Ray's dashboard is not reachable from the network
            log_to_driver=True,
        )
    console.capture_ray_logs()  # worker lines -> the run folder's logs, our own -> the console
    url = getattr(context, "dashboard_url", None)
    if url:
        console.say(f"Ray dashboard: http://{url}")
    return bool(target)


class CudaUnavailable(ValueError):
    """Ray placed a fold on GPUs but this node's CUDA cannot start: every retry on the node fails the
    same way (faults.DETERMINISTIC), and training on the CPU would burn GPU-hours at CPU speed."""


def cuda_error() -> str:
    """Why CUDA cannot start here, in torch's words (torch.cuda.init raises what is_available hides)."""
    try:
        torch.cuda.init()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "torch.cuda.is_available() is False"


def node_name() -> str:
    """`hostname (IP)` of this node, for messages."""
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"


def worker_device(gpus_per_fold: float = 0.0) -> torch.device:
    """This Ray Train worker's device, as Ray assigned it (ray.train.torch.get_device).

    A worker given GPUs (by Ray, or `gpus_per_fold` > 0) whose CUDA cannot start raises
    CudaUnavailable naming the node and the CUDA error (a torch build without CUDA, a driver too old
    for it), unless SALT_FAKE_GPUS=1 says the GPUs are fake: then it trains on the CPU.
    """
    gpu_ids = ray.get_gpu_ids()
    if (gpu_ids or gpus_per_fold > 0) and not torch.cuda.is_available():
        if os.environ.get(FAKE_GPUS) == "1":
            return torch.device("cpu")
        raise CudaUnavailable(
            f"node {node_name()}: Ray gave this fold worker GPU {gpu_ids or gpus_per_fold} but CUDA cannot "
            f"start ({cuda_error()}; torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
            "install the torch build that matches the node's NVIDIA driver, or run with --gpus-per-fold 0"
        )
    return ray.train.torch.get_device()


@dataclass(frozen=True)
class FoldResources:
    cpus: float  # logical CPUs per fold worker
    gpus: float  # GPUs per fold worker (fractions pack several folds on one GPU)
    threads: int  # torch threads per fold worker

    def as_dict(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus} if self.gpus else {"CPU": self.cpus}


def requested(args, cluster) -> tuple[float | None, float | None]:
    """(GPUs, CPUs) per fold: --gpus-per-fold/--cpus-per-fold, else the config's `cluster:` section,
    else None (sized from the cluster by fold_resources)."""
    gpus = args.gpus_per_fold
    if gpus is None and cluster.gpus_per_fold >= 0:
        gpus = cluster.gpus_per_fold
    cpus = args.cpus_per_fold if args.cpus_per_fold is not None else (cluster.cpus_per_fold or None)
    return gpus, cpus


def check_gpus_per_fold(gpus_per_fold: float) -> None:
    if gpus_per_fold < 0 or (gpus_per_fold > 1 and not float(gpus_per_fold).is_integer()):
        raise ValueError(
            f"--gpus-per-fold={gpus_per_fold}: expected 0, a fraction in (0, 1] or a whole number"
        )


def default_gpus_per_fold(k: int, runs: int, capacity: Capacity, cpus_per_fold: float | None = None) -> float:
    """GPUs per fold when the user does not say: 0 on a cluster that can have no GPU node, else the
    share of orchestrator.packing that keeps the most GPUs busy with up to `runs` k-fold runs at once
    (1 when not even 0.25 fits: fold_resources then names what is missing)."""
    gpu_type = capacity.node_type_with("GPU")
    if gpu_type is None or gpu_type.resources["GPU"] < 1:
        return 0.0
    plan = plan_gpus(k, runs, capacity.max_total("GPU"), gpu_type.resources, cpus_per_fold)
    return plan.share if plan is not None else 1.0


def fold_resources(
    k: int,
    cpus_per_fold: float | None,
    gpus_per_fold: float | None,
    concurrent_runs: int = 1,
    capacity: Capacity | None = None,
    reserved_cpus: float = 0.0,
) -> FoldResources:
    """Resources of one fold worker so that `concurrent_runs` k-fold runs fit the cluster's capacity
    (its possible node types, so an autoscaling cluster is asked for GPU nodes it does not have yet).

    GPUs: --gpus-per-fold, else on a cluster that can have GPUs the share that keeps the most GPUs
    busy with `concurrent_runs` runs (default_gpus_per_fold: 1, 0.5 or 0.25; 0.25 packs four folds on
    a GPU). CPUs: what the user asked; on GPUs the GPU node's CPUs shared among
    its folds (at most 4); on CPUs the cluster's CPUs less `reserved_cpus` (trial drivers) shared
    among all fold workers (at most 4, at least a tenth, so k folds still run at once on a laptop).
    A request the cluster can never hold is an error here, before anything starts (Ray would retry
    the placement group forever).
    """
    capacity = capacity or cluster_capacity()
    workers = k * concurrent_runs
    gpu_type = capacity.node_type_with("GPU")
    if gpus_per_fold is None:
        gpus_per_fold = default_gpus_per_fold(k, concurrent_runs, capacity, cpus_per_fold)
    check_gpus_per_fold(gpus_per_fold)
    where = capacity.describe()
    if gpus_per_fold > 0:
        if gpu_type is None:
            raise ValueError(f"--gpus-per-fold={gpus_per_fold} but the Ray cluster can have no GPUs: {where}")
        if gpus_per_fold > capacity.max_per_node("GPU"):
            raise ValueError(
                f"--gpus-per-fold={gpus_per_fold}: no node has that many GPUs (at most "
                f"{capacity.max_per_node('GPU'):g} per node): {where}"
            )
        if k * gpus_per_fold > capacity.max_total("GPU") + 1e-9:
            raise ValueError(
                f"{k} folds x {gpus_per_fold:g} GPUs need {k * gpus_per_fold:g} GPUs at once but the "
                f"largest possible cluster has {capacity.max_total('GPU'):g}: {where}; use fewer folds, "
                "a fraction such as --gpus-per-fold 0.5, or more GPU workers in cluster.yaml"
            )
    if cpus_per_fold is None:
        if gpus_per_fold > 0:
            node = gpu_type.resources  # type: ignore[union-attr]
            folds_per_node = max(1, math.floor(node["GPU"] / gpus_per_fold))
            cpus_per_fold = float(max(1, min(4, math.floor(node.get("CPU", 1) / folds_per_node))))
        else:
            total = capacity.max_total("CPU") - reserved_cpus
            cpus_per_fold = max(0.1, min(4.0, math.floor(10 * total / workers) / 10))
    if cpus_per_fold <= 0:
        raise ValueError(f"--cpus-per-fold={cpus_per_fold}: expected a positive number")
    if cpus_per_fold > capacity.max_per_node("CPU") + 1e-9:
        raise ValueError(
            f"--cpus-per-fold={cpus_per_fold}: no node has that many CPUs (at most "
            f"{capacity.max_per_node('CPU'):g} per node): {where}"
        )
    if k * cpus_per_fold > capacity.max_total("CPU") - reserved_cpus + 1e-9:
        raise ValueError(
            f"{k} folds x {cpus_per_fold:g} CPUs need {k * cpus_per_fold:g} CPUs at once but the largest "
            f"possible cluster has {capacity.max_total('CPU') - reserved_cpus:g} for fold workers: {where}; "
            "use a smaller --cpus-per-fold or fewer folds"
        )
    return FoldResources(cpus=cpus_per_fold, gpus=gpus_per_fold, threads=max(1, int(cpus_per_fold)))
