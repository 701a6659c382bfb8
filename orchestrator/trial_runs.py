"""Runs in the Tune driver: a search's trials in MLflow through Ray Tune's own MLflowLoggerCallback.

Ray's callback creates one MLflow run per trial with the trial's config (its searched params) as
params and any tags we give it, and ends it FINISHED or FAILED; the tag `mlflow.parentRunId` nests
every trial under the command's parent run. Changed here, and why:
- results are logged with step = our `epoch` (Ray steps on `training_iteration`, which restarts from
  zero when a trial resumes) in one batch per epoch (Ray logs each metric with its own request), and
  only our epoch metrics (tracking.epoch_metrics), not Tune's bookkeeping;
- a trial resumed after a driver kill continues its run: the run id is kept in OUT/state/mlflow.json
  (Ray's callback keeps it in memory only, so a restored search would open a new run);
- the trial's final state is tagged: COMPLETE, PRUNED (ASHA stopped it before the last epoch) or FAIL
  with its reason; the Optuna study's state is tagged again after the search (search_results.tag_trial_states);
- every request runs on the tracker's own thread (Tracker.submit), so the Tune loop never waits on
  the server, and any error is the tracker's one warning, never the search's (Ray's callback would
  raise into Tune).
Importing this module imports mlflow: search_setup.trial_callbacks imports it only when tracking is on.
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback

from orchestrator import console
from orchestrator.tracker import Tracker


def trial_key(trial) -> str:
    return f"trial_{trial.config['study_trial']}"


class TrialRuns(MLflowLoggerCallback):
    def __init__(self, tracker: Tracker, epochs: int, failure_reason):
        super().__init__(
            tracking_uri=tracker.uri,
            experiment_name=tracker.experiment,
            tags={"mlflow.parentRunId": tracker.parent or ""},
        )
        self.tracker, self.epochs = tracker, epochs
        self.failure_reason = failure_reason  # study trial number -> its deterministic failure, if any

    def setup(self, *args, **kwargs):
        self._trial_runs = {}
        with self.tracker.guard() as on:
            if on:
                super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        self.tracker.submit(lambda: self._start(trial))

    def _start(self, trial):
        if trial in self._trial_runs:
            return
        with self.tracker.guard() as on:
            if not on:
                return
            key = trial_key(trial)
            run_id = self.tracker.child_id(key)
            if run_id is not None:  # a resumed search: the trial's run goes on
                self.tracker.client.update_run(run_id, status="RUNNING")
                self._trial_runs[trial] = run_id
                return
            super().log_trial_start(trial)  # the run, its tags, trial.config as params
            run_id = self._trial_runs[trial]
            self.tracker.client.set_tag(run_id, "child", key)
            self.tracker.remember_child(key, run_id)

    def log_trial_result(self, iteration, trial, result):
        record = {**result, "time": result.get("timestamp", 0)}
        self.tracker.submit(lambda: self.tracker.log_epoch(self._trial_runs.get(trial), record))

    def log_trial_end(self, trial, failed: bool = False):
        epoch = (trial.last_result or {}).get("epoch", 0)
        if failed:
            state = "FAIL"
            reason = (
                self.failure_reason(trial.config["study_trial"])
                or console.error_line(trial)
                or "the trial raised (no error.txt)"
            )
        else:
            state, reason = ("COMPLETE" if epoch >= self.epochs else "PRUNED"), ""
        self.tracker.submit(lambda: self._end(trial, failed, state, reason))

    def _end(self, trial, failed: bool, state: str, reason: str):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        with self.tracker.guard() as on:
            if not on:
                return
            self.tracker.client.set_tag(run_id, "state", state)
            if reason:
                self.tracker.client.set_tag(run_id, "fail_reason", reason[:5000])
            super().log_trial_end(trial, failed=failed)  # FINISHED or FAILED

    def on_experiment_end(self, trials, **info):
        self.tracker.flush()  # every trial's last epoch and final state are in before the command ends
        super().on_experiment_end(trials, **info)
