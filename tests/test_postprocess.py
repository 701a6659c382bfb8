"""Post-processing tests: each binarisation rule, no input mutation, and the OOF threshold search."""

import numpy as np
import pytest

from salt_model.evaluation.metric import competition_metric
from salt_model.evaluation.thresholds import Thresholds, binarize, choose_thresholds


def _square(n=101, top=20, size=30) -> np.ndarray:
    mask = np.zeros((n, n), dtype=bool)
    mask[top : top + size, top : top + size] = True
    return mask


def test_pixel_threshold_is_strict():
    probs = np.array([[[0.2, 0.5, 0.51, 0.9]]], dtype=np.float32)  # (1, 1, 4)
    assert binarize(probs, None, Thresholds(pixel=0.5)).tolist() == [[[False, False, True, True]]]
    assert binarize(probs, None, Thresholds(pixel=0.1)).all()
    assert not binarize(probs, None, Thresholds(pixel=0.95)).any()


def test_min_area_empties_only_small_masks():
    probs = np.zeros((3, 10, 10), dtype=np.float32)
    probs[0, :2, :2] = 0.9  # 4 pixels
    probs[1, :5, :5] = 0.9  # 25 pixels
    probs[2, :2, :3] = 0.9  # 6 pixels
    out = binarize(probs, None, Thresholds(min_area=6))
    assert out.sum(axis=(1, 2)).tolist() == [0, 25, 6]  # exactly min_area is kept
    assert binarize(probs, None, Thresholds(min_area=0)).sum(axis=(1, 2)).tolist() == [4, 25, 6]


def test_empty_head_threshold_empties_confident_empty_votes():
    probs = np.full((3, 8, 8), 0.9, dtype=np.float32)
    empty = np.array([0.2, 0.7, 0.95], dtype=np.float32)
    assert binarize(probs, empty, Thresholds(empty=0.7)).any(axis=(1, 2)).tolist() == [True, True, False]
    assert binarize(probs, empty, Thresholds(empty=0.5)).any(axis=(1, 2)).tolist() == [True, False, False]
    assert binarize(probs, empty, Thresholds()).all()  # the default (1.01) never empties a mask
    assert binarize(probs, None, Thresholds(empty=0.1)).all()  # no empty head: the rule is off


def test_binarize_returns_bool_and_does_not_mutate():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 101, 101)).astype(np.float32)
    empty = rng.random(4).astype(np.float32)
    probs_before, empty_before = probs.copy(), empty.copy()
    out = binarize(probs, empty, Thresholds(pixel=0.3, min_area=50, empty=0.6))
    assert out.dtype == np.bool_ and out.shape == probs.shape
    np.testing.assert_array_equal(probs, probs_before)
    np.testing.assert_array_equal(empty, empty_before)
    assert not np.shares_memory(out, probs)


def _constructed_case(seed=0):
    """Truth: half empty tiles, half squares. Probabilities: 0.35 on the salt, low noise elsewhere."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((20, 101, 101), dtype=bool)
    for i in range(10):
        truth[i] = _square(top=5 + 3 * i, size=20 + 2 * i)
    probs = (rng.random(truth.shape) * 0.25).astype(np.float32)  # background below 0.25
    probs[truth] = 0.35
    return probs, truth


def test_choose_thresholds_finds_the_better_pixel_threshold():
    probs, truth = _constructed_case()
    default = competition_metric(truth, binarize(probs, None, Thresholds()))
    assert default == pytest.approx(0.5)  # at 0.5 every tile is predicted empty: only empties score
    th, score = choose_thresholds(probs, None, truth)
    assert 0.25 <= th.pixel < 0.35
    assert score == pytest.approx(1.0)
    assert score == pytest.approx(competition_metric(truth, binarize(probs, None, th)))


def test_choose_thresholds_uses_min_area_and_the_empty_head():
    probs, truth = _constructed_case()
    probs = probs.copy()
    probs[10:, 50:53, 50:53] = 0.9  # a 9-pixel false positive on every empty tile
    empty = np.where(truth.any(axis=(1, 2)), 0.3, 0.8).astype(np.float32)
    before = (probs.copy(), empty.copy(), truth.copy())
    th, score = choose_thresholds(probs, empty, truth)
    assert score == pytest.approx(1.0)
    assert th.pixel < 0.35 and (th.min_area > 9 or 0.3 <= th.empty < 0.8)
    for a, b in zip((probs, empty, truth), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(5))
def test_choose_thresholds_never_below_the_defaults(seed):
    rng = np.random.default_rng(seed)
    truth = np.zeros((12, 101, 101), dtype=bool)
    for i in range(0, 12, 2):
        truth[i] = _square(top=rng.integers(0, 60), size=rng.integers(5, 40))
    probs = np.clip(truth * 0.6 + rng.normal(0.2, 0.2, truth.shape), 0, 1).astype(np.float32)
    empty = rng.random(12).astype(np.float32)
    for e in (None, empty):
        default = competition_metric(truth, binarize(probs, e, Thresholds()))
        th, score = choose_thresholds(probs, e, truth)
        assert score >= default - 1e-12
        assert score == pytest.approx(competition_metric(truth, binarize(probs, e, th)))
        if e is None:
            assert th.empty == Thresholds().empty  # no empty head: that knob is not searched
