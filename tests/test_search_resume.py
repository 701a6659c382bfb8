"""PruningOptunaSearch after a driver kill: the study ahead of Tune's saved state, reconciled.

No Ray cluster: the searcher is driven the way Tune drives it (suggest / on_trial_result /
on_trial_complete / save / restore), with a kill simulated by restoring an older saved state.
"""

from __future__ import annotations

import functools
import pickle
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.search import (
    PruningOptunaSearch,
    StudyStopper,
    close_stale,
    live_trial,
    resumed_into,
)
from orchestrator.search_space import define_space
from orchestrator.study import open_run_study
from salt_model import run_folder
from salt_model.config import load_config

EPOCHS = 4


def make(tmp_path, failure_reason=None):
    config = load_config(None, [f"train.epochs={EPOCHS}"])
    return PruningOptunaSearch(
        functools.partial(define_space, search=config.search, epochs=EPOCHS),
        metric="best_val_map",
        mode="max",
        epochs=EPOCHS,
        out=tmp_path,
        study_name="s",
        seed=0,
        failure_reason=failure_reason,
    )


def killed_and_restored(searcher, saved_state, tmp_path):
    """What Tune does on --resume: unpickle the searcher from tuner.pkl, restore its last saved state."""
    restored = pickle.loads(pickle.dumps(searcher))
    path = tmp_path / "searcher-state.pkl"
    path.write_bytes(saved_state)
    restored.restore(str(path))
    return restored


def saved(searcher, tmp_path) -> bytes:
    path = tmp_path / "save.pkl"
    searcher.save(str(path))
    return path.read_bytes()


def test_the_optuna_trial_contract_the_searcher_relies_on(tmp_path):
    # live_trial builds a reportable Trial from a trial's number through the storage's public trial-id
    # lookup; if a new Optuna changes that, this test fails before a search does.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.db'}")
    optuna.create_study(storage=storage, study_name="other").ask()  # trial ids are not numbers
    study = optuna.create_study(storage=storage, study_name="c", direction="maximize")
    asked = study.ask()
    asked.suggest_float("x", 0, 1)
    trial = live_trial(storage, study, asked.number)
    trial.report(0.5, 3)
    trial.set_user_attr("k", "v")
    assert study.trials[0].intermediate_values == {3: 0.5} and study.trials[0].user_attrs["k"] == "v"
    study.tell(0, 0.7)
    study.tell(0, state=TrialState.PRUNED, skip_if_finished=True)  # a second tell is skipped, not raised
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_resumed_search_adopts_orphans_and_never_tells_twice(tmp_path):
    searcher = make(tmp_path)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert (a["study_trial"], b["study_trial"]) == (0, 1)
    searcher.on_trial_result("a", {"best_val_map": 0.4, "epoch": 1})
    state = saved(searcher, tmp_path)  # Tune's last save: a and b running

    # after the save and before the kill: b is stopped by ASHA at epoch 2, c is asked and runs
    searcher.on_trial_complete("b", {"best_val_map": 0.3, "epoch": 2})
    c = searcher.suggest("c")
    searcher.on_trial_result("c", {"best_val_map": 0.2, "epoch": 1})

    resumed = killed_and_restored(searcher, state, tmp_path)
    # Tune resumes a and b (its saved state had them running) and asks for one more trial
    # (it forgot c): that trial adopts c's Optuna trial, so its k-fold run resumes c's checkpoints
    d = resumed.suggest("d")
    assert d == c and d["study_trial"] == 2
    assert resumed.suggest("a") == a

    stopper = StudyStopper(tmp_path, "s")
    # b resumed: the study already says PRUNED at epoch 2, so Tune stops it there
    assert stopper("b", {"config": b, "epoch": 2, "best_val_map": 0.3})
    assert not stopper("a", {"config": a, "epoch": 2, "best_val_map": 0.5})
    resumed.on_trial_complete("b", {"best_val_map": 0.3, "epoch": 2})  # already PRUNED: no raise
    resumed.on_trial_result("d", {"best_val_map": 0.2, "epoch": 1})  # already reported: skipped
    resumed.on_trial_complete("a", {"best_val_map": 0.6, "epoch": EPOCHS})
    resumed.on_trial_complete("d", {"best_val_map": 0.5, "epoch": EPOCHS})

    trials = resumed.study.trials
    assert len(trials) == 3  # no duplicate
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert trials[1].intermediate_values == {2: 0.3}
    assert trials[2].user_attrs["tune_trial_id"] == "d"  # the Tune trial that adopted it
    study, storage = open_run_study(tmp_path, "s")
    assert close_stale(storage, study, {0, 1, 2}) == []


