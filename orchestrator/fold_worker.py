"""Runs on each Ray Train worker, one per fold: worker rank r trains fold r with salt_model's training loop.

Each fold reports its own epoch metrics; Ray hands every rank's report to the controller's callbacks,
which merge them (orchestrator/callbacks.py). `ray.train.report` is a barrier: every fold reports every
epoch (an epoch that salt_model.training.cadence does not evaluate reports its training metrics only, so the
count of reports never depends on the cadence), and each fold writes its own `fold_{r}.pt` into the
shared checkpoint (Ray merges the ranks' files into one folder). A fold worker that dies restarts the
group from the latest checkpoint (FailureConfig), and re-running with the same output folder resumes a
run whose driver died.

The folds share no gradients; the process group (gloo, which works with and without CUDA) serves
two agreements that Ray's report barrier cannot carry, since it sends nothing back to the workers and
`ray.train.collective` offers only a barrier and a broadcast from rank 0: whether any fold has hit a
deterministic error (then all stop at the same report), and which checkpoint every fold can read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch.distributed as dist
from ray.train import Checkpoint

from orchestrator import console
from orchestrator.checkpoint_upload import FoldUpload
from orchestrator.faults import DETERMINISTIC, inject
from orchestrator.resume import ResumeFailed, pick_resume, read_fold
from orchestrator.runtime import worker_device
from orchestrator.storage import checkpoints_before
from salt_model.config import Config
from salt_model.data.loading import SaltData
from salt_model.device import set_cpu_threads
from salt_model.training.fold_loop import train_fold


def fold_worker(loop_config: dict) -> None:
    """The per-worker training function: rank r trains fold r and reports every epoch.

    A deterministic error in one fold (faults.DETERMINISTIC) is not raised to Ray, which would retry
    it: the fold joins the next epoch barrier with its reason, every fold reports it once and
    returns, and the driver raises faults.RunFailed (see `FatalReason`).
    """
    context = ray.train.get_context()
    fold = context.get_world_rank()
    config = Config.from_dict(loop_config["config"], source="train_loop_config")
    set_cpu_threads(loop_config["threads"])  # torch and OpenCV, sized to this worker's Ray CPU share
    data: SaltData = ray.get(loop_config["data_ref"])  # one copy per node, from the object store
    extra = ray.get(loop_config["pseudo_ref"]) if loop_config.get("pseudo_ref") is not None else None
    if isinstance(extra, list):  # pseudo.teacher=fold: each fold has its own pseudo-labelled tiles
        extra = extra[fold]
    init_states = ray.get(loop_config["init_ref"]) if loop_config.get("init_ref") is not None else None
    folds = np.asarray(loop_config["folds"])

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # the newest kept checkpoint every fold can read (orchestrator.resume)
        candidates = [checkpoint, *checkpoints_before(checkpoint)]
        try:
            resume, chosen, skipped = pick_resume(candidates, lambda c: read_fold(c, fold), all_folds)
        except ResumeFailed as err:  # every fold has the same reason: each reports it once and stops
            print(f"fold {fold}: {err} (deterministic: not retried)", flush=True)
            ray.train.report({"fatal_error": str(err), "epoch": 0})
            return
        if skipped and fold == 0:
            console.worker_say(
                f"unreadable checkpoint skipped: {'; '.join(skipped)}; resuming from {chosen.path}"
            )
    resumed_after = int(resume["epoch"]) if resume is not None else 0
    if resume is not None:
        console.worker_say(f"fold {fold}: worker restarted, resuming after epoch {resumed_after}")

    gauge = ray.util.metrics.Gauge(  # on this node's Prometheus endpoint as ray_fold_val_map
        "fold_val_map", "held-out competition metric of a fold", tag_keys=("run", "trial", "fold")
    )
    tags = {
        "run": loop_config["run_name"],
        "trial": loop_config.get("trial") or loop_config["run_name"],
        "fold": str(fold),
    }
    node = ray.get_runtime_context().get_node_id()

    reports = 0
    upload = FoldUpload(fold)  # an unchanged members file is copied inside the storage, not uploaded
    fault = inject(loop_config.get("inject_failure"), fold, lambda: resumed_after + reports)

    def stop_if_any_failed(reason: str | None = None) -> None:
        fatal = [r for r in all_folds(reason) if r is not None]
        if fatal:  # every fold reports the reasons once (report is a barrier) and stops
            ray.train.report({"fatal_error": "; ".join(fatal), "epoch": resumed_after + reports})
            raise _Stop

    def report(metrics: dict, save) -> None:
        nonlocal reports
        epoch = metrics["epoch"]
        metrics = fault(epoch, metrics)
        reports += 1
        if "val_map" in metrics:  # an evaluated epoch
            gauge.set(metrics["val_map"], tags=tags)
        stop_if_any_failed()
        # the run's own record of resumes: the epoch each fold's current attempt started after
        metrics = {**metrics, "node": node, "resumed_after": resumed_after}
        if save is not None and (epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs):
            with tempfile.TemporaryDirectory() as directory:
                folder = Path(directory) / "checkpoint"  # FoldUpload may set a file aside in `directory`
                folder.mkdir()
                save(folder)
                ray.train.report(
                    metrics, checkpoint=Checkpoint.from_directory(folder), checkpoint_upload_fn=upload
                )
        else:
            ray.train.report(metrics)

    try:
        result = train_fold(
            config,
            data,
            fold,
            report=report,
            folds=folds,
            resume=resume,
            device=worker_device(loop_config.get("gpus", 0.0)),  # refuses GPUs that CUDA cannot start
            threads=loop_config["threads"],  # the worker's Ray share wins over config.train.threads
            extra=extra,  # a pseudo round's tiles, in this fold's training part only
            init_state=None if init_states is None else init_states[fold],
            eval_at=tuple(loop_config.get("eval_at") or ()),  # a search's ASHA rungs
        )
        print(
            f"fold {fold}: members file uploaded {upload.uploaded}x, copied in the storage {upload.copied}x"
        )
        if reports == 0:
            # The run was already complete in the checkpoint it resumed from (the driver died after the
            # last epoch). Every fold is in the same state, so every fold reports its last epoch again,
            # once, so that a Tune trial still ends with its metric.
            report({**result.history[-1], "rereport": True}, None)
    except _Stop:
        return
    except DETERMINISTIC as err:
        reason = f"fold {fold}: {type(err).__name__}: {err}"
        print(f"{reason} (deterministic: not retried)", flush=True)
        try:
            stop_if_any_failed(reason)
        except _Stop:
            return


def all_folds(payload):
    """Every fold's `payload`, in rank order (gloo all-gather; every fold must call it)."""
    gathered: list = [None] * ray.train.get_context().get_world_size()
    dist.all_gather_object(gathered, payload)
    return gathered


class _Stop(Exception):
    """Unwinds a fold's training loop once any fold has reported a deterministic error."""
