"""Runs where fit() is called: orchestrator.train's driver, or a search trial's actor (orchestrator/trial.py).
All k folds as one Ray Train run whose k workers are the k folds (orchestrator/fold_worker.py).

The Train controller runs the run's callbacks (orchestrator/callbacks.py); after fit() the folds are
collected from the final checkpoint (orchestrator/collect.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.callbacks import FatalReason, ProgressFile, fatal_reason
from orchestrator.collect import KFoldResult, collect_folds
from orchestrator.faults import RunFailed
from orchestrator.fold_worker import fold_worker
from orchestrator.placement import DEFAULT_PLACEMENT_TIMEOUT_S, PlacementWatch, bound_placement, fit_placed
from orchestrator.runtime import FoldResources
from orchestrator.storage import ray_storage
from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.folds import check_folds_trainable
from salt_model.data.loading import SaltData


def make_trainer(
    config: Config,
    data_ref,
    folds: np.ndarray,
    resources: FoldResources,
    storage: str,
    run_name: str,
    max_failures: int,
    callbacks: list | None = None,
    inject_failure: dict | None = None,
    trial: str | None = None,
    pseudo_ref=None,
    init_ref=None,
    eval_at: tuple[int, ...] = (),
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S,
    max_preemptions: int = -1,
) -> TorchTrainer:
    """One TorchTrainer whose k workers are the k folds (`pseudo_ref`: a pseudo round's tiles, one
    SaltData for every fold or a list of k; `init_ref`: per-fold start weights, both ObjectRefs or
    None; `eval_at`: epochs every fold evaluates besides its config's cadence, e.g. ASHA's rungs).

    Failures (orchestrator/placement.py): `max_failures` worker-group failures, `max_preemptions`
    restarts after a node preemption (-1: any number; they do not count in `max_failures`), and fold
    workers not placed within `placement_timeout_s` end the run."""
    k = config.data.folds
    start_retries = bound_placement(placement_timeout_s)  # sets Ray Train's start timeout in os.environ
    watch = PlacementWatch(k, resources.as_dict(), start_retries, max_preemptions)
    loop_config = {
        "config": config.to_dict(),
        "data_ref": data_ref,
        "folds": folds.tolist(),
        "threads": resources.threads,
        "gpus": resources.gpus,
        "run_name": run_name,
        "trial": trial,
        "inject_failure": inject_failure,
        "pseudo_ref": pseudo_ref,
        "init_ref": init_ref,
        "eval_at": list(eval_at),
    }
    return TorchTrainer(
        fold_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=k, use_gpu=resources.gpus > 0, resources_per_worker=resources.as_dict()
        ),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(
            name=run_name,
            **ray_storage(str(storage)),
            failure_config=FailureConfig(
                max_failures=max_failures,
                controller_failure_limit=start_retries,
                max_preemption_failures=max_preemptions,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints or None),
            callbacks=[*(callbacks or []), watch],
            logging_config=LoggingConfig(log_level="WARNING"),  # progress comes from our own lines
        ),
    )


def fit_folds(
    trainer: TorchTrainer,
    config: Config,
    resources: FoldResources,
    placement_timeout_s: float,
    failure_file: Path,
    who: str,
):
    """fit() within the placement bound (the one k-fold fit of orchestrator.train's rounds and of a
    search trial); a deterministic failure FatalReason recorded in `failure_file` is raised as
    RunFailed naming `who`, any other error as Ray Train raised it. Returns Ray's Result."""
    result = fit_placed(trainer, config.data.folds, resources.as_dict(), placement_timeout_s)
    reason = fatal_reason(failure_file)
    if reason is not None:
        raise RunFailed(f"{who} stopped without retrying: {reason}")
    if result.error is not None:
        raise result.error
    return result


def run_name_for(out: Path) -> str:
    """A Ray run name unique to the output folder, stable across re-runs (so they resume)."""
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]
    return f"kfold-{out.resolve().name}-{digest}"


def run_kfold(
    config: Config,
    data: SaltData,
    folds: np.ndarray,
    out: Path,
    resources: FoldResources,
    max_failures: int = 3,
    inject_failure: dict | None = None,
    run_name: str | None = None,
    storage: str | None = None,
    pseudo: SaltData | list[SaltData] | None = None,
    init_states: list[dict] | None = None,
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S,
    max_preemptions: int = -1,
) -> KFoldResult:
    """Trains all k folds in parallel on Ray (resuming a previous run in `out`) and collects them.

    `storage` is where Ray keeps checkpoints (default OUT/ray); on a multi-node cluster it must be
    reachable from every node (s3://bucket/path or a shared mount). `pseudo`: pseudo-labelled tiles
    every fold adds to its training part (a list: fold r's own tiles at r); `init_states`: each fold's start weights (a pseudo round).
    """
    check_folds_trainable(folds, config.data.folds, config.train.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    failure_file = out / run_folder.FAILURE
    failure_file.unlink(missing_ok=True)  # a new attempt (e.g. after fixing the config)
    data_ref = ray.put(data)
    storage = storage or str(out.resolve() / run_folder.RAY)
    run_name = run_name or run_name_for(out)
    trainer = make_trainer(
        config,
        data_ref,
        folds,
        resources,
        storage,
        run_name,
        max_failures,
        callbacks=[
            ProgressFile(str(out.resolve()), config.data.folds),
            FatalReason(str(failure_file.resolve())),
        ],
        inject_failure=inject_failure,
        pseudo_ref=None if pseudo is None else ray.put(pseudo),
        init_ref=None if init_states is None else ray.put(init_states),
        placement_timeout_s=placement_timeout_s,
        max_preemptions=max_preemptions,
    )
    result = fit_folds(trainer, config, resources, placement_timeout_s, failure_file, "the run")
    if result.checkpoint is None:
        raise RunFailed(
            f"the run in {out} finished without a checkpoint (its logs are in {out / run_folder.LOGS})"
        )
    return collect_folds(result.checkpoint, out, data, folds, config.data.folds)
