"""Runs on the driver: the Tracker, a command's MLflow runs (one parent, a child per k-fold run) and
OUT/state/mlflow.json, which names them so that a resumed command continues them (orchestrator/tracking.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

from orchestrator import console
from salt_model import run_folder
from salt_model.io import atomic_write_json

STATE_FILE = run_folder.TRACKING
# The client's defaults retry an unreachable server for minutes; a run should not wait on its tracker.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # our own line names the parent run's page
}
METRIC_PREFIXES = ("val_", "train_", "best_val_map")
STATES = ("COMPLETE", "PRUNED", "FAIL")


def epoch_metrics(record: dict) -> dict[str, float]:
    """The numbers of one epoch's report worth a chart: lr, epoch time, every val_*/train_* metric
    (the fold mean and each `_fold{r}`), and the loss in use (`loss_lovasz` 0 or 1)."""
    metrics = {
        k: float(v)
        for k, v in record.items()
        if (k in ("lr", "epoch_s") or k.startswith(METRIC_PREFIXES))
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }
    if isinstance(record.get("loss"), str):
        metrics["loss_lovasz"] = float(record["loss"] == "lovasz")
    return metrics


def git_commit() -> str | None:
    """The checkout's commit, if this code runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def flat_params(config: dict) -> dict[str, str]:
    """{"train": {"epochs": 3}} -> {"train.epochs": "3"} (MLflow params are strings)."""
    return {f"{s}.{k}": str(v) for s, section in config.items() for k, v in section.items()}


