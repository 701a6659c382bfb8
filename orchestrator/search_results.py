"""Runs on the driver after the search: trials.csv, the study's final states on the trials' MLflow
runs, and the best trial's k-fold checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from ray import tune
from ray.train import Checkpoint

from orchestrator import console
from orchestrator.faults import RunFailed
from orchestrator.search import METRIC, close_stale
from orchestrator.search_space import trial_run_name
from orchestrator.storage import checkpoint_at, join, latest_checkpoint
from orchestrator.study import load_run_study, open_run_study
from orchestrator.tracker import Tracker
from salt_model import run_folder
from salt_model.config import Config
from salt_model.io import atomic_write

INTERNAL = ["params", "checkpoint_path"]  # trial-table columns kept out of trials.csv


def trial_table(results: tune.ResultGrid, out: Path) -> pd.DataFrame:
    """trials.csv: one row per trial with its params, Optuna state, best fold-mean metric and epochs."""
    study = load_run_study(out)
    by_number = {t.number: t for t in study.trials}
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        best = float(history[METRIC].max()) if history is not None and METRIC in history else float("nan")
        study_trial = by_number.get(result.config.get("study_trial"))
        error = console.last_line(str(result.error)) if result.error else ""
        rows.append(
            {
                "trial_id": trial_id,
                "state": study_trial.state.name if study_trial else ("FAIL" if result.error else "RUNNING"),
                METRIC: best,
                "epochs_run": int(metrics.get("epoch", 0)),
                "fail_reason": (study_trial.user_attrs.get("fail_reason") if study_trial else None) or error,
                **{f"param_{k}": v for k, v in sorted(result.config.items())},
                "params": dict(result.config),
                "checkpoint_path": metrics.get("checkpoint_path"),
            }
        )
    table = pd.DataFrame(rows).sort_values(METRIC, ascending=False, na_position="last")
    atomic_write(out / run_folder.TRIALS, lambda tmp: table.drop(columns=INTERNAL).to_csv(tmp, index=False))
    return table


def tag_trial_states(tracker: Tracker | None, table: pd.DataFrame) -> None:
    """Each trial's run gets the Optuna study's final state (and its failure's reason) as tags."""
    if tracker is None:
        return
    with tracker.guard() as on:
        if not on:
            return
        for _, row in table.iterrows():
            run_id = tracker.child_id(f"trial_{row['params']['study_trial']}")
            if run_id is not None:
                tracker.client.set_tag(run_id, "state", row["state"])
                if row["fail_reason"]:
                    tracker.client.set_tag(run_id, "fail_reason", str(row["fail_reason"])[:5000])


def best_checkpoint(best: pd.Series, trials_storage: str) -> Checkpoint:
    """The best trial's latest k-fold checkpoint, read from the storage the trial wrote to: the one its
    last report named, else the newest in its run folder."""
    path = best.get("checkpoint_path")
    checkpoint = checkpoint_at(trials_storage, path) if isinstance(path, str) else None
    if checkpoint is None:
        checkpoint = latest_checkpoint(join(trials_storage, trial_run_name(best["params"]["study_trial"])))
    if checkpoint is None:
        raise RunFailed(
            f"best trial {best['trial_id']} has no checkpoint under {trials_storage}: was the storage "
            "moved or pruned by hand? `--resume` with the storage the search wrote to finds it"
        )
    return checkpoint


def best_trial(results: tune.ResultGrid, out: Path, config: Config, tracker: Tracker | None) -> pd.Series:
    """trials.csv and its table on the console; the best trial that ran every epoch, else the best."""
    study, storage = open_run_study(out)
    stale = close_stale(storage, study, {r.config.get("study_trial") for r in results})
    if stale:
        print(f"note: study trial(s) {stale} were left RUNNING by an interrupted search; recorded as FAIL")
    table = trial_table(results, out)
    tag_trial_states(tracker, table)
    finished = table[table["state"] != "FAIL"].dropna(subset=[METRIC])  # a failed trial is no ensemble
    if finished.empty:
        raise RunFailed(
            f"no trial reported a result: every trial failed (trials.csv says why); each trial's "
            f"traceback is in its error.txt under {out / run_folder.TUNE}"
        )
    complete = finished[finished["epochs_run"] >= config.train.epochs]  # a stopped trial lacks members
    best = (complete if not complete.empty else finished).iloc[0]
    print("\n" + table.drop(columns=INTERNAL).to_string(index=False))
    return best
