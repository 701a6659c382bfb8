"""K-fold training on a local Ray cluster (CPU, tiny generated data): folds, failures, submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from salt_model.data import load_split
from salt_model.rle import rle_decode
from tests.conftest import TINY, tiny_args

pytestmark = pytest.mark.ray


# cosine restarts every epoch: 2 epochs end 2 cycles, both kept as snapshots; SWA over both epochs
MEMBERS = [
    *TINY,
    "schedule.name=cosine",
    "schedule.cycle_epochs=1",
    "train.snapshots=2",
    "train.swa_epochs=2",
]


def test_kfold_train_ends_with_every_fold_and_a_valid_submission(
    ray_cluster, tiny_data_root, tmp_path, capsys
):
    from orchestrator.train import main

    out = tmp_path / "run"
    assert main(tiny_args(tiny_data_root, out, overrides=MEMBERS)) == 0
    printed = capsys.readouterr().out

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
    assert set(cv["thresholds"]) == {"pixel", "min_area", "empty"}
    assert cv["oof_score"] >= cv["oof_score_default_thresholds"] - 1e-9

    # models/ holds the chosen variant's members of every fold, k x s of them, and the aggregation
    # averaged all of them
    import torch

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
    from salt_model.postprocess import Thresholds, choose_thresholds

    oof = np.load(out / "oof.npz")
    assert oof["probs"].dtype == np.float32 and str(oof["variant"]) == chosen
    train = load_split(tiny_data_root, "train")
    th, score = choose_thresholds(oof["probs"], oof["empty"], train.masks.astype(bool))
    assert th == Thresholds(**cv["thresholds"]) and score == pytest.approx(cv["oof_score"])

    # every epoch's report holds the fold mean and each fold's value
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in progress] == [1, 2]
    for p in progress:
        per_fold = [p[f"val_map_fold{r}"] for r in range(3)]
        assert p["val_map"] == pytest.approx(np.mean(per_fold))

    # the OOF file covers every training tile exactly once, each by its held-out fold
    train = load_split(tiny_data_root, "train")
    oof = np.load(out / "oof.npz")
    assert list(oof["ids"]) == list(train.ids)
    folds = pd.read_csv(out / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert np.array_equal(oof["fold"], folds.set_index("id").loc[train.ids, "fold"].to_numpy())

    # the submission has exactly the test ids and decodes to 101x101 masks
    test = load_split(tiny_data_root, "test")
    sub = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["id", "rle_mask"]
    assert list(sub["id"]) == list(test.ids)
    for rle in sub["rle_mask"]:
        assert rle_decode(rle, (101, 101)).shape == (101, 101)


def test_a_failing_fold_worker_resumes_from_its_checkpoint(
    ray_cluster, tiny_config, tiny_data_root, tmp_path
):
    from orchestrator.kfold import run_kfold
    from orchestrator.runtime import fold_resources
    from salt_model.folds import make_folds

    data = load_split(tiny_data_root, "train")
    folds = make_folds(data.masks, 3, tiny_config.data.fold_seed)
    marker = tmp_path / "failed-once"
    result = run_kfold(
        tiny_config,
        data,
        folds,
        tmp_path / "run",
        fold_resources(3, None, None),
        max_failures=2,
        inject_failure={"fold": 1, "epoch": 2, "marker": str(marker)},
    )
    assert marker.exists(), "the injected failure did not happen"
    assert len(result.scores) == 3 and all(p.exists() for p in result.model_paths)
    for fold, history in enumerate(result.histories):
        assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 came back from the checkpoint
        assert {h["fold"] for h in history} == {fold}
    assert result.oof_probs.shape == data.images.shape
    assert result.cv["chosen"] == "last"  # a constant lr: no snapshot, no SWA


def test_predict_cli_rejects_a_run_without_models(ray_cluster, tiny_data_root, tmp_path):
    from orchestrator.predict import main

    (tmp_path / "cv.json").write_text(
        json.dumps({"thresholds": {"pixel": 0.5, "min_area": 0, "empty": 1.01}})
    )
    with pytest.raises(ValueError, match="no fold models"):
        main(["--run", str(tmp_path), "--data", str(tiny_data_root)])
