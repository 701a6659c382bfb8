"""Pseudo-labels: the confidence rule, the weighted loss, and the rounds' bookkeeping (no Ray here;
tests/test_pseudo_rounds.py runs the rounds end to end)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.rounds import choose_round
from salt_model.config import load_config
from salt_model.data.loading import SaltData, load_split
from salt_model.evaluation.thresholds import Thresholds
from salt_model.training.fold_loop import train_fold
from salt_model.training.losses import compute_loss
from salt_model.training.pseudo_labels import (
    PseudoLabels,
    confident_fraction,
    confident_tiles,
    select_pseudo_labels,
)
from tests.conftest import TINY

RULE = {"low": 0.2, "high": 0.8, "min_fraction": 0.9}


def maps() -> np.ndarray:
    """Hand-made (4, 101, 101) probability maps: confident empty, confident salt, mixed, nearly."""
    probs = np.full((4, 101, 101), 0.05, np.float32)  # 0: every pixel confidently not salt
    probs[1] = 0.95  # 1: every pixel confidently salt
    probs[2, :, :50] = 0.95  # 2: half salt, a band of unsure pixels: 51 of 101 columns at 0.5
    probs[2, :, 50:] = 0.5
    probs[3, :, :40] = 0.9  # 3: salt on the left, 9 unsure columns (8.9% of the pixels)
    probs[3, :, 40:49] = 0.6
    return probs


def test_the_rule_keeps_all_confident_empty_and_salt_tiles_and_drops_mixed_ones():
    probs = maps()
    fraction = confident_fraction(probs, RULE["low"], RULE["high"])
    assert fraction[:2].tolist() == [1.0, 1.0]
    assert fraction[2] == pytest.approx(50 / 101)
    assert fraction[3] == pytest.approx(92 / 101)
    assert confident_tiles(probs, None, **RULE).tolist() == [True, True, False, True]
    assert confident_tiles(probs, None, 0.2, 0.8, 0.95).tolist() == [True, True, False, False]
    # an unsure empty head vetoes a tile whose pixels are sure
    empty = np.array([0.97, 0.03, 0.5, 0.5], np.float32)
    assert confident_tiles(probs, empty, **RULE).tolist() == [True, True, False, False]
    # a head sure the tile is empty makes every pixel sure (salt probability = pixel x (1 - empty)),
    # even where the segmentation head, never trained on empty tiles, is unsure
    unsure = np.full((1, 101, 101), 0.5, np.float32)
    assert confident_tiles(unsure, np.array([0.95], np.float32), **RULE).tolist() == [True]
    assert confident_tiles(unsure, np.array([0.05], np.float32), **RULE).tolist() == [False]
    # the bounds are strict: a pixel exactly at `high` is not confident
    assert not confident_tiles(np.full((1, 101, 101), 0.8, np.float32), None, **RULE)[0]


def test_pseudo_masks_are_what_the_submission_would_hold():
    probs = maps()
    test = SaltData(np.array(["a", "b", "c", "d"]), (probs * 255).astype(np.uint8))
    empty = np.array([0.99, 0.01, 0.5, 0.1], np.float32)
    labels = select_pseudo_labels(test, probs, empty, Thresholds(pixel=0.5, min_area=10, empty=0.9), **RULE)
    assert labels.ids.tolist() == ["a", "b", "d"]
    assert labels.masks.dtype == np.uint8
    assert labels.masks[0].sum() == 0  # confidently empty
    assert labels.masks[1].all()
    assert labels.masks[2][:, :49].all() and not labels.masks[2][:, 49:].any()
    summary = labels.summary()
    assert (summary["kept"], summary["offered"], summary["kept_with_salt"]) == (3, 4, 2)
    assert summary["thresholds"] == {"pixel": 0.5, "min_area": 10, "empty": 0.9, "rule": "gate"}


def test_pseudo_labels_round_trip_through_their_file(tmp_path):
    probs = maps()
    test = SaltData(np.array(["a", "b", "c", "d"]), (probs * 255).astype(np.uint8))
    labels = select_pseudo_labels(test, probs, None, Thresholds(), **RULE)
    labels.save(tmp_path / "pseudo.npz")
    back = PseudoLabels.load(tmp_path / "pseudo.npz")
    assert back.ids.tolist() == labels.ids.tolist() and back.rule == labels.rule
    assert np.array_equal(back.masks, labels.masks) and np.array_equal(back.images, labels.images)


@pytest.mark.parametrize("epoch", [0, 5])  # BCE, then Lovasz (tiny config: switch at epoch 1)
def test_tile_weights_scale_each_tile_in_every_loss_term(epoch):
    cfg = load_config(None, TINY).train
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 128, 128)
    empty_logits = torch.randn(4)
    masks = torch.zeros(4, 1, 128, 128)
    masks[0, :, 30:90, 30:90] = 1
    masks[1, :, 10:60, :] = 1
    masks[3, :, 50:, 50:] = 1
    outputs = (logits, empty_logits)
    plain, _ = compute_loss(outputs, masks, epoch, cfg)
    ones, _ = compute_loss(outputs, masks, epoch, cfg, torch.ones(4))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-5)
    # weight 0 on tile 1: the loss is that of the other tiles, scaled by their share of the batch
    w = torch.tensor([1.0, 0.0, 1.0, 1.0])
    weighted, _ = compute_loss(outputs, masks, epoch, cfg, w)
    keep = [0, 2, 3]
    seg_rows = [0, 3]  # the non-empty tiles among those kept (tile 2 is empty: the head decides)
    seg_alone, _ = compute_loss((logits[seg_rows], None), masks[seg_rows], epoch, cfg)
    empty_alone = torch.nn.functional.binary_cross_entropy_with_logits(
        empty_logits[keep], torch.tensor([0.0, 1.0, 0.0])
    )
    expected = seg_alone * 2 / 3 + cfg.empty_loss_weight * empty_alone * 3 / 4
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pseudo_tiles_join_only_the_training_part_of_a_fold(tiny_config, tiny_data_root):
    data = load_split(tiny_data_root, "train")  # 60 generated tiles
    test = load_split(tiny_data_root, "test")
    extra = SaltData(test.ids[:8], test.images[:8], (test.images[:8] > 128).astype(np.uint8))
    folds = np.arange(len(data)) % 3
    config = tiny_config.with_overrides({"train.epochs": 1})
    result = train_fold(config, data, 0, folds=folds, extra=extra)
    assert result.history[0]["train_tiles"] == 40 + 8
    assert result.val_index.tolist() == np.flatnonzero(folds == 0).tolist()  # held-out: real tiles only
    assert len(result.members["last"].probs) == 20


def test_the_submitted_round_is_the_best_by_oof_or_the_last():
    entries = [
        {"round": 0, "oof_score": 0.70},
        {"round": 1, "oof_score": 0.72},
        {"round": 2, "oof_score": 0.71},
    ]
    assert choose_round(entries, "best") == 1
    assert choose_round(entries, "last") == 2
    tie = [{"round": 0, "oof_score": 0.7}, {"round": 1, "oof_score": 0.7}]
    assert choose_round(tie, "best") == 0  # a tie keeps the earlier round (fewer assumptions)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("pseudo.rounds=-1", ">= 0"),
        ("pseudo.low=0.9", "pseudo.high"),
        ("pseudo.min_fraction=0", "(0, 1]"),
        ("pseudo.weight=0", "> 0"),
        ("pseudo.init=warm", "scratch"),
        ("pseudo.submit=first", "best"),
        ("pseudo.epochs=-1", ">= 0"),
    ],
)
def test_bad_pseudo_settings_are_refused_with_the_key(override, expected):
    with pytest.raises(ValueError, match=override.split("=")[0].replace(".", r"\.")) as err:
        load_config(None, [*TINY, override])
    assert expected in str(err.value)


def test_a_later_round_trains_pseudo_epochs_and_ends_with_round_0s_lovasz_epochs():
    from orchestrator.rounds import round_config

    config = load_config(None, ["train.epochs=22", "train.loss_switch_epoch=17", "pseudo.rounds=1"])
    assert round_config(config, 1).train == config.train  # pseudo.epochs=0: the same epochs
    shorter = config.with_overrides({"pseudo.epochs": 14})
    train = round_config(shorter, 1).train
    assert (train.epochs, train.loss_switch_epoch) == (14, 9)  # Lovasz in the last 5, as in round 0
    assert round_config(shorter, 0).train == config.train  # round 0 is the preset itself
    tiny = config.with_overrides({"pseudo.epochs": 3})
    assert round_config(tiny, 1).train.loss_switch_epoch == 0  # fewer epochs than Lovasz ones: all Lovasz
    with pytest.raises(ValueError, match=r"pseudo\.epochs=3.*train\.swa_epochs"):
        round_config(tiny.with_overrides({"train.swa_epochs": 5}), 1)


def test_the_search_draws_the_pseudo_rule_only_when_asked():
    from orchestrator.search_space import trial_config
    from tests.test_tune import sample

    plain = load_config(None, ["train.epochs=6"])
    assert not any(k.startswith("pseudo") for params in sample(plain, n=5) for k in params)
    config = load_config(None, ["train.epochs=6", "search.pseudo=true", "search.pseudo_confidence_low=0.6"])
    for params in sample(config, n=20):
        c, w = params["pseudo_confidence"], params["pseudo_weight"]
        assert 0.6 <= c <= 0.95 and 0.25 <= w <= 1.0
        cfg = trial_config(config, params)
        assert cfg.pseudo.high == c and cfg.pseudo.low == pytest.approx(1 - c) and cfg.pseudo.weight == w


def test_a_round_can_start_from_the_previous_rounds_weights(tiny_config, tiny_data_root, tmp_path):
    from orchestrator.rounds import previous_weights
    from salt_model.evaluation.inference import save_fold_model
    from salt_model.model import build_model

    data = load_split(tiny_data_root, "train")
    folds = np.arange(len(data)) % 3
    torch.manual_seed(123)
    previous = build_model(tiny_config.model).state_dict()
    for fold in range(3):  # a previous round's models folder: fold 0 has a last member, fold 1 SWA only
        member = {0: "last", 1: "swa", 2: "snap2"}[fold]
        save_fold_model(
            tmp_path / "models" / f"fold_{fold}_{member}.pt", previous, tiny_config, fold, 0.5, 2, member
        )
    states = previous_weights(tmp_path, 3)
    assert len(states) == 3
    # a vanishing lr: the weights stay where they started, the previous round's, not a fresh init
    config = tiny_config.with_overrides(
        {"train.epochs": 1, "schedule.lr": 1e-12, "schedule.min_lr": 1e-12, "train.weight_decay": 0.0}
    )
    started = train_fold(config, data, 0, folds=folds, init_state=states[0]).members["last"].state
    fresh = train_fold(config, data, 0, folds=folds).members["last"].state
    key = next(k for k in previous if k.endswith("conv1.weight"))
    assert torch.allclose(started[key].float(), previous[key].float(), atol=1e-6)
    assert not torch.allclose(fresh[key].float(), previous[key].float(), atol=1e-3)


def test_a_pseudo_search_without_a_finished_run_is_refused_before_ray_starts(tiny_data_root, tmp_path):
    import sys

    from tests.conftest import tiny_args
    from tests.processes import run_in_one_process

    tune = [sys.executable, "-m", "orchestrator.tune"]
    cases = {
        "no --pseudo-from": (
            [*tune, *tiny_args(tiny_data_root, tmp_path / "a", overrides=[*TINY, "search.pseudo=true"])],
            ["search.pseudo=true", "--pseudo-from RUN"],
        ),
        "not a run": (
            [*tune, *tiny_args(tiny_data_root, tmp_path / "b"), "--pseudo-from", str(tmp_path / "nope")],
            [str(tmp_path / "nope"), "not a finished orchestrator.train run folder"],
        ),
    }
    for name, (returncode, stdout, stderr) in run_in_one_process(cases).items():
        assert returncode == 2 and stderr.startswith("error: "), f"{name}: {stderr}"
        for piece in cases[name][1]:
            assert piece in stderr, f"{name}: {piece!r} not in {stderr!r}"
        assert "Ray dashboard" not in stdout
