"""Where fold workers run: a bounded wait for their placement, and node preemptions.

Runs in the Ray Train controller (`PlacementWatch`) and in the process that calls `fit()`.

Placement: Ray Train waits `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (default 60 s) for the fold
workers' placement group, then raises WorkerGroupStartupTimeoutError, which its default failure
policy counts against `FailureConfig.controller_failure_limit` (default -1: retried for ever,
train/v2/_internal/execution/failure_handling/default.py). A request that passes the capacity check
(orchestrator/capacity.py) and still never fits (a custom resource no node has, nodes held by other
work, an autoscaler that cannot launch) then waits silently for ever. `start_attempts` splits
--placement-timeout into attempts of at most 60 s; `PlacementWatch` prints one line per failed attempt
(the request, what is free, what the autoscaler says) and the run ends with `PlacementFailed`.

Preemption: Ray Train v2 watches Ray's drain state (PreemptionCallback polls the GCS's draining nodes);
a worker on a node drained with reason PREEMPTION (`ray drain-node`, the autoscaler, a SIGTERM to
`ray start --block`) moves the controller to PreemptingState until the drain deadline, and the restart
is charged to `FailureConfig.max_preemption_failures`, not `max_failures` (as is a worker whose
RayActorError says `preempted`). --max-preemptions sets that budget; `PlacementWatch` prints the line.
"""

from __future__ import annotations

import json
import math
import os
import time

import ray
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import (
    ErroredState,
    ReschedulingState,
    RestartingState,
    RunningState,
)
from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure
from ray.train.v2.api.exceptions import ControllerError, PreemptionError, TrainingFailedError

from orchestrator import console

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Ray Train's worker group
DEFAULT_PLACEMENT_TIMEOUT_S = 900.0  # an autoscaler launching GPU nodes takes minutes
MIN_PLACEMENT_TIMEOUT_S = 10.0  # placing a worker group that fits takes seconds too


class PlacementFailed(ValueError):
    """The fold workers could not run: not placed within --placement-timeout (str() names what was
    pending), or their nodes preempted more than --max-preemptions times."""


def check_placement_timeout(timeout_s: float) -> None:
    if not timeout_s >= MIN_PLACEMENT_TIMEOUT_S:
        raise ValueError(
            f"--placement-timeout={timeout_s}: expected at least {MIN_PLACEMENT_TIMEOUT_S:g} seconds"
        )


def start_attempts(timeout_s: float) -> tuple[float, int]:
    """(seconds per worker-group start attempt, retries after the first) so that the attempts add up
    to `timeout_s`: at most 60 s each (Ray's default) and at least two, so a retry line shows."""
    check_placement_timeout(timeout_s)
    attempt = min(60.0, timeout_s / 2)
    return attempt, math.ceil(timeout_s / attempt - 1e-9) - 1


def bound_placement(timeout_s: float) -> int:
    """Sets the per-attempt start timeout for the Train controller (Ray propagates this variable from
    the process that calls fit()); returns the FailureConfig.controller_failure_limit to use."""
    attempt, retries = start_attempts(timeout_s)
    os.environ[START_TIMEOUT_ENV] = f"{attempt:g}"
    return retries


def is_start_timeout(error: BaseException | None) -> bool:
    return isinstance(error, ControllerError) and isinstance(
        error.controller_failure, WorkerGroupStartupTimeoutError
    )


def pending_report(workers: int, resources: dict) -> str:
    """The request that waits, what the cluster has free, and what the autoscaler reports.

    Free resources: `ray.available_resources()` (public; the whole cluster, not per node). The
    autoscaler: Ray's `get_cluster_status` (ray.autoscaler.v2.sdk, what `ray status` reads under
    autoscaler v2; its launch lists stay empty under v1) and autoscaler v1's own report, the JSON
    `ray status` prints from the GCS key DEBUG_AUTOSCALING_STATUS (internal_kv, private: Ray has no
    public call for it). No report at all: a fixed cluster or a local Ray, where nothing is added.
    """
    free = {k: round(v, 3) for k, v in ray.available_resources().items() if not _internal(k)}
    return (
        f"pending {workers} fold workers x {_short(resources)}; free now: {_short(free) or 'nothing'}; "
        f"autoscaler: {autoscaler_report()}"
    )


