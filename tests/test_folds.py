import numpy as np
import pytest

from salt_model.data.folds import coverage_class, load_folds, make_folds, save_folds
from salt_model.data.loading import DataError


def _masks(n=200, seed=0):
    rng = np.random.default_rng(seed)
    cover = rng.choice([0.0, 0.03, 0.3, 0.66, 0.97], size=n, p=[0.4, 0.15, 0.2, 0.15, 0.1])
    masks = np.zeros((n, 10, 10), np.uint8)
    for m, c in zip(masks, cover, strict=True):
        m.ravel()[: int(round(c * 100))] = 1
    return masks


def test_coverage_class():
    masks = np.zeros((4, 10, 10), bool)
    masks[1].ravel()[:4] = True  # 0.04 -> 0
    masks[2].ravel()[:46] = True  # 0.46 -> 5
    masks[3][:] = True  # 1.0 -> 10
    np.testing.assert_array_equal(coverage_class(masks), [0, 0, 5, 10])


@pytest.mark.parametrize("k", [2, 5, 7])
def test_stratified_balance_and_partition(k):
    masks = _masks()
    folds = make_folds(masks, k, seed=1)
    assert folds.shape == (200,) and set(folds.tolist()) == set(range(k))
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 200  # each sample in exactly one fold
    classes = coverage_class(masks)
    for cls in np.unique(classes):
        counts = np.bincount(folds[classes == cls], minlength=k)
        assert counts.max() - counts.min() <= 1, (cls, counts)


def test_deterministic_for_seed():
    masks = _masks()
    np.testing.assert_array_equal(make_folds(masks, 5, 3), make_folds(masks, 5, 3))
    assert (make_folds(masks, 5, 3) != make_folds(masks, 5, 4)).any()


def test_bad_k():
    with pytest.raises(ValueError, match="k=1"):
        make_folds(_masks(10), 1, 0)
    with pytest.raises(ValueError, match="k=11"):
        make_folds(_masks(10), 11, 0)


def test_save_load_round_trip(tmp_path):
    ids = np.array([f"{i:010x}" for i in range(30)])
    folds = make_folds(_masks(30), 3, 0)
    path = tmp_path / "sub" / "folds.csv"
    save_folds(path, ids, folds)
    assert path.read_text().startswith("id,fold\n")
    np.testing.assert_array_equal(load_folds(path, ids), folds)
    np.testing.assert_array_equal(load_folds(path, ids[::-1]), folds[::-1])


def test_load_folds_mismatch(tmp_path):
    ids = np.array(["0000000001", "0000000002", "0000000003"])
    path = tmp_path / "folds.csv"
    save_folds(path, ids[:2], np.array([0, 1]))
    with pytest.raises(DataError, match=r"folds.csv.*1 id\(s\) missing \['0000000003'\]"):
        load_folds(path, ids)
    with pytest.raises(DataError, match=r"unexpected id\(s\) \['0000000002'\]"):
        load_folds(path, ids[:1])
    with pytest.raises(DataError, match="not readable"):
        load_folds(tmp_path / "absent.csv", ids)
