"""A fold worker runs as many torch/OpenCV threads as its Ray CPU share, whatever train.threads says."""

from __future__ import annotations

import pytest

from salt_model.data import load_split

pytestmark = pytest.mark.ray


def test_fold_workers_use_their_ray_share_not_train_threads(
    ray_cluster, tiny_config, tiny_data_root, tmp_path
):
    from orchestrator.kfold import run_kfold
    from orchestrator.runtime import FoldResources
    from salt_model.folds import make_folds

    config = tiny_config.with_overrides(["train.threads=2", "train.epochs=1", "train.eval_tta=false"])
    data = load_split(tiny_data_root, "train")
    folds = make_folds(data.masks, 3, config.data.fold_seed)
    result = run_kfold(config, data, folds, tmp_path / "run", FoldResources(cpus=1, gpus=0, threads=1))
    threads = [h["threads"] for history in result.histories for h in history]
    assert threads == [1, 1, 1], f"fold workers ran {threads} torch threads; their Ray share is 1 CPU"
