"""The run report: every image the page references exists and is a real PNG; sections follow the run.

These build a run folder from salt_model's own pieces (no Ray); tests/test_console.py renders the
report of a real tiny orchestrator.train run and rebuilds it with the command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import optuna
import pandas as pd
import pytest

from orchestrator.report import main
from orchestrator.run_report import asha_rungs, build, read_progress, save_oof_truth, snapshot_epochs
from salt_model import run_folder
from salt_model.config import load_config
from salt_model.evaluation import error_analysis
from salt_model.io import atomic_savez

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def referenced_images(page: Path) -> list[Path]:
    names = re.findall(r'<img src="([^"]+)"', page.read_text())
    return [page.parent / n for n in names]


def assert_real_pngs(page: Path) -> list[str]:
    images = referenced_images(page)
    assert images, "the page shows no image"
    for path in images:
        assert path.exists(), f"{page} references missing {path.name}"
        assert path.read_bytes()[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
        picture = cv2.imread(str(path))
        assert picture is not None and min(picture.shape[:2]) > 50, f"{path.name} does not decode"
    return [p.name for p in images]


def fake_run(run: Path, search: bool) -> Path:
    """A finished run folder: config, two trials' progress, OOF arrays, cv.json, and a study."""
    run.mkdir(parents=True)
    config = load_config(None, ["data.folds=3", "train.epochs=4", "train.loss_switch_epoch=2"])
    config.save(run / "config.json")
    rng = np.random.default_rng(0)
    (run / run_folder.PROGRESS).parent.mkdir()
    with open(run / run_folder.PROGRESS, "w") as f:
        for trial, epochs in (("a1", 4), ("b2", 2)):
            for i, epoch in enumerate([1, 2, 2, 3, 4][: epochs + 1]):  # epoch 2 twice: a restarted fold group
                m = {
                    "trial_id": trial,
                    "epoch": epoch,
                    "lr": 0.01 / epoch,
                    "val_map": 0.3 + 0.01 * i,  # the two reports of epoch 2 differ
                    "best_val_map": 0.3 + epoch / 20,
                }
                for r in range(3):
                    m |= {
                        f"train_loss_fold{r}": 1 / epoch,
                        f"val_loss_fold{r}": 1.1 / epoch,
                        f"val_map_fold{r}": 0.3,
                    }
                f.write(json.dumps(m if search else {k: v for k, v in m.items() if k != "trial_id"}) + "\n")
            if not search:
                break
    n = 30
    masks = np.zeros((n, 101, 101), bool)
    masks[:18, 20:60, 10:70] = True
    probs = np.clip(masks * 0.7 + rng.random((n, 101, 101)) * 0.62, 0, 1).astype(np.float32)
    ids = np.array([f"id{i:03d}" for i in range(n)])
    atomic_savez(run / run_folder.OOF, ids=ids, fold=np.arange(n) % 3, probs=probs.astype(np.float16))
    save_oof_truth(run, ids, rng.integers(0, 255, (n, 101, 101), dtype=np.uint8), masks)
    cv = {
        "fold_scores": [0.5, 0.6, 0.55],
        "mean_fold_score": 0.55,
        "best_epochs": [4, 4, 3],
        "thresholds": {"pixel": 0.6, "min_area": 0, "empty": 1.01},
        "oof_score": 0.6,
        "oof_score_default_thresholds": 0.58,
        "config": config.to_dict(),
    }
    if search:
        cv["best_trial"] = "a1"
        storage = f"sqlite:///{run / run_folder.STUDY}"
        study = optuna.create_study(study_name="salt-orchestrator", storage=storage, direction="maximize")
        for i, trial_id in enumerate(("a1", "b2", "c3")):
            trial = study.ask()
            trial.suggest_float("lr", 1e-4, 1e-2, log=True)
            trial.suggest_int("loss_switch_epoch", 1, 3)
            trial.set_user_attr("tune_trial_id", trial_id)
            if trial_id == "b2":
                trial.report(0.4, 2)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, 0.5 + 0.01 * i)
        pd.DataFrame([{"trial_id": "a1", "state": "COMPLETE", "best_val_map": 0.5}]).to_csv(
            run / "trials.csv"
        )
    (run / "cv.json").write_text(json.dumps(cv))
    return run


def test_a_train_report_has_curves_threshold_tiles_and_tables(tmp_path):
    page = build(fake_run(tmp_path / "run", search=False))
    assert page == tmp_path / "run" / "report" / "index.html"
    assert set(assert_real_pngs(page)) == {"curves.png", "threshold.png", "worst_oof.png"}
    text = page.read_text()
    for heading in ("By salt coverage class", "By per-image score", "Empty-image confusion", "Lovasz switch"):
        assert heading in text
    assert "Search" not in text


def test_a_search_report_adds_optuna_history_importances_and_pruning(tmp_path):
    page = build(fake_run(tmp_path / "run", search=True))
    names = set(assert_real_pngs(page))
    assert {"curves.png", "optuna_history.png", "importances.png", "pruning.png"} <= names
    text = page.read_text()
    assert "(trial a1)" in text  # curves of the best trial
    assert re.search(r"<td>b2</td><td>2</td>", text), "the pruned trial and the epoch it stopped at"


def test_a_running_run_gets_a_partial_report_from_the_command_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run", search=False)
    for name in (run_folder.CV, run_folder.OOF, run_folder.OOF_TRUTH):
        (run / name).unlink()
    assert main(["--run", str(run)]) == 0
    page = run / "report" / "index.html"
    assert str(page) in capsys.readouterr().out
    assert assert_real_pngs(page) == ["curves.png"] and "Not collected yet" in page.read_text()


def test_report_of_a_folder_that_is_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a run folder"):
        build(tmp_path)


def test_progress_keeps_the_last_report_of_a_repeated_epoch(tmp_path):
    run = fake_run(tmp_path / "run", search=False)
    progress = read_progress(run)
    assert list(progress["epoch"]) == [1, 2, 3, 4]
    assert progress.set_index("epoch").loc[2, "val_map"] == pytest.approx(0.32)  # the second report, not 0.31


def test_oof_tables_count_every_tile_once():
    truth = np.zeros((6, 101, 101), bool)
    truth[3:, :50] = True  # three empty tiles, three half-covered
    pred = truth.copy()
    pred[0, :3, :3] = True  # a false positive on an empty tile
    pred[5] = False  # missed salt
    conf = error_analysis.empty_confusion(truth, pred)
    assert conf == {"empty_pred_empty": 2, "empty_pred_salt": 1, "salt_pred_empty": 1, "salt_pred_salt": 2}
    rows = {r["class"]: r for r in error_analysis.by_coverage(truth, pred)}
    assert rows["empty"]["tiles"] == 3 and rows["empty"]["score"] == pytest.approx(2 / 3)
    assert sum(r["tiles"] for r in error_analysis.by_score_bucket(truth, pred)) == 6


def test_asha_rungs_follow_the_scheduler_settings():
    config = load_config(None, ["train.epochs=10", "search.grace_epochs=2", "search.reduction_factor=2"])
    assert asha_rungs(config.to_dict()) == [2, 4, 8]


def test_swa_epochs_are_marked_on_the_curves():
    config = load_config(None, ["train.epochs=6"]).to_dict()
    assert snapshot_epochs(config) == []
    config["train"]["swa_epochs"] = 2  # the ensembles feature's key (a dict here: any salt_model version)
    assert snapshot_epochs(config) == [5, 6]
