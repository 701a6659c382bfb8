"""Runs in the Ray Train controller: the k-fold run's UserCallbacks. Ray calls `after_report` with
every fold's report of an epoch (one dict per rank); `merge_fold_metrics` makes the run's epoch record
of them (the fold means and each fold's own values), and after a worker failure `after_exception`.
`fatal_reason` reads FatalReason's record where fit() was called (the driver, or a search trial) and
in the search's searcher.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from ray.train import UserCallback

from orchestrator import console
from orchestrator.storage import get_file, put_file
from orchestrator.tensorboard import FoldCurves
from salt_model import run_folder
from salt_model.io import atomic_write_text

FOLD_KEYS = ("val_map", "val_iou", "val_loss", "train_loss", "best_val_map", "train_tiles")


def merge_fold_metrics(per_fold: list[dict]) -> dict:
    """Folds' epoch metrics -> the mean of each and every fold's own value (`val_map_fold{r}`); a
    deterministic failure's report (every fold sends the same one) as it is."""
    if "fatal_error" in per_fold[0]:
        return dict(per_fold[0])
    merged = {
        "epoch": per_fold[0]["epoch"],
        "lr": per_fold[0]["lr"],
        "loss": per_fold[0]["loss"],
        "epoch_s": max(m["epoch_s"] for m in per_fold),
    }
    if "resumed_after" in per_fold[0]:  # the epoch each fold's current attempt started after
        merged["resumed_after"] = min(m["resumed_after"] for m in per_fold)
        merged.update({f"resumed_after_fold{m['fold']}": m["resumed_after"] for m in per_fold})
    if any(m.get("rereport") for m in per_fold):
        merged["rereport"] = True  # a finished run's last epoch reported again, not trained again
    for key in FOLD_KEYS + ("val_empty_acc",):
        if key in per_fold[0]:
            values = [m[key] for m in per_fold]
            merged[key] = float(np.mean(values))
            merged.update({f"{key}_fold{m['fold']}": m[key] for m in per_fold})
    merged.update({f"node_fold{m['fold']}": m["node"] for m in per_fold if "node" in m})  # placement
    return merged


class FatalReason(UserCallback):
    """Keeps a deterministic failure's reason: `path` (a JSON file in the run folder) gets it, and
    `copy_uri` (in --storage, if given) a copy, so that a resume into a new run folder still knows it.

    Train's Result holds only checkpointed reports, so the reason travels through this file; the
    driver raises RunFailed from it after fit(), and a Tune trial's searcher records it.
    """

    def __init__(self, path: str, copy_uri: str | None = None):
        self.path, self.copy_uri = path, copy_uri

    def record(self, metrics: dict) -> None:
        atomic_write_text(Path(self.path), json.dumps(metrics) + "\n")
        if self.copy_uri:
            put_file(Path(self.path), self.copy_uri)

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" in metrics[0]:  # every fold reports the same reasons
            self.record(metrics[0])


def fatal_reason(path: Path, copy_uri: str | None = None) -> str | None:
    """The reason recorded by FatalReason in `path` (fetched there from `copy_uri` when only the
    storage has it), if any."""
    if not path.exists() and not (copy_uri and get_file(copy_uri, path)):
        return None
    return json.loads(path.read_text())["fatal_error"]


class FailureNotice(UserCallback):
    """Runs in the Train controller: a failing fold worker becomes one console warning with its cause."""

    def after_exception(self, run_context, worker_exceptions):
        causes = {str(rank): console.cause(e) for rank, e in worker_exceptions.items()}
        console.worker_say({"event": "failure", "folds": causes})


class ProgressFile(FailureNotice):
    """Runs in the Train controller: every epoch's merged fold metrics go to `OUT/logs/progress.jsonl` (which
    the driver's live view follows: the controller runs on the driver's node) and the fold curves to
    `OUT/logs/tensorboard/fold_{r}`."""

    def __init__(self, out: str, folds: int):
        self.out, self.folds = out, folds
        self.curves = None

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" in metrics[0]:
            return  # FatalReason keeps it
        merged = merge_fold_metrics(metrics)
        progress = Path(self.out) / run_folder.PROGRESS
        progress.parent.mkdir(parents=True, exist_ok=True)
        with open(progress, "a") as f:
            f.write(json.dumps({"time": time.time(), **merged}) + "\n")
        if self.curves is None:
            self.curves = FoldCurves(Path(self.out) / run_folder.TENSORBOARD, self.folds)
        self.curves.add(merged)
