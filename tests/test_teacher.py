"""pseudo.teacher=fold: fold r's pseudo-labelled tiles come from fold r's own round-0 members only
(they never saw fold r's held-out tiles), unlike the ensemble teacher's; and each fold trains on its own
tiles (Ray: the aggregation actors and one k-fold round)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from salt_model import run_folder
from salt_model.data.loading import load_split
from salt_model.evaluation.inference import model_from_payload, predict_probs, read_fold_model
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.training.pseudo_labels import PseudoLabels, confident_tiles
from tests.conftest import collected_run

pytestmark = pytest.mark.ray
CPU = torch.device("cpu")
RULE = ["pseudo.low=0.45", "pseudo.high=0.55", "pseudo.min_fraction=0.3"]  # loose: most tiles kept


@pytest.fixture(scope="module")
def round_0(fold_checkpoints, tmp_path_factory):
    """A finished round 0 without Ray's training: 3 folds collected into models/ and cv.json."""
    return collected_run(fold_checkpoints, tmp_path_factory)


@pytest.fixture(scope="module")
def fold_labels(round_0, tiny_config, tiny_data_root, ray_cluster):
    from orchestrator import rounds

    out, _, _, summary = round_0
    config = tiny_config.with_overrides([*RULE, "pseudo.rounds=1", "pseudo.teacher=fold"])
    test = load_split(tiny_data_root, "test")
    return config, test, rounds.pseudo_labels(out, 1, config, test, summary)


@pytest.mark.slow
def test_fold_r_pseudo_masks_are_fold_r_own_models_thresholded_prediction(round_0, fold_labels):
    out, _, _, summary = round_0
    config, test, labels = fold_labels
    thresholds = Thresholds(**summary["thresholds"])
    assert isinstance(labels, list) and len(labels) == 3
    saved = np.load(out / run_folder.TEST_PROBS)
    ensemble_differs = 0
    for fold, got in enumerate(labels):
        assert got.rule["teacher"] == "fold"
        assert (
            PseudoLabels.load(out / "round_1" / run_folder.pseudo_fold(fold)).ids.tolist() == got.ids.tolist()
        )
        members = sorted((out / "models").glob(f"fold_{fold}_*.pt"))
        assert members, "no member of this fold"
        probs, empty = [], []
        for path in members:
            model, cfg = model_from_payload(read_fold_model(path), CPU)
            p, e = predict_probs(model, test.images, cfg, CPU, tta=True)
            probs.append(p)
            empty.append(e)
        probs, empty = np.mean(probs, axis=0, dtype=np.float32), np.mean(empty, axis=0, dtype=np.float32)
        np.testing.assert_allclose(saved["fold_probs"][:, fold], probs, atol=1e-5)
        keep = confident_tiles(
            probs, empty, config.pseudo.low, config.pseudo.high, config.pseudo.min_fraction
        )
        assert got.ids.tolist() == test.ids[keep].tolist() and keep.sum() > 0
        expected = binarize(probs[keep], empty[keep], thresholds)
        near = np.abs(probs[keep] - thresholds.pixel) < 1e-5  # a last-bit difference may flip these only
        assert np.array_equal(got.masks.astype(bool) | near, expected | near)
        ensemble = binarize(saved["probs"][keep], saved["empty"][keep], thresholds)
        ensemble_differs += int((ensemble != expected).any(axis=(1, 2)).sum())
    assert ensemble_differs >= 1, "the fold teacher labelled every tile as the ensemble does"


@pytest.mark.slow
def test_each_fold_trains_on_its_own_pseudo_tiles(round_0, fold_labels, tmp_path):
    from orchestrator import rounds
    from orchestrator.kfold import run_kfold
    from orchestrator.runtime import fold_resources

    _, data, folds, _ = round_0
    config, _, labels = fold_labels
    resources = fold_resources(3, None, 0)
    run_kfold(config, data, folds, tmp_path / "round_1", resources, pseudo=rounds.training_tiles(labels))
    progress = [
        json.loads(line) for line in (tmp_path / "round_1" / run_folder.PROGRESS).read_text().splitlines()
    ]
    train_part = [int((folds != r).sum()) for r in range(3)]
    expected = [n + len(one.ids) for n, one in zip(train_part, labels, strict=True)]
    for epoch in progress:
        assert [epoch[f"train_tiles_fold{r}"] for r in range(3)] == expected
    summary = rounds.labels_summary(labels)
    assert summary["teacher"] == "fold" and summary["kept_per_fold"] == [len(one.ids) for one in labels]