def test_a_failed_trial_records_its_reason_and_stale_running_trials_are_closed(tmp_path):
    searcher = make(tmp_path, failure_reason=lambda n: f"fold 1: FloatingPointError in trial {n}")
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", None, error=True)
    fail = searcher.study.trials[0]
    assert fail.state == TrialState.FAIL
    assert fail.user_attrs["fail_reason"] == "fold 1: FloatingPointError in trial 0"
    study, storage = open_run_study(tmp_path, "s")  # as orchestrator.tune closes them
    assert close_stale(storage, study, {0}) == [1]
    stale = searcher.study.trials[1]
    assert stale.state == TrialState.FAIL and "interrupted search" in stale.user_attrs["fail_reason"]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_sampler_state_survives_a_restore(tmp_path, seed):
    # a restore re-seeding TPE's random start-up trials would re-suggest the first trials' params
    first = make(tmp_path)
    first.sampler = optuna.samplers.TPESampler(seed=seed)
    p0 = first.suggest("a")
    state = saved(first, tmp_path)
    resumed = killed_and_restored(first, state, tmp_path)
    assert resumed.suggest("b")["lr"] != p0["lr"]


def test_a_resume_into_a_new_run_folder_rebuilds_the_study_from_the_saved_state(tmp_path):
    # Tune saves the searcher into its experiment folder (copied to --storage); with the first run
    # folder gone, --resume --out NEW unpickles the searcher and stopper into NEW and rebuilds the study
    first, new = tmp_path / "first", tmp_path / "new"
    first.mkdir()
    searcher = make(first)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    for epoch in (1, 2):
        searcher.on_trial_result("a", {"best_val_map": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("b", {"best_val_map": 0.05, "epoch": 1})  # ASHA stopped it at epoch 1
    state = saved(searcher, tmp_path)
    pickled = pickle.dumps((searcher, StudyStopper(first, "s")))
    shutil.rmtree(first)

    with resumed_into(new):  # what tune.main does around Tuner.restore
        resumed, stopper = pickle.loads(pickled)
    assert resumed.out == stopper.out == new.resolve()
    path = tmp_path / "searcher-state.pkl"
    path.write_bytes(state)
    resumed.restore(str(path))
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{new / run_folder.STUDY}").trials
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.PRUNED]
    assert trials[0].intermediate_values == {1: 0.1, 2: 0.2} and trials[1].intermediate_values == {1: 0.05}
    assert resumed.suggest("a") == a  # the trial map came back too
    assert stopper("b", {"config": b, "epoch": 1, "best_val_map": 0.05})  # reads the rebuilt study
    resumed.on_trial_complete("a", {"best_val_map": 0.3, "epoch": EPOCHS})
    assert resumed.study.trials[0].state == TrialState.COMPLETE and not first.exists()


def test_a_resume_into_a_new_folder_without_a_study_snapshot_is_refused(tmp_path):
    searcher = make(tmp_path / "first")  # its folder never had a study: the state has no snapshot
    searcher.numbers = {"a": 0}
    path = tmp_path / "state.pkl"
    searcher.save(str(path))
    with resumed_into(tmp_path / "new"):
        resumed = pickle.loads(pickle.dumps(searcher))
    with pytest.raises(ValueError, match=r"new/state/optuna.db is missing .* no snapshot of the study"):
        resumed.restore(str(path))