class Tracker:
    """The command's MLflow runs. Every method is a no-op once the tracker is off (after an error)."""

    def __init__(self, uri: str, out: Path, experiment: str):
        self.uri, self.out, self.experiment = uri, Path(out).resolve(), experiment
        self.on = True
        self.parent: str | None = None
        self.experiment_id: str | None = None
        self._client = None
        self._lock = threading.RLock()
        self._queue: queue.Queue | None = None

    def __getstate__(self):  # the Tune callback that holds it is pickled with the Tuner
        state = self.__dict__.copy()
        state["_client"], state["_lock"], state["_queue"] = None, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def submit(self, job) -> None:
        """Runs job() on the tracker's own thread, in submission order: the Tune loop never waits on
        the server."""
        if not self.on:
            return
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._send, name="mlflow-sender", daemon=True).start()
        self._queue.put(job)

    def _send(self) -> None:
        while True:
            job = self._queue.get()
            try:
                with self.guard() as on:
                    if on:
                        job()
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 120.0) -> None:
        """Waits (at most timeout_s) until every submitted job has run."""
        deadline = time.time() + timeout_s
        while self._queue is not None and self._queue.unfinished_tasks and time.time() < deadline:
            time.sleep(0.1)

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _off(self, err: BaseException) -> None:
        if self.on:
            why = console.cause(err)
            why = why if len(why) <= 200 else why[:200] + "..."
            console.say(
                f"warning: MLflow tracking at {self.uri} is off for this run ({why}); training goes on"
            )
        self.on = False

    @contextlib.contextmanager
    def guard(self):
        """Any error inside turns the tracker off with one warning line; the run goes on."""
        if not self.on:
            yield False
            return
        try:
            with self._lock:
                yield True
        except Exception as err:  # noqa: BLE001 (the tracker must never stop training)
            self._off(err)

    # -- the state file: which runs this folder's command logs to
    def state(self) -> dict:
        path = self.out / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, **changes) -> None:
        state = {**self.state(), **changes}
        atomic_write_json(self.out / STATE_FILE, state)

    def child_id(self, key: str) -> str | None:
        return self.state().get("children", {}).get(key)

    def remember_child(self, key: str, run_id: str) -> None:
        children = {**self.state().get("children", {}), key: run_id}
        self._save(children=children)

    def start(self, command: str, config: dict, data_root: Path, data_size: int) -> None:
        """Creates the parent run, or takes over the one OUT/state/mlflow.json names (a resumed command)."""
        for key, value in CLIENT_ENV.items():
            os.environ.setdefault(key, value)
        with self.guard() as on:
            if not on:
                return
            saved = self.state()
            if saved.get("uri") == self.uri and saved.get("parent"):
                self.parent, self.experiment_id = saved["parent"], saved["experiment_id"]
                previous = self.client.get_run(self.parent).info.status
                self.client.update_run(self.parent, status="RUNNING")
                resumes = int(self.client.get_run(self.parent).data.tags.get("resumes", "0")) + 1
                self.client.set_tag(self.parent, "resumes", str(resumes))
                self.client.set_tag(self.parent, f"resume_{resumes}_found", previous)
                console.say(f"MLflow: continuing run {self.parent} ({previous} before) at {self.uri}")
                return
            found = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(self.experiment)
            )
            tags = {
                "command": command,
                "data": Path(data_root).name,
                "data_path": str(data_root),
                "data_tiles": str(data_size),
                "out": str(self.out),
            }
            commit = git_commit()
            if commit:
                tags["mlflow.source.git.commit"] = commit
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{command} {self.out.name}")
            self.parent = run.info.run_id
            self._log_params(self.parent, flat_params(config))
            self.client.log_param(self.parent, "data.tiles", str(data_size))
            self._save(uri=self.uri, experiment_id=self.experiment_id, parent=self.parent, children={})
            console.say(f"MLflow: run {self.parent} in experiment {self.experiment!r}: {self.page()}")

    def page(self) -> str:
        """The parent run's page in the MLflow UI (for an http(s) server), else the store's URI."""
        if not self.uri.startswith(("http://", "https://")):
            return self.uri
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent}"

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def child(self, key: str, name: str, params: dict | None = None) -> str | None:
        """The child run for `key` (a trial number, a round), created on first use, RUNNING again on
        a resume."""
        with self.guard() as on:
            if not on or self.parent is None:
                return None
            run_id = self.child_id(key)
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            tags = {"mlflow.parentRunId": self.parent, "child": key}
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
            if params:
                self._log_params(run_id, {k: str(v) for k, v in params.items()})
            self.remember_child(key, run_id)
            return run_id
        return None

    def log_epoch(self, run_id: str | None, record: dict) -> None:
        from mlflow.entities import Metric

        with self.guard() as on:
            if not on or run_id is None or record.get("rereport") or "epoch" not in record:
                return
            step, stamp = int(record["epoch"]), int(1000 * float(record.get("time", 0)) or 0)
            metrics = [Metric(k, v, stamp, step) for k, v in epoch_metrics(record).items()]
            self.client.log_batch(run_id, metrics=metrics)

    def end_child(self, run_id: str | None, state: str, reason: str = "") -> None:
        """The child's final state as tags, and its MLflow status (FAIL -> FAILED, else FINISHED)."""
        assert state in STATES, state
        with self.guard() as on:
            if not on or run_id is None:
                return
            self.client.set_tag(run_id, "state", state)
            if reason:
                self.client.set_tag(run_id, "fail_reason", reason[:5000])
            self.client.set_terminated(run_id, status="FAILED" if state == "FAIL" else "FINISHED")

    def artifacts(self, paths: list[Path]) -> None:
        """Files and folders onto the parent run (a folder keeps its name), those that exist."""
        with self.guard() as on:
            if not on or self.parent is None:
                return
            for path in paths:
                if path.is_dir():
                    self.client.log_artifacts(self.parent, str(path), artifact_path=path.name)
                elif path.is_file():
                    self.client.log_artifact(self.parent, str(path))

    def finish(self, status: str) -> None:
        """Ends the parent run and any child still RUNNING: FINISHED, FAILED or KILLED."""
        with self.guard() as on:
            if not on or self.parent is None:
                return
            for run_id in self.state().get("children", {}).values():
                if self.client.get_run(run_id).info.status == "RUNNING":
                    self.client.set_terminated(run_id, status=status)
            self.client.set_terminated(self.parent, status=status)

    @contextlib.contextmanager
    def command(self):
        """Around a command's work: its runs end FINISHED, FAILED (an error) or KILLED (Ctrl-C)."""
        try:
            yield self
        except KeyboardInterrupt:
            self.finish("KILLED")
            raise
        except BaseException:
            self.finish("FAILED")
            raise
        self.finish("FINISHED")
