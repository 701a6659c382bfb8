"""The search space and the Optuna searcher of orchestrator.tune.

The space is define-by-run (Optuna's own API): the LR schedule is a categorical, and each schedule
draws only its own parameters, so TPE models them conditionally. The BCE -> Lovasz switch epoch is
bounded by the epoch budget.

Ray's OptunaSearch records a trial that ASHA stopped early as COMPLETE with its early value, which
tells TPE that a half-trained run is a finished one. `PruningOptunaSearch` records it as PRUNED,
reports intermediate values on our own `epoch` (Tune's training_iteration restarts after a restore),
and tags each Optuna trial with its Tune trial id.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from salt_model.config import Config, SearchConfig
from salt_model.schedules import cycle_end_epochs

METRIC = "best_val_map"  # mean over folds of each fold's best held-out competition metric so far


def define_space(trial: optuna.Trial, search: SearchConfig, epochs: int) -> None:
    """Optuna define-by-run space: a schedule, its own parameters, the lr and the loss switch."""
    schedule = trial.suggest_categorical("schedule", list(search.schedules))
    trial.suggest_float("lr", search.lr_low, search.lr_high, log=True)
    cycle_high = max(search.cycle_epochs_low, min(search.cycle_epochs_high, epochs))
    if schedule in ("cyclic", "cosine", "onecycle"):
        trial.suggest_float(
            f"{schedule}_min_lr_ratio", search.min_lr_ratio_low, search.min_lr_ratio_high, log=True
        )
    if schedule in ("cyclic", "cosine"):
        trial.suggest_int(f"{schedule}_cycle_epochs", search.cycle_epochs_low, cycle_high)
    if schedule == "step":
        trial.suggest_int("step_epochs", 1, max(1, epochs // 2))
        trial.suggest_float("step_gamma", 0.1, 0.7)
    if schedule == "onecycle":
        trial.suggest_float("onecycle_pct_start", 0.1, 0.5)
    switch_high = max(search.switch_low, min(search.switch_high, epochs - 1))
    trial.suggest_int("loss_switch_epoch", search.switch_low, switch_high)


def params_to_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters -> dotted config overrides."""
    schedule, lr = params["schedule"], params["lr"]
    overrides: dict[str, Any] = {
        "schedule.name": schedule,
        "schedule.lr": lr,
        "schedule.min_lr": min(lr, 1e-5),
        "train.loss_switch_epoch": params["loss_switch_epoch"],
    }
    if f"{schedule}_min_lr_ratio" in params:
        overrides["schedule.min_lr"] = lr / params[f"{schedule}_min_lr_ratio"]
    if schedule == "cyclic":
        overrides["schedule.max_lr"] = lr  # triangular2 between lr / ratio and lr
    if f"{schedule}_cycle_epochs" in params:
        overrides["schedule.cycle_epochs"] = float(params[f"{schedule}_cycle_epochs"])
    if schedule == "step":
        overrides["schedule.step_epochs"] = float(params["step_epochs"])
        overrides["schedule.gamma"] = params["step_gamma"]
    if schedule == "onecycle":
        overrides["schedule.pct_start"] = params["onecycle_pct_start"]
    return overrides


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The base config with a trial's parameters; train.snapshots is capped at the cycle ends the
    trial's schedule has (none for onecycle/step/constant), so such trials still run."""
    overrides = params_to_overrides(params)
    config = base.with_overrides({**overrides, "train.snapshots": 0})
    ends = cycle_end_epochs(config.train.epochs, config.schedule)
    return config.with_overrides({"train.snapshots": min(base.train.snapshots, len(ends))})


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials stopped before the last epoch as PRUNED, not COMPLETE."""

    def __init__(self, *args, epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = epochs

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = bool(result) and not error and int(result.get("epoch", 0)) < self.epochs
        if not stopped_early or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial = self._ot_trials[trial_id]
        if self.metric in result:  # Tune hands the last result to on_trial_complete, not on_trial_result
            ot_trial.report(result[self.metric], int(result["epoch"]))
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
