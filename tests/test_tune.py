"""orchestrator.tune: the search space, PRUNED bookkeeping, a tiny search, and --resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from orchestrator.search import PruningOptunaSearch, define_space, params_to_overrides, trial_config
from salt_model.config import load_config
from tests.conftest import TINY, tiny_args

SEARCH = [
    *TINY,
    "data.folds=2",
    "train.epochs=3",
    "search.trials=3",
    "search.switch_low=1",
    "search.grace_epochs=1",
    "search.max_concurrent=1",
]


def sample(config, seed=0, n=30):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trials = []
    for _ in range(n):
        trial = study.ask()
        define_space(trial, config.search, config.train.epochs)
        trials.append(trial.params)
    return trials


def test_every_sampled_trial_is_a_valid_config_within_the_bounds():
    config = load_config(None, ["train.epochs=8", "search.switch_low=2"])
    seen = set()
    for params in sample(config):
        seen.add(params["schedule"])
        assert 2 <= params["loss_switch_epoch"] <= 7  # bounded by the epoch budget
        cfg = trial_config(config, params)  # validates
        assert cfg.schedule.name == params["schedule"]
        assert cfg.schedule.lr == pytest.approx(params["lr"])
        own = {k for k in params if k.split("_")[0] in ("cyclic", "cosine", "onecycle", "step")}
        assert all(k.startswith(params["schedule"]) for k in own), f"{params} draws another schedule's params"
    assert seen == set(config.search.schedules)


def test_overrides_map_each_schedule_onto_the_config():
    o = params_to_overrides(
        {
            "schedule": "cyclic",
            "lr": 0.01,
            "cyclic_min_lr_ratio": 10.0,
            "cyclic_cycle_epochs": 4,
            "loss_switch_epoch": 3,
        }
    )
    assert o["schedule.max_lr"] == 0.01 and o["schedule.min_lr"] == pytest.approx(0.001)
    assert o["schedule.cycle_epochs"] == 4.0 and o["train.loss_switch_epoch"] == 3
    o = params_to_overrides(
        {"schedule": "step", "lr": 0.01, "step_epochs": 2, "step_gamma": 0.3, "loss_switch_epoch": 1}
    )
    assert o["schedule.step_epochs"] == 2.0 and o["schedule.gamma"] == 0.3


def test_trials_stopped_early_are_pruned_in_the_study_and_full_ones_complete():
    config = load_config(None, ["train.epochs=4"])
    searcher = PruningOptunaSearch(
        lambda t: define_space(t, config.search, 4), metric="best_val_map", mode="max", epochs=4, seed=0
    )
    for trial_id in ("a", "b", "c"):
        assert searcher.suggest(trial_id)
    searcher.on_trial_result("a", {"best_val_map": 0.3, "epoch": 1})
    searcher.on_trial_complete("a", {"best_val_map": 0.35, "epoch": 2})  # ASHA stopped it at epoch 2
    searcher.on_trial_complete("b", {"best_val_map": 0.6, "epoch": 4})
    searcher.on_trial_complete("c", None, error=True)
    states = {t.user_attrs["tune_trial_id"]: t for t in searcher.study.trials}
    assert states["a"].state == optuna.trial.TrialState.PRUNED
    assert states["a"].intermediate_values == {1: 0.3, 2: 0.35}
    assert states["b"].state == optuna.trial.TrialState.COMPLETE and states["b"].value == 0.6
    assert states["c"].state == optuna.trial.TrialState.FAIL


def check_search_outputs(out, data_root, trials=3, epochs=3):
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == trials
    assert {
        "trial_id",
        "state",
        "best_val_map",
        "epochs_run",
        "param_schedule",
        "param_lr",
        "param_loss_switch_epoch",
    } <= set(table.columns)
    study = optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == trials
    for row in table.itertuples():
        expected = "COMPLETE" if row.epochs_run == epochs else "PRUNED"
        assert row.state == expected, f"trial {row.trial_id} ran {row.epochs_run} epochs but is {row.state}"
    best = json.loads((out / "best_config.json").read_text())
    assert best["train"]["loss_switch_epoch"] == int(table.iloc[0]["param_loss_switch_epoch"])
    cv = json.loads((out / "cv.json").read_text())
    assert len(cv["fold_scores"]) == 2 and cv["best_trial"] == table.iloc[0]["trial_id"]
    from salt_model.data import load_split

    sub = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(sub["id"]) == list(load_split(data_root, "test").ids)


@pytest.mark.ray
def test_a_tiny_search_ends_with_a_submission(ray_cluster, tiny_data_root, tmp_path):
    from orchestrator.tune import main

    out = tmp_path / "search"
    overrides = [*SEARCH, "schedule.name=cosine", "schedule.cycle_epochs=1", "train.snapshots=2"]
    assert main(tiny_args(tiny_data_root, out, overrides=overrides)) == 0
    check_search_outputs(out, tiny_data_root)
    check_trials_keep_only_their_last_checkpoint(out, folds=2)
    # best_config.json reproduces the best trial with orchestrator.train
    config = load_config(out / "best_config.json")
    assert config.train.epochs == 3 and config.data.folds == 2


def check_trials_keep_only_their_last_checkpoint(out, folds):
    """Every stopped or finished trial: one checkpoint, members intact, no optimizer state."""
    import torch

    runs = sorted((out / "trials").glob("trial-*"))
    assert len(runs) == 3
    for run in runs:
        checkpoints = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())  # not Ray's .json
        assert len(checkpoints) == 1, (run, checkpoints)
        for fold in range(folds):
            resume = torch.load(checkpoints[0] / f"fold_{fold}.pt", weights_only=True)
            assert resume["resumable"] is False and "optimizer" not in resume and "scaler" not in resume
            members = torch.load(checkpoints[0] / f"fold_{fold}_members.pt", weights_only=True)
            assert "best" in {m["name"] for m in members["members"]}
            if resume["epoch"] == 3:  # finished: its last weights are a member, so the model went too
                assert "model" not in resume and "last" in {m["name"] for m in members["members"]}
            else:  # stopped by ASHA: keeps its last weights
                assert "model" in resume


def test_snapshots_are_capped_at_the_cycle_ends_of_each_trial_schedule():
    base = load_config(
        None, ["schedule.name=cosine", "schedule.cycle_epochs=2", "train.epochs=8", "train.snapshots=3"]
    )
    params = {
        "schedule": "onecycle",
        "lr": 1e-3,
        "loss_switch_epoch": 2,
        "onecycle_min_lr_ratio": 10.0,
        "onecycle_pct_start": 0.3,
    }
    assert trial_config(base, params).train.snapshots == 0
    params = {
        "schedule": "cosine",
        "lr": 1e-3,
        "loss_switch_epoch": 2,
        "cosine_min_lr_ratio": 10.0,
        "cosine_cycle_epochs": 4,
    }
    assert trial_config(base, params).train.snapshots == 2  # cycle ends 4 and 8
    params["cosine_cycle_epochs"] = 2
    assert trial_config(base, params).train.snapshots == 3


def test_resume_without_a_search_is_a_clear_error(tmp_path, tiny_data_root):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.tune",
            "--data",
            str(tiny_data_root),
            "--out",
            str(tmp_path / "none"),
            "--resume",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no interrupted search" in result.stderr and "Traceback" not in result.stderr
