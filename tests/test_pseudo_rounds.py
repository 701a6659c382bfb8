"""Pseudo-label rounds end to end: `orchestrator.train` with `pseudo.rounds=1` on generated data, each
run a subprocess with its own local Ray (private RAY_TMPDIR), as a user runs it.

What is asserted comes from the run's own records: the saved test probabilities and the rule decide
which tiles round 1 may keep; progress.jsonl says how many tiles each fold trained on per epoch and
which epoch each fold's attempt resumed after.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import optuna
import pandas as pd
import pytest

from salt_model import run_folder
from salt_model.data.loading import load_split
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.training.pseudo_labels import PseudoLabels, confident_tiles
from tests.conftest import ROUND_1, RULE, SEARCH, check_run, records, tiny_args
from tests.processes import child_env, run_entry, start, stop
from tests.test_faults_driver import read_until

pytestmark = pytest.mark.ray


def test_extending_a_finished_run_keeps_round_0_and_trains_round_1(pseudo_run):
    out, round_0, result = pseudo_run
    assert records(out / run_folder.PROGRESS) == round_0, "round 0 was trained again"
    assert "round 0: finished earlier, kept" in result.stdout
    progress = records(out / "round_1" / run_folder.PROGRESS)
    assert [p["epoch"] for p in progress] == [1, 2, 3]  # pseudo.epochs=3; round 0 trained 2
    assert [p["loss"] for p in progress] == ["bce", "bce", "lovasz"]  # round 0's one Lovasz epoch last


def test_round_1_keeps_exactly_the_test_tiles_the_rule_passes(pseudo_run, tiny_data_root):
    out, _, _ = pseudo_run
    test = load_split(tiny_data_root, "test")
    saved = np.load(out / run_folder.TEST_PROBS)  # round 0's ensemble on the test tiles
    assert saved["ids"].tolist() == test.ids.tolist()
    empty = saved.get("empty", None)
    keep = confident_tiles(saved["probs"], empty, **RULE)
    assert 0 < keep.sum() < len(keep), f"the rule kept {keep.sum()} of {len(keep)}: loosen or tighten RULE"
    labels = PseudoLabels.load(out / "round_1" / run_folder.PSEUDO)
    assert labels.ids.tolist() == test.ids[keep].tolist()
    assert np.array_equal(labels.images, test.images[keep])
    thresholds = Thresholds(**json.loads((out / "cv.json").read_text())["thresholds"])  # round 0's
    expected = binarize(saved["probs"][keep], None if empty is None else empty[keep], thresholds)
    assert np.array_equal(labels.masks, expected.astype(np.uint8))


def test_pseudo_tiles_are_trained_on_and_never_held_out(pseudo_run, tiny_data_root):
    out, round_0, _ = pseudo_run
    train = load_split(tiny_data_root, "train")
    test_ids = set(load_split(tiny_data_root, "test").ids)
    folds = pd.read_csv(out / run_folder.FOLDS)
    assert not test_ids & set(folds["id"]), "a test tile is in a fold"
    oof = np.load(out / "round_1" / run_folder.OOF)
    assert oof["ids"].tolist() == train.ids.tolist()  # round 1's OOF: the labelled tiles, nothing else
    kept = len(PseudoLabels.load(out / "round_1" / run_folder.PSEUDO).ids)
    train_part = [int((folds["fold"] != r).sum()) for r in range(3)]
    for epoch in round_0:
        assert [epoch[f"train_tiles_fold{r}"] for r in range(3)] == train_part
    for epoch in records(out / "round_1" / run_folder.PROGRESS):
        assert [epoch[f"train_tiles_fold{r}"] for r in range(3)] == [n + kept for n in train_part]


def test_every_round_is_recorded_and_the_submission_is_the_chosen_rounds(pseudo_run):
    out, _, result = pseudo_run
    rounds = json.loads((out / "rounds.json").read_text())
    assert json.loads((out / "cv.json").read_text())["pseudo"] == rounds
    assert [e["round"] for e in rounds["rounds"]] == [0, 1]
    for entry in rounds["rounds"]:
        cv = json.loads((out / entry["folder"] / "cv.json").read_text())
        assert entry["oof_score"] == cv["oof_score"] and entry["thresholds"] == cv["thresholds"]
    kept = rounds["rounds"][1]["pseudo"]
    assert kept["kept"] == len(PseudoLabels.load(out / "round_1" / run_folder.PSEUDO).ids)
    assert {k: kept[k] for k in RULE} == RULE
    best = max(rounds["rounds"], key=lambda e: (e["oof_score"], -e["round"]))["round"]
    assert rounds["submission_round"] == best and rounds["submission_rule"] == "best"
    source = out / ("round_0_submission.csv" if best == 0 else "round_1/submission.csv")
    assert (out / "submission.csv").read_text() == source.read_text()
    assert f"submission.csv: round {best}" in result.stdout
    assert "Pseudo-label rounds" in (out / "report" / "index.html").read_text()
    assert (out / "round_1" / "report" / "index.html").exists()  # each round has its own report
    assert "warning" not in result.stdout


@pytest.mark.faults
@pytest.mark.slow
def test_a_run_killed_in_round_1_resumes_in_round_1(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(tiny_data_root, out, "--epochs", "4", overrides=ROUND_1)
    round_1 = out / "round_1" / run_folder.PROGRESS
    env = child_env()
    proc = start([sys.executable, "-m", "orchestrator.train", *args], env)
    try:
        first = read_until(proc, lambda _: len(records(round_1)) >= 2)
    finally:
        stop(proc, env["RAY_TMPDIR"])  # the driver and every Ray process of its run: nothing writes after
    round_0, before = records(out / run_folder.PROGRESS), records(round_1)
    assert [p["epoch"] for p in round_0] == [1, 2, 3, 4], "".join(first[-30:])
    assert 2 <= len(before) < 4 and not (out / "round_1" / "cv.json").exists()

    resumed = run_entry("orchestrator.train", args, timeout=900)
    check_run(resumed, "the resumed run")
    assert records(out / run_folder.PROGRESS) == round_0, "round 0 was trained again"
    after = records(round_1)[len(before) :]
    assert [p["epoch"] for p in before + after] == [1, 2, 3, 4]  # no epoch of round 1 trained twice
    last = before[-1]["epoch"]
    assert all(after[0][f"resumed_after_fold{r}"] == last for r in range(3))
    assert "round 0: finished earlier, kept" in resumed.stdout
    assert (out / "round_1" / "cv.json").exists() and (out / "submission.csv").exists()


@pytest.mark.slow
def test_a_search_draws_the_pseudo_rule_and_each_trial_trains_on_its_own_tiles(
    train_run, tiny_data_root, tmp_path
):
    source, _ = train_run  # a finished run: its ensemble pseudo-labels the trials' test tiles
    out = tmp_path / "search"
    space = ["search.pseudo=true", "search.pseudo_confidence_low=0.51", "search.pseudo_confidence_high=0.6"]
    overrides = [*SEARCH, "search.trials=2", "search.early_stopping=false", "pseudo.min_fraction=0.5", *space]
    args = [*tiny_args(tiny_data_root, out, overrides=overrides), "--pseudo-from", str(source)]
    check_run(run_entry("orchestrator.tune", args, timeout=900), "orchestrator.tune --pseudo-from")

    saved = np.load(source / run_folder.TEST_PROBS)  # written into RUN by the search
    empty = saved.get("empty", None)
    folds = pd.read_csv(out / run_folder.FOLDS)["fold"]
    train_part = [int((folds != r).sum()) for r in range(2)]
    progress = records(out / run_folder.PROGRESS)
    study = optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / run_folder.STUDY}")
    kept_counts = []
    for trial in study.trials:
        c, weight = trial.params["pseudo_confidence"], trial.params["pseudo_weight"]
        assert 0.51 <= c <= 0.6 and 0.25 <= weight <= 1.0
        kept = int(confident_tiles(saved["probs"], empty, round(1 - c, 9), c, 0.5).sum())
        kept_counts.append(kept)
        epochs = [p for p in progress if p["trial_id"] == trial.user_attrs["tune_trial_id"]]
        assert epochs and all(
            [p[f"train_tiles_fold{r}"] for r in range(2)] == [n + kept for n in train_part] for p in epochs
        ), (c, kept, epochs[0])
    best = json.loads((out / "best_config.json").read_text())["pseudo"]
    drawn = {round(t.params["pseudo_confidence"], 6) for t in study.trials}
    assert round(best["high"], 6) in drawn and round(1 - best["low"], 6) == round(best["high"], 6)
    assert json.loads((out / "cv.json").read_text())["pseudo_from"] == str(source.resolve())
    print(f"tiles kept per trial: {kept_counts}")
