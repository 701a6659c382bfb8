"""Runs on the driver of orchestrator.train: a thread follows each k-fold run's progress.jsonl, written
by the Train controller (orchestrator/callbacks.py), which Ray Train places on the driver's node. Each
new epoch goes to the live view and, with tracking on, into the run's MLflow child run.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from orchestrator import console
from orchestrator.tracker import Tracker
from salt_model.io import read_jsonl


class ProgressFollower:
    """A driver thread that hands each new epoch of a k-fold run's progress.jsonl to the live view
    (epochs written since it started) and to the MLflow child run `run_id` (every epoch not logged
    yet: OUT/state/mlflow.json keeps how many were, so a resumed run logs only the new ones)."""

    def __init__(
        self, progress: Path, tracker: Tracker | None = None, run_id: str | None = None, key: str = "",
        every_s: float = 1.0,
    ):  # fmt: skip
        self.path, self.tracker, self.run_id, self.key = Path(progress), tracker, run_id, key
        self.shown = len(read_jsonl(self.path))  # a resumed run's earlier epochs are not news
        self.every_s = every_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="salt-progress-follower", daemon=True)

    def poll(self) -> None:
        with self._lock:
            records = read_jsonl(self.path)
            for record in records[self.shown :]:
                console.show_epoch(record)
            self.shown = max(self.shown, len(records))
            if self.tracker is not None:
                self._log(records)

    def _log(self, records: list[dict]) -> None:
        tracker = self.tracker
        done = int(tracker.state().get("lines", {}).get(self.key, 0))
        for record in records[done:]:
            if not tracker.on:
                return
            tracker.log_epoch(self.run_id, record)
            if not tracker.on:
                return
            done += 1
            with tracker.guard() as on:
                if on:
                    tracker._save(lines={**tracker.state().get("lines", {}), self.key: done})

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()  # the last epoch's line


@contextlib.contextmanager
def follow(tracker: Tracker | None, key: str, name: str, progress: Path):
    """Shows a k-fold run's epochs (its progress.jsonl) in the live view while the block runs and, with
    a tracker, logs them to the child run `key`, which ends COMPLETE, or FAIL with the error (the error
    goes on up; Ctrl-C: tracker.command() ends every run KILLED)."""
    run_id = None if tracker is None else tracker.child(key, name)
    try:
        with ProgressFollower(progress, tracker, run_id, key):
            yield
    except Exception as err:
        if tracker is not None:
            tracker.end_child(run_id, "FAIL", console.cause(err))
        raise
    if tracker is not None:
        tracker.end_child(run_id, "COMPLETE")
