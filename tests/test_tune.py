"""orchestrator.tune: the search space, PRUNED bookkeeping, a tiny search, and --resume after a kill."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from orchestrator.search import PruningOptunaSearch
from orchestrator.search_space import define_space, params_to_overrides, trial_config
from salt_model import run_folder
from salt_model.config import load_config
from tests.conftest import check_run, records
from tests.processes import run_entry


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


def study_of(out) -> optuna.Study:
    return optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / run_folder.STUDY}")


def check_search_outputs(out, data_root, trials=3, epochs=3, failed=()):
    """trials.csv and the study agree trial by trial: every trial that ran all epochs is COMPLETE, every
    one stopped early is PRUNED, except the study trials in `failed` (FAIL, with a reason)."""
    table = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert len(table) == trials
    assert {
        "trial_id",
        "state",
        "best_val_map",
        "epochs_run",
        "param_schedule",
        "param_lr",
        "param_loss_switch_epoch",
        "fail_reason",
    } <= set(table.columns)
    study = study_of(out)
    assert len(study.trials) == trials
    for row in table.itertuples():
        state = study.trials[int(row.param_study_trial)].state.name
        if row.param_study_trial in failed:
            expected = "FAIL"
            assert row.fail_reason, f"trial {row.trial_id} FAILED without a reason"
        else:
            expected = "COMPLETE" if row.epochs_run == epochs else "PRUNED"
        assert row.state == state == expected, f"trial {row.trial_id}: {row.epochs_run} epochs, {row.state}"
    cv = json.loads((out / "cv.json").read_text())
    best = table[table["trial_id"] == cv["best_trial"]].iloc[0]
    assert (
        best["state"] == "COMPLETE"
        and best["best_val_map"] == table[table["state"] == "COMPLETE"]["best_val_map"].max()
    )
    assert len(cv["fold_scores"]) == 2
    from salt_model.data.loading import load_split

    sub = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(sub["id"]) == list(load_split(data_root, "test").ids)
    return table, study


@pytest.mark.ray
def test_the_search_records_complete_pruned_and_failed_trials_and_submits_the_best(
    search_run, tiny_data_root
):
    out, _, _ = search_run
    table, study = check_search_outputs(out, tiny_data_root, trials=4, failed={3})
    states = [t.state.name for t in study.trials]
    assert states[2] == "PRUNED" and set(study.trials[2].intermediate_values) == {1}  # stopped at rung 1
    assert "COMPLETE" in states[:2]
    check_trials_keep_only_their_last_checkpoint(out, folds=2, skip={3})


@pytest.mark.ray
def test_a_trial_with_a_nan_loss_fails_at_once_with_its_reason_and_the_search_goes_on(search_run):
    out, _, markers = search_run
    assert "NaN weights after 1 batches of epoch 2" in (markers / "fault-3").read_text()
    failed = study_of(out).trials[3]
    assert failed.state.name == "FAIL"
    assert "fold 1: FloatingPointError: loss is nan" in failed.user_attrs["fail_reason"]
    # not retried: a retry would find the fault spent (marker) and train the trial's 3 epochs
    epochs = [p for p in records(out / run_folder.PROGRESS) if p.get("study_trial") == 3]
    assert [p["epoch"] for p in epochs] == [1]  # epoch 2 never reported
    assert failed.intermediate_values == {1: pytest.approx(epochs[0]["best_val_map"])}
    table = pd.read_csv(out / "trials.csv", keep_default_na=False)
    row = table[table["param_study_trial"] == 3].iloc[0]
    assert row["state"] == "FAIL" and "FloatingPointError" in row["fail_reason"]


@pytest.mark.ray
def test_best_config_is_the_best_trials_searched_parameters(search_run):
    out, _, _ = search_run
    cv = json.loads((out / "cv.json").read_text())
    table = pd.read_csv(out / "trials.csv", keep_default_na=False)
    number = int(table[table["trial_id"] == cv["best_trial"]].iloc[0]["param_study_trial"])
    params = study_of(out).trials[number].params
    best = load_config(out / "best_config.json")
    assert best == trial_config(load_config(out / "config.json"), params)
    assert best.schedule.name == params["schedule"] and best.schedule.lr == pytest.approx(params["lr"])
    assert best.train.loss_switch_epoch == params["loss_switch_epoch"]
    assert cv["best_params"]["study_trial"] == number


@pytest.mark.ray
@pytest.mark.slow
def test_best_config_trains_with_orchestrator_train(search_run, tiny_data_root, tmp_path):
    out, _, _ = search_run
    run = tmp_path / "again"
    args = ["--config", str(out / "best_config.json"), "--data", str(tiny_data_root), "--out", str(run)]
    check_run(run_entry("orchestrator.train", args), "orchestrator.train --config best_config.json")
    assert json.loads((run / "cv.json").read_text())["config"] == json.loads(
        (out / "best_config.json").read_text()
    )


def check_trials_keep_only_their_last_checkpoint(out, folds, skip=()):
    """Every stopped or finished trial: one checkpoint, members intact, no optimizer state. A failed
    trial's checkpoints are left whole (--resume reads them)."""
    import torch

    runs = sorted((out / run_folder.TRIAL_RUNS).glob("trial-*"))
    assert len(runs) == len(study_of(out).trials)
    for run in runs:
        if int(run.name.removeprefix("trial-")) in skip:
            continue
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
    result = run_entry(
        "orchestrator.tune", ["--data", str(tiny_data_root), "--out", str(tmp_path / "none"), "--resume"]
    )
    assert result.returncode == 2
    assert "no interrupted search" in result.stderr and "Traceback" not in result.stderr
