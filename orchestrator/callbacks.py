"""Runs in the Ray Train controller: the k-fold run's UserCallbacks, called after each report of rank 0
(the fold means) and after a worker failure. `fatal_reason` reads FatalReason's record where fit()
was called (the driver, or a search trial) and in the search's searcher.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.train import UserCallback

from orchestrator import console
from orchestrator.storage import get_file, put_file
from orchestrator.tensorboard import FoldCurves
from salt_model.io import atomic_write_text


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
        if "fatal_error" in metrics[0]:
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
    """Runs in the Train controller: every epoch's merged metrics go to `OUT/progress.jsonl`, the fold
    curves to `OUT/tensorboard/fold_{r}`, and an event to the driver's live view."""

    def __init__(self, out: str, folds: int):
        self.out, self.folds = out, folds
        self.curves = None

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" in metrics[0]:
            return  # FatalReason keeps it
        Path(self.out).mkdir(parents=True, exist_ok=True)
        with open(Path(self.out) / "progress.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **metrics[0]}) + "\n")
        if self.curves is None:
            self.curves = FoldCurves(Path(self.out) / "tensorboard", self.folds)
        self.curves.add(metrics[0])
        console.worker_say({"event": "epoch", **metrics[0]})
