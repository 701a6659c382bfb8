"""Runs on the driver: orchestrator.train has no Tune, so a thread follows each k-fold run's
progress.jsonl (written by the Train controller, orchestrator/callbacks.py) into its MLflow child run.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from orchestrator import console
from orchestrator.tracker import Tracker


class ProgressFollower:
    """A driver thread that logs each new line of a k-fold run's progress.jsonl to its child run.

    OUT/mlflow.json keeps how many lines were logged, so a resumed run logs only the new epochs."""

    def __init__(self, tracker: Tracker, run_id: str | None, key: str, progress: Path, every_s: float = 2.0):
        self.tracker, self.run_id, self.key, self.path = tracker, run_id, key, Path(progress)
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-progress", daemon=True)

    def _done_lines(self) -> int:
        return int(self.tracker.state().get("lines", {}).get(self.key, 0))

    def poll(self) -> None:
        if not self.tracker.on or not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        done = self._done_lines()
        for line in lines[done:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line being written: next poll
                break
            self.tracker.log_epoch(self.run_id, record)
            if not self.tracker.on:
                return
            done += 1
            with self.tracker.guard() as on:
                if on:
                    self.tracker._save(lines={**self.tracker.state().get("lines", {}), self.key: done})

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
    """Logs a k-fold run's epochs (its progress.jsonl) to the child run `key` while the block runs;
    the child ends COMPLETE, or FAIL with the error, which goes on up."""
    if tracker is None:
        yield
        return
    run_id = tracker.child(key, name)
    try:
        with ProgressFollower(tracker, run_id, key, progress):
            yield
    except Exception as err:
        tracker.end_child(run_id, "FAIL", console.cause(err))
        raise  # Ctrl-C: tracker.command() ends every run KILLED
    tracker.end_child(run_id, "COMPLETE")
