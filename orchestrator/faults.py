"""Faults in a k-fold run: which errors are never retried, the cluster-size check, and test hooks.

Ray Train's FailureConfig restarts the worker group on ANY worker error (Ray 2.60's
DefaultFailurePolicy treats every WorkerGroupError as retryable), which is right for a killed process
or a lost node and wrong for an error that will happen again: a NaN loss, a fold too small for the
batch, a bad value. Those are DETERMINISTIC: the fold that hits one joins the next epoch barrier with
its reason instead of metrics, every fold sees it, all of them report once more and return, and the
driver raises `RunFailed` with the reason (see fold_worker.fold_worker). Nothing is retried and no fold waits
forever at the barrier.

`inject` is the test hook behind tests/test_faults*.py: it makes a real fault happen inside a fold
worker (SIGKILL of the worker process in the middle of an epoch's batches, a NaN in the weights, an
exception at an epoch's end, a worker that stops before a report so a test can kill the driver at a
known epoch, a trial that learns nothing), once, guarded by a marker file. run_kfold takes it as
`inject_failure`; a search's trials take theirs from the environment variable SALT_INJECT_FAULT (JSON:
one fault or a list, each with "study_trial").
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

DETERMINISTIC = (FloatingPointError, ValueError)  # the same input fails the same way on a retry


class RunFailed(ValueError):
    """A fold failed deterministically; the run stopped at once (never retried). str() is the reason."""


def inject(failure: dict | None, fold: int, epochs_done: Callable[[], int]) -> Callable[[int, dict], dict]:
    """Arms the test fault for this fold; returns the hook `report` calls at each epoch's end with the
    epoch and the fold's metrics, and reports what it returns.

    failure = {"fold": r, "epoch": e (1-based), "marker": path, "mode": ..., "batches": b}
    - "sigkill": after b optimizer steps of epoch e, the worker SIGKILLs its own process.
    - "nan": after b optimizer steps of epoch e, a weight becomes NaN (the next loss is NaN and
      train_one_epoch raises FloatingPointError, a deterministic error).
    - "raise": at the end of epoch e, a RuntimeError (a transient error: retried).
    - "exit": at the end of epoch e, os._exit(1) (a dead process: retried).
    - "hold": at the end of epoch e, before its report, the worker writes the marker and sleeps (the
      run holds with epochs 1..e-1 reported and checkpointed, for a test to kill its driver).
    - "poor": every fold, every epoch, reports a held-out score of 0 (a trial that learned nothing:
      ASHA stops it at a rung where another trial stands above 0). No marker.
    The marker file makes each fault happen once per run, however often the worker restarts.
    """
    if failure and failure.get("mode") == "poor":
        return lambda epoch, metrics: {**metrics, "val_map": 0.0, "best_val_map": 0.0}
    if not failure or failure["fold"] != fold:
        return lambda epoch, metrics: metrics
    marker = Path(failure["marker"])
    mode = failure.get("mode", "raise")

    def fire(what: str) -> bool:
        if marker.exists():
            return False
        marker.write_text(f"fold {fold} pid {os.getpid()}: {what}\n")
        return True

    if mode in ("sigkill", "nan"):
        steps = {"epoch": None, "n": 0}

        def after_step(optimizer, args, kwargs) -> None:
            epoch = epochs_done() + 1
            if steps["epoch"] != epoch:
                steps.update(epoch=epoch, n=0)
            steps["n"] += 1
            if epoch != failure["epoch"] or steps["n"] != failure.get("batches", 1):
                return
            if mode == "sigkill" and fire(f"SIGKILL after {steps['n']} batches of epoch {epoch}"):
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "nan" and fire(f"NaN weights after {steps['n']} batches of epoch {epoch}"):
                with torch.no_grad():
                    optimizer.param_groups[0]["params"][0].fill_(float("nan"))

        register_optimizer_step_post_hook(after_step)
        return lambda epoch, metrics: metrics

    def at_epoch_end(epoch: int, metrics: dict) -> dict:
        if epoch != failure["epoch"] or not fire(f"{mode} at the end of epoch {epoch}"):
            return metrics
        if mode == "exit":
            os._exit(1)
        if mode == "hold":
            time.sleep(3600)  # until the test kills the run
        raise RuntimeError(f"injected failure in fold {fold} at epoch {epoch}")

    return at_epoch_end


def trial_fault(number: int) -> dict | None:
    """The test fault of study trial `number` from SALT_INJECT_FAULT (one fault or a list), if any."""
    faults = json.loads(os.environ.get("SALT_INJECT_FAULT", "null")) or []
    for fault in faults if isinstance(faults, list) else [faults]:
        if fault.get("study_trial") == number:
            return fault
    return None
