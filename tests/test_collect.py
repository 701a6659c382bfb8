"""The k-fold collection step without a Ray cluster: a shared checkpoint folder (as Ray Train merges it)
-> every variant in cv.json, k x s member files, float32 OOF of the chosen average; and the pruning of a
stopped or finished run's checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ray.train import Checkpoint

from salt_model import run_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(fold_checkpoints):
    """3 folds x 3 epochs, every epoch checkpointed into checkpoint_{epoch}/ as Ray Train lays it out."""
    return fold_checkpoints


def test_collect_folds_writes_every_variant_and_the_chosen_members(run_dir, tmp_path, capsys):
    from orchestrator.collect import collect_folds
    from orchestrator.finish import print_cv_table, write_cv
    from salt_model.evaluation.thresholds import Thresholds, choose_thresholds

    config, data, folds, root = run_dir
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    (out / "models" / "fold_0_stale.pt").write_bytes(b"from an earlier choice")
    result = collect_folds(Checkpoint.from_directory(str(root / "checkpoint_3")), out, data, folds, 3)
    summary = write_cv(out, result, config, {})
    print_cv_table(summary)
    assert "* submission:" in capsys.readouterr().out

    cv = json.loads((out / "cv.json").read_text())
    assert set(cv["variants"]) == {"best", "last", "snapshots", "swa", "snapshots+swa"}
    chosen = cv["submission_variant"]
    honest = {n: v["oof_score"] for n, v in cv["variants"].items() if v["honest"]}
    assert honest[chosen] == max(honest.values())
    assert cv["variants"]["snapshots"]["members"] == [["snap2", "snap3"]] * 3
    names = sorted(p.name for p in (out / "models").glob("fold_*.pt"))  # the stale file is gone
    assert names == sorted(f"fold_{f}_{m}.pt" for f in range(3) for m in cv["variants"][chosen]["members"][f])
    assert len(names) == cv["submission_members"] == 3 * len(cv["variants"][chosen]["members"][0])
    oof = np.load(out / run_folder.OOF)
    assert oof["probs"].dtype == np.float32 and str(oof["variant"]) == chosen
    th, score = choose_thresholds(oof["probs"], oof["empty"], data.masks.astype(bool))
    assert th == Thresholds(**cv["thresholds"]) and score == pytest.approx(cv["oof_score"])


def test_prune_keeps_the_last_checkpoint_without_optimizer_state(run_dir, tmp_path):
    import shutil

    from orchestrator.collect import collect_folds, prune_run_checkpoints

    config, data, folds, root = run_dir
    run = tmp_path / "trial-x"
    shutil.copytree(root, run)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file stays
    before = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    kept, freed = prune_run_checkpoints(run, 3)
    after = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    assert kept == run / "checkpoint_3" and before - after == freed > 0
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_3", "checkpoint_manager_snapshot.json"]
    for fold in range(3):
        resume = torch.load(kept / f"fold_{fold}.pt", weights_only=True)
        assert not {"optimizer", "scaler", "model"} & set(resume) and resume["epoch"] == 3
    # what is left is enough for the ensemble
    result = collect_folds(Checkpoint.from_directory(str(kept)), tmp_path / "out", data, folds, 3)
    assert len(result.model_paths) == sum(result.chosen.members_per_fold)
    # an incomplete newest checkpoint (a fold file missing) is not the one kept
    shutil.copytree(root / "checkpoint_2", run / "checkpoint_4")
    (run / "checkpoint_4" / "fold_1_members.pt").unlink()
    assert prune_run_checkpoints(run, 3)[0] == run / "checkpoint_3"
