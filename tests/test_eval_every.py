"""train.eval_every: exactly the configured epochs plus the last, the snapshot epochs and the rungs are
evaluated, TTA only where a member is scored, training is the same at any cadence; and a tiny search
with eval_every > 1 still prunes at ASHA's rungs (Ray)."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from salt_model import run_folder
from salt_model.data.folds import make_folds
from salt_model.data.loading import load_split
from salt_model.training import fold_loop
from salt_model.training.cadence import asha_rungs, eval_epochs
from salt_model.training.fold_loop import train_fold
from tests.conftest import TINY, tiny_args

CPU = torch.device("cpu")
# 6 epochs, cosine cycles end at 3 and 6: both are snapshot members
CADENCE = [
    "train.epochs=6",
    "schedule.name=cosine",
    "schedule.cycle_epochs=3",
    "train.snapshots=2",
    "train.eval_every=4",
    "train.tta_members_only=true",
]


def test_the_evaluated_epochs_are_the_cadence_plus_last_snapshots_and_extra():
    from salt_model.config import load_config

    config = load_config(None, CADENCE)
    assert eval_epochs(config) == {3, 4, 6}
    assert eval_epochs(config, extra=(2, 9)) == {2, 3, 4, 6}  # 9 is past the run
    assert eval_epochs(config.with_overrides({"train.eval_every": 1})) == set(range(1, 7))
    search = load_config(None, ["train.epochs=12", "search.grace_epochs=3"]).search
    assert asha_rungs(search, 12) == [3, 6]


@pytest.fixture(scope="module")
def runs(tiny_config, tiny_data_root, monkeypatch_module):
    """Fold 0 at the cadence (ASHA-like extra epoch 2), and at every epoch; the TTA of each evaluation."""
    calls: list[bool] = []
    real = fold_loop.predict_probs

    def spy(model, images, config, device, tta=True, **kw):
        calls.append(tta)
        return real(model, images, config, device, tta=tta, **kw)

    monkeypatch_module.setattr(fold_loop, "predict_probs", spy)
    data = load_split(tiny_data_root, "train").subset(list(range(24)))  # evaluations are counted, not scored
    folds = make_folds(data.masks, 3, tiny_config.data.fold_seed)
    out = {}
    for name, extra in (("cadence", []), ("every", ["train.eval_every=1", "train.tta_members_only=false"])):
        config = tiny_config.with_overrides([*CADENCE, *extra])
        reports = []
        calls.clear()
        result = train_fold(
            config,
            data,
            0,
            folds=folds,
            device=CPU,
            eval_at=(2,),
            report=lambda m, save, reports=reports: reports.append(m),
        )
        out[name] = (result, reports, list(calls))
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_only_the_configured_epochs_last_snapshots_and_rungs_are_evaluated(runs):
    result, reports, tta = runs["cadence"]
    assert [m["epoch"] for m in reports] == [1, 2, 3, 4, 5, 6]  # every epoch still reports (a barrier)
    assert [m["epoch"] for m in reports if "val_map" in m] == [2, 3, 4, 6]
    for m in reports:
        assert ("val_loss" in m) == ("val_map" in m) and "train_loss" in m
    assert "best_val_map" not in reports[0]  # nothing evaluated yet
    scores = {m["epoch"]: m["val_map"] for m in reports if "val_map" in m}
    assert reports[4]["best_val_map"] == max(v for e, v in scores.items() if e <= 5)
    assert tta == [False, True, False, True]  # epochs 2, 3, 4, 6: TTA only at the members (3 and 6)
    assert set(result.members) == {"best", "snap3", "snap6", "last"}
    assert result.members["snap3"].score == scores[3] and result.best_epoch in scores


def test_evaluation_cadence_never_changes_the_training(runs):
    cadence, every = runs["cadence"][0], runs["every"][0]
    assert runs["every"][2] == [True] * 6
    assert [m["train_loss"] for m in runs["cadence"][1]] == [m["train_loss"] for m in runs["every"][1]]
    for key, value in cadence.members["last"].state.items():
        assert torch.equal(value, every.members["last"].state[key]), key


@pytest.mark.ray
@pytest.mark.slow
def test_a_tiny_search_with_eval_every_still_prunes_at_the_rungs(ray_cluster, tiny_data_root, tmp_path):
    from orchestrator.tune import main

    out = tmp_path / "search"
    overrides = [
        *TINY,
        "data.folds=2",
        "train.epochs=5",
        "train.eval_every=5",
        "search.trials=3",
        "search.switch_low=1",
        "search.grace_epochs=1",  # rungs at epochs 1, 2 and 4; epoch 3 is never evaluated
        "search.max_concurrent=1",
    ]
    assert main(tiny_args(tiny_data_root, out, overrides=overrides)) == 0
    study = optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / run_folder.STUDY}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states, [(t.state, t.intermediate_values) for t in study.trials]
    for trial in study.trials:
        seen = sorted(trial.intermediate_values)
        last = seen[-1]
        assert seen == [e for e in (1, 2, 4, 5) if e <= last], seen  # a fold-mean metric at every rung
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert last in (1, 2, 4)  # stopped at a rung
    progress = [json.loads(line) for line in (out / run_folder.PROGRESS).read_text().splitlines()]
    assert progress and all(p["epoch"] != 3 for p in progress)  # no unevaluated epoch reached Tune


def test_an_unevaluated_epoch_is_checkpointed_and_resumed_from(tiny_config, tiny_data_root, tmp_path):
    """eval_every > 1: epoch 1 is trained, not scored, and still checkpointed (every epoch reports)."""
    from salt_model.training.checkpoint import load_checkpoint
    from salt_model.training.fold_loop import checkpoint_name

    config = tiny_config.with_overrides(["train.epochs=2", "train.eval_every=2", "train.eval_tta=false"])
    data = load_split(tiny_data_root, "train").subset(list(range(24)))
    saved = []

    def report(metrics, save):
        saved.append(save(tmp_path / f"epoch_{metrics['epoch']}"))

    train_fold(config, data, 0, report=report, device=CPU)
    first = load_checkpoint(tmp_path / "epoch_1" / checkpoint_name(0))
    assert first["epoch"] == 1 and first["best_score"] is None  # nothing scored yet
    result = train_fold(config, data, 0, resume=first, device=CPU)
    assert [h["epoch"] for h in result.history] == [1, 2] and result.best_epoch == 2