def autoscaler_report() -> str:
    parts = []
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        parts += [f"launching {r.count} x {r.ray_node_type_name}" for r in status.pending_launches]
        parts += [f"starting {n.ray_node_type_name} {n.ip_address}" for n in status.pending_nodes]
        parts += [
            f"launch failed: {r.count} x {r.ray_node_type_name} ({r.details})" for r in status.failed_launches
        ]
    except Exception as error:  # noqa: BLE001 (a report must never fail the run)
        parts.append(f"no cluster status ({console.cause(error)})")
    v1 = _autoscaler_v1_report()
    if v1 is not None:
        parts += [f"launching {n} x {t}" for t, n in (v1.get("pending_launches") or {}).items()]
        parts += [f"starting {t} {ip} ({s})" for ip, t, s in v1.get("pending_nodes") or []]
        parts += [f"failed node {t} {ip}" for ip, t in v1.get("failed_nodes") or []]
    elif not parts:
        return "no autoscaler report (a fixed cluster: no node will be added)"
    return "; ".join(parts) or "no pending or failed launches"


def _autoscaler_v1_report() -> dict | None:
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return json.loads(raw).get("autoscaler_report") if raw else None
    except Exception:  # noqa: BLE001
        return None


def _internal(key: str) -> bool:
    return key.startswith("node:") or key in ("memory", "object_store_memory") or "_group_" in key


def _short(resources: dict) -> str:
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items()))


class PlacementWatch(ControllerCallback):
    """In the Train controller: one console line per failed placement attempt and per preemption."""

    def __init__(self, workers: int, resources: dict, retries: int, max_preemptions: int):
        self.workers, self.resources = workers, resources
        self.retries, self.max_preemptions = retries, max_preemptions
        self.failed_starts = self.preemptions = 0  # over the run, as Ray's failure policy counts them
        self.waiting_since: float | None = None

    def before_controller_execute_resize_decision(self, resize_decision):
        self.workers = resize_decision.num_workers
        self.resources = dict(resize_decision.resources_per_worker)
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()

    def after_controller_state_update(self, previous_state, current_state):
        if isinstance(current_state, RunningState):
            self.waiting_since = None  # placed
            return
        error = getattr(current_state, "training_failed_error", None)
        if is_start_timeout(error) and isinstance(current_state, (ReschedulingState, ErroredState)):
            self.failed_starts += 1
            waited = time.monotonic() - (self.waiting_since or time.monotonic())
            then = "retrying" if isinstance(current_state, ReschedulingState) else "giving up"
            console.worker_say(
                f"fold workers not placed after {waited:.0f}s (attempt {self.failed_starts} of "
                f"{self.retries + 1}, {then}): {pending_report(self.workers, self.resources)}"
            )
        elif (
            isinstance(error, TrainingFailedError)
            and _is_preemption_failure(error)
            and isinstance(current_state, RestartingState)
        ):
            self.preemptions += 1
            budget = "unlimited" if self.max_preemptions < 0 else str(self.max_preemptions)
            where = ""
            if isinstance(error, PreemptionError):
                info = error.preemption_info
                where = (
                    f" ({', '.join(n[:8] for n in info.preempted_node_ids)}: folds {info.preempted_ranks})"
                )
            console.worker_say(
                f"node preempted{where}; restarting the folds from the last checkpoint "
                f"(preemption {self.preemptions} of {budget}, not counted in --max-failures)"
            )


def fit_placed(trainer, workers: int, resources: dict, timeout_s: float):
    """trainer.fit(); a run whose fold workers were never placed, or whose nodes were preempted more
    than --max-preemptions times, ends with `PlacementFailed` (one `error:` line, exit 2); an
    interrupted one with KeyboardInterrupt."""
    try:
        return trainer.fit()
    except SystemExit as stop:
        # Ctrl-C (or SIGTERM) during fit(): Ray Train's own SIGINT handler aborts the run's controller,
        # and the interrupted ray.get raises SystemExit(1) (measured; ray/_raylet.pyx
        # raise_sys_exit_with_custom_error_message). As an interrupt it gets the resume hint and exit
        # code 130, and a tracked run's MLflow runs end KILLED.
        raise KeyboardInterrupt from stop
    except PreemptionError as error:  # more preemptions than --max-preemptions
        info = error.preemption_info
        raise PlacementFailed(
            f"nodes were preempted more often than --max-preemptions allows (the last: "
            f"{', '.join(n[:8] for n in info.preempted_node_ids)}, folds {info.preempted_ranks}); "
            "the checkpoints are kept: run the same command again to resume"
        ) from None
    except ControllerError as error:
        if not is_start_timeout(error):
            raise
        raise PlacementFailed(
            f"the fold workers were not placed within --placement-timeout {timeout_s:g}s: "
            f"{pending_report(workers, resources)}. Free those resources, let the cluster grow "
            "(cluster.yaml max_workers), or ask for less (--cpus-per-fold, --gpus-per-fold)"
        ) from None
