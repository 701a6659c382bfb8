import numpy as np
import pytest

from salt_model.evaluation.metric import THRESHOLDS, competition_metric, image_scores, iou, mean_iou


def _mask(n_pixels, shape=(10, 10)):
    m = np.zeros(shape, np.uint8)
    m.ravel()[:n_pixels] = 1
    return m


def test_thresholds():
    np.testing.assert_allclose(THRESHOLDS, np.arange(0.5, 0.96, 0.05))
    assert len(THRESHOLDS) == 10


def test_empty_vs_empty_is_one():
    z = np.zeros((2, 5, 5), bool)
    np.testing.assert_array_equal(iou(z, z), [1.0, 1.0])
    assert competition_metric(z, z) == 1.0


def test_empty_truth_with_prediction_is_zero():
    assert image_scores(_mask(0), _mask(1))[0] == 0.0


def test_nonempty_truth_with_empty_prediction_is_zero():
    assert image_scores(_mask(30), _mask(0))[0] == 0.0


def test_perfect_prediction_is_one():
    assert competition_metric(_mask(37), _mask(37)) == 1.0


def test_iou_exactly_at_threshold_does_not_count():
    # IoU = 50/100 = 0.5 exactly: not > 0.50, so no threshold is passed.
    assert iou(_mask(100), _mask(50))[0] == 0.5
    assert image_scores(_mask(100), _mask(50))[0] == 0.0
    # IoU = 11/20 = 0.55 exactly: passes 0.50 only.
    truth, pred = _mask(20, (4, 5)), _mask(11, (4, 5))
    assert iou(truth, pred)[0] == 0.55
    assert image_scores(truth, pred)[0] == pytest.approx(0.1)
    # IoU = 3/4 exactly: passes 0.50..0.70 (5 thresholds), not 0.75.
    assert image_scores(_mask(4, (2, 2)), _mask(3, (2, 2)))[0] == pytest.approx(0.5)


def test_partial_overlap_by_hand():
    truth = np.zeros((6, 6), np.uint8)
    truth[0:4, 0:4] = 1  # 16 pixels
    pred = np.zeros((6, 6), bool)
    pred[1:5, 1:5] = True  # 16 pixels, 9 shared -> IoU = 9 / 23 = 0.391
    assert iou(truth, pred)[0] == pytest.approx(9 / 23)
    assert image_scores(truth, pred)[0] == 0.0
    pred2 = truth.copy()
    pred2[0, 0] = 0
    pred2[5, 5] = 1  # IoU = 15 / 17 = 0.882 -> passes 0.50..0.85: 8 of 10
    assert image_scores(truth, pred2)[0] == pytest.approx(0.8)
    batch_t, batch_p = np.stack([truth, truth]), np.stack([pred.astype(np.uint8), pred2])
    assert competition_metric(batch_t, batch_p) == pytest.approx(0.4)
    assert mean_iou(batch_t, batch_p) == pytest.approx((9 / 23 + 15 / 17) / 2)


def test_inputs_not_mutated():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, (4, 9, 9)).astype(np.int64)
    pred = rng.random((4, 9, 9)) > 0.5
    t0, p0 = truth.copy(), pred.copy()
    competition_metric(truth, pred)
    mean_iou(truth, pred)
    np.testing.assert_array_equal(truth, t0)
    np.testing.assert_array_equal(pred, p0)


def test_non_binary_raises():
    with pytest.raises(ValueError, match="threshold probabilities first"):
        competition_metric(_mask(3), np.full((10, 10), 0.7))
    with pytest.raises(ValueError, match="binary"):
        iou(_mask(3) * 255, _mask(3))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((2, 5, 5)), np.zeros((3, 5, 5)))


def test_float_zero_one_accepted():
    assert competition_metric(_mask(5).astype(np.float32), _mask(5)) == 1.0
