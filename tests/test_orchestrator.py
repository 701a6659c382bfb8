"""K-fold training on a local Ray cluster (CPU, tiny generated data): folds, failures, submission."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from salt_model import run_folder
from salt_model.data.loading import load_split
from salt_model.data.rle import rle_decode
from tests.processes import run_entry

pytestmark = pytest.mark.ray


def test_kfold_train_ends_with_every_fold_and_a_valid_submission(train_run, tiny_data_root):
    out, result = train_run
    printed = result.stdout

    cv = json.loads((out / "cv.json").read_text())
    variants = cv["variants"]
    assert set(variants) == {"best", "last", "snapshots", "swa", "snapshots+swa"}
    assert not variants["best"]["honest"] and all(variants[n]["honest"] for n in set(variants) - {"best"})
    assert variants["snapshots"]["members"] == [["snap1", "snap2"]] * 3
    honest = {n: v["oof_score"] for n, v in variants.items() if v["honest"]}
    chosen = cv["submission_variant"]
    assert honest[chosen] == max(honest.values())  # the run uses the best honest variant
    assert (
        cv["oof_score"] == variants[chosen]["oof_score"]
        and cv["thresholds"] == variants[chosen]["thresholds"]
    )
    assert len(cv["fold_scores"]) == 3 and cv["fold_scores"] == variants[chosen]["fold_scores"]
    assert cv["mean_fold_score"] == pytest.approx(np.mean(cv["fold_scores"]))
    assert cv["best_epoch_fold_scores"] == variants["best"]["fold_scores"]  # val_map at the best epoch
    assert set(cv["thresholds"]) == {"pixel", "min_area", "empty", "rule"}
    assert cv["oof_score"] >= cv["oof_score_default_thresholds"] - 1e-9

    # models/ holds the chosen variant's members of every fold, k x s of them, and the aggregation
    # averaged all of them
    members_per_fold = variants[chosen]["members_per_fold"]
    paths = sorted((out / "models").glob("fold_*.pt"))
    assert len(paths) == cv["submission_members"] == sum(members_per_fold)
    for fold in range(3):
        files = sorted(p.name for p in paths if p.name.startswith(f"fold_{fold}_"))
        assert files == sorted(f"fold_{fold}_{m}.pt" for m in variants[chosen]["members"][fold])
        payload = torch.load(out / "models" / files[0], weights_only=True)
        assert payload["fold"] == fold and payload["member"] in variants[chosen]["members"][fold]
    assert f"from {len(paths)} members (3 folds x {len(paths) // 3})" in printed

    # the thresholds were chosen on the OOF of that same member average, stored once in float32
    from salt_model.evaluation.thresholds import Thresholds, choose_thresholds

    oof = np.load(out / run_folder.OOF)
    assert oof["probs"].dtype == np.float32 and str(oof["variant"]) == chosen
    train = load_split(tiny_data_root, "train")
    th, score = choose_thresholds(oof["probs"], oof["empty"], train.masks.astype(bool))
    assert th == Thresholds(**cv["thresholds"]) and score == pytest.approx(cv["oof_score"])

    # every epoch's report holds the fold mean and each fold's value
    progress = [json.loads(line) for line in (out / run_folder.PROGRESS).read_text().splitlines()]
    assert [p["epoch"] for p in progress] == [1, 2]
    for p in progress:
        per_fold = [p[f"val_map_fold{r}"] for r in range(3)]
        assert p["val_map"] == pytest.approx(np.mean(per_fold))

    # the OOF file covers every training tile exactly once, each by its held-out fold
    train = load_split(tiny_data_root, "train")
    oof = np.load(out / run_folder.OOF)
    assert list(oof["ids"]) == list(train.ids)
    folds = pd.read_csv(out / run_folder.FOLDS)
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert np.array_equal(oof["fold"], folds.set_index("id").loc[train.ids, "fold"].to_numpy())

    # the submission has exactly the test ids and decodes to 101x101 masks
    test = load_split(tiny_data_root, "test")
    sub = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["id", "rle_mask"]
    assert list(sub["id"]) == list(test.ids)
    for rle in sub["rle_mask"]:
        assert rle_decode(rle, (101, 101)).shape == (101, 101)


def member_average(run, images):
    """The run's own members, each loaded from RUN/models and run with flip TTA, averaged here."""
    from salt_model.evaluation.inference import model_from_payload, predict_probs, read_fold_model

    probs_sum, empty_sum, paths = 0.0, 0.0, sorted((run / "models").glob("fold_*.pt"))
    for path in paths:
        model, config = model_from_payload(read_fold_model(path), torch.device("cpu"))
        probs, empty = predict_probs(model, images, config, torch.device("cpu"), batch_size=64, tta=True)
        probs_sum, empty_sum = probs_sum + probs, empty_sum + empty
    return probs_sum / len(paths), empty_sum / len(paths)


def test_the_submission_is_the_thresholded_average_of_the_runs_own_models(train_run, tiny_data_root):
    from salt_model.evaluation.thresholds import Thresholds, binarize

    out, _ = train_run
    test = load_split(tiny_data_root, "test")
    probs, empty = member_average(out, test.images)
    thresholds = Thresholds(**json.loads((out / "cv.json").read_text())["thresholds"])
    expected = binarize(probs, empty, thresholds)
    sub = pd.read_csv(out / "submission.csv", keep_default_na=False).set_index("id")
    for i, tile in enumerate(test.ids):
        got = rle_decode(sub.loc[tile, "rle_mask"], (101, 101)).astype(bool)
        assert np.array_equal(got, expected[i]), (
            f"tile {tile}: {int((got != expected[i]).sum())} pixels differ"
        )
    assert expected.any(axis=(1, 2)).sum() > 0, "every recomputed mask is empty: nothing was compared"


def test_predict_reproduces_the_runs_submission_byte_for_byte(train_run, tiny_data_root, tmp_path):
    """Without --data: the data the run was trained on, from its cv.json."""
    out, _ = train_run
    assert json.loads((out / "cv.json").read_text())["data"] == str(Path(tiny_data_root).resolve())
    target = tmp_path / "again.csv"
    args = ["--run", str(out), "--out", str(target), "--verbose"]
    result = run_entry("orchestrator.predict", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert target.read_bytes() == (out / "submission.csv").read_bytes()
    # --verbose brings Ray's own log lines back to the console (else they go to RUN/logs/driver.log)
    assert re.search(r"\t(INFO|WARNING) \w+\.py:\d+ -- ", result.stdout + result.stderr), result.stderr[
        -2000:
    ]


def test_predict_cli_rejects_a_run_without_models(tiny_data_root, tmp_path):
    from orchestrator.predict import main

    (tmp_path / "cv.json").write_text(
        json.dumps({"thresholds": {"pixel": 0.5, "min_area": 0, "empty": 1.01}})
    )
    with pytest.raises(ValueError, match="no fold models"):
        main(["--run", str(tmp_path), "--data", str(tiny_data_root)])
