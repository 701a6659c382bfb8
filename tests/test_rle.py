import numpy as np
import pytest

from salt_model.data.rle import rle_decode, rle_encode


def test_column_major_hand_example():
    mask = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8)
    # column-major pixel numbers: col0 -> 1,2,3; col1 -> 4,5,6; col2 -> 7,8,9
    # col0 = 1,1,0 -> pixels 1-2; col1 = 0,0,1 -> pixel 6; col2 = 0,1,1 -> pixels 8-9
    assert rle_encode(mask) == "1 2 6 1 8 2"
    np.testing.assert_array_equal(rle_decode("1 2 6 1 8 2", shape=(3, 3)), mask)
    # a run continues from the bottom of a column to the top of the next one
    np.testing.assert_array_equal(rle_decode("3 2", shape=(3, 3))[:, :2], [[0, 1], [0, 0], [1, 0]])


def test_empty_and_full():
    assert rle_encode(np.zeros((101, 101), np.uint8)) == ""
    assert rle_decode("").sum() == 0
    assert rle_encode(np.ones((101, 101), bool)) == "1 10201"
    assert rle_decode("1 10201").all()


@pytest.mark.parametrize("density", [0.02, 0.5, 0.97])
def test_round_trip_random(density):
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((101, 101)) < density).astype(np.uint8)
        before = mask.copy()
        out = rle_decode(rle_encode(mask))
        assert out.dtype == np.uint8 and out.shape == (101, 101)
        np.testing.assert_array_equal(out, mask)
        np.testing.assert_array_equal(mask, before)


def test_non_square_shape():
    mask = np.zeros((4, 6), np.uint8)
    mask[3, 0] = mask[0, 1] = 1
    assert rle_encode(mask) == "4 2"
    np.testing.assert_array_equal(rle_decode("4 2", shape=(4, 6)), mask)


def test_touching_runs_are_accepted():
    assert rle_decode("1 2 3 2", shape=(3, 3)).sum() == 4


@pytest.mark.parametrize(
    "rle, words",
    [
        ("1 2 5", "odd number"),
        ("1 x", "not an integer"),
        ("1.5 2", "not an integer"),
        ("0 3", "start outside"),
        ("10 1", "run past"),
        ("8 3", "run past"),
        ("3 0", "length < 1"),
        ("5 1 2 1", "sorted"),
        ("1 3 2 1", "overlap"),
    ],
)
def test_malformed_strings_raise(rle, words):
    with pytest.raises(ValueError, match=words) as err:
        rle_decode(rle, shape=(3, 3))
    assert repr(rle) in str(err.value)


def test_decode_rejects_non_string():
    with pytest.raises(ValueError, match="expected a str"):
        rle_decode(float("nan"))
