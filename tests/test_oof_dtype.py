"""oof.npz keeps the OOF probabilities in float32: orchestrator.predict chooses thresholds from it."""

from __future__ import annotations

import numpy as np
import torch

from salt_model.config import load_config
from salt_model.data import SaltData
from salt_model.engine import checkpoint_name
from salt_model.model import build_model
from tests.conftest import TINY


def _fold_checkpoint(directory, fold, config, val_idx, rng):
    probs = (0.5 + rng.uniform(-1e-4, 1e-4, size=(len(val_idx), 101, 101))).astype(np.float32)
    state = build_model(config.model).state_dict()
    payload = {
        "fold": fold,
        "config": config.to_dict(),
        "model": state,
        "best_state": state,
        "best_score": 0.5,
        "best_epoch": 1,
        "history": [{"epoch": 1, "fold": fold, "val_map": 0.5}],
        "best_oof": torch.from_numpy(probs),
        "best_empty": torch.from_numpy(rng.uniform(size=len(val_idx)).astype(np.float32)),
    }
    torch.save(payload, directory / checkpoint_name(fold))
    return probs


def test_collect_folds_writes_float32_oof(tmp_path):
    from ray.train import Checkpoint

    from orchestrator.kfold import collect_folds

    config = load_config(None, TINY)
    rng = np.random.default_rng(0)
    n = 12
    folds = np.arange(n) % 3
    data = SaltData(
        ids=np.array([f"t{i}" for i in range(n)]),
        images=np.zeros((n, 101, 101), np.uint8),
        masks=np.zeros((n, 101, 101), np.uint8),
    )
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    expected = np.zeros((n, 101, 101), np.float32)
    for fold in range(3):
        val_idx = np.flatnonzero(folds == fold)
        expected[val_idx] = _fold_checkpoint(ckpt_dir, fold, config, val_idx, rng)
    out = tmp_path / "run"
    collect_folds(Checkpoint.from_directory(str(ckpt_dir)), out, data, folds, 3)
    with np.load(out / "oof.npz") as oof:
        assert oof["probs"].dtype == np.float32
        # probabilities within 1e-4 of 0.5 survive exactly (float16 would round them to 0.5)
        np.testing.assert_array_equal(oof["probs"], expected)
