"""The search space of orchestrator.tune, and what a trial's parameters make of the base config.

The space is define-by-run (Optuna's own API): the LR schedule is a categorical, and each schedule
draws only its own parameters, so TPE models them conditionally. The BCE -> Lovasz switch epoch is
bounded by the epoch budget. With search.pseudo (and `--pseudo-from RUN`) every trial also draws the
pseudo-label confidence and weight.
"""

from __future__ import annotations

from typing import Any

import optuna

from salt_model.config import Config, SearchConfig
from salt_model.training.schedules import cycle_end_epochs


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
    if search.pseudo:  # the pseudo-label rule and weight (orchestrator.tune --pseudo-from RUN)
        trial.suggest_float("pseudo_confidence", search.pseudo_confidence_low, search.pseudo_confidence_high)
        trial.suggest_float("pseudo_weight", search.pseudo_weight_low, search.pseudo_weight_high, log=True)


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
    if "pseudo_confidence" in params:
        overrides["pseudo.high"] = params["pseudo_confidence"]
        overrides["pseudo.low"] = round(1.0 - params["pseudo_confidence"], 9)
    if "pseudo_weight" in params:
        overrides["pseudo.weight"] = params["pseudo_weight"]
    return overrides


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The base config with a trial's parameters; train.snapshots is capped at the cycle ends the
    trial's schedule has (none for onecycle/step/constant), so such trials still run."""
    overrides = params_to_overrides(params)
    config = base.with_overrides({**overrides, "train.snapshots": 0})
    ends = cycle_end_epochs(config.train.epochs, config.schedule)
    return config.with_overrides({"train.snapshots": min(base.train.snapshots, len(ends))})


def trial_run_name(number: int) -> str:
    """The k-fold Ray Train run (and checkpoint folder) of Optuna trial `number`."""
    return f"trial-{number}"
