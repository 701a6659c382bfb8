import pickle
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from salt_model.config import DataConfig
from salt_model.data import synthetic
from salt_model.data.loading import DataError, SaltData, has_test, load_split, resolve_data
from salt_model.data.rle import rle_decode, rle_encode

REAL = Path(__file__).resolve().parents[2] / "shared" / "tgs"
realdata = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present")


def _tile(value=0, shape=(101, 101), dtype=np.uint8):
    return np.full(shape, value, dtype)


def make_layout(root: Path, train_ids=("aaa", "bbb", "ccc"), test_ids=("ttt",)):
    rng = np.random.default_rng(0)
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in train_ids:
        gray = rng.integers(0, 255, (101, 101), dtype=np.uint8)
        cv2.imwrite(str(root / "train/images" / f"{i}.png"), cv2.merge([gray, gray, gray]))
        mask = np.zeros((101, 101), np.uint16)
        mask[:20, :30] = 65535
        cv2.imwrite(str(root / "train/masks" / f"{i}.png"), mask)
    for i in test_ids:
        cv2.imwrite(str(root / "test/images" / f"{i}.png"), _tile(7))
    return root


def test_loads_layout_sorted(tmp_path):
    make_layout(tmp_path, train_ids=("ccc", "aaa", "bbb"))
    data = load_split(tmp_path, "train")
    assert data.ids.tolist() == ["aaa", "bbb", "ccc"]
    assert data.images.shape == (3, 101, 101) and data.images.dtype == np.uint8
    assert data.masks.dtype == np.uint8 and set(np.unique(data.masks)) == {0, 1}
    assert data.masks[0].sum() == 600 and data.depths is None
    test = load_split(tmp_path, "test")
    assert test.masks is None and test.images[0, 0, 0] == 7
    assert has_test(tmp_path)


def test_channels_rgba_and_mask_encodings(tmp_path):
    make_layout(tmp_path, train_ids=("a1", "a2", "a3"))
    bgr = np.zeros((101, 101, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 100, 200  # channels differ -> converted to gray
    cv2.imwrite(str(tmp_path / "train/images/a1.png"), bgr)
    rgba = np.full((101, 101, 4), 50, np.uint8)
    rgba[..., 3] = 255
    cv2.imwrite(str(tmp_path / "train/images/a2.png"), rgba)
    cv2.imwrite(str(tmp_path / "train/masks/a2.png"), _tile(0))  # 8-bit empty
    m8 = _tile(0)
    m8[5, 5] = 255
    cv2.imwrite(str(tmp_path / "train/masks/a3.png"), m8)  # 8-bit {0, 255}
    data = load_split(tmp_path, "train")
    expected_gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0]
    assert data.images[0, 0, 0] == expected_gray
    assert (data.images[1] == 50).all()
    assert data.masks[1].sum() == 0 and data.masks[2].sum() == 1
    np.testing.assert_array_equal(data.empty, [False, True, False])
    np.testing.assert_allclose(data.coverage, [600 / 10201, 0, 1 / 10201])


def test_csv_order_and_depths(tmp_path):
    make_layout(tmp_path, test_ids=("t2", "t1", "t3"))
    pd.DataFrame({"id": ["t3", "t1"], "rle_mask": ["", ""]}).to_csv(
        tmp_path / "sample_submission.csv", index=False
    )
    pd.DataFrame({"id": ["aaa", "t1", "ccc"], "z": [10, 20, 30]}).to_csv(tmp_path / "depths.csv", index=False)
    test = load_split(tmp_path, "test")
    assert test.ids.tolist() == ["t3", "t1"]
    assert np.isnan(test.depths[0]) and test.depths[1] == 20 and test.depths.dtype == np.float32
    train = load_split(tmp_path, "train")
    np.testing.assert_array_equal(train.depths, [10, np.nan, 30])


def test_saltdata_subset_and_pickle(tmp_path):
    data = load_split(make_layout(tmp_path), "train")
    sub = data.subset([2, 0])
    assert len(sub) == 2 and sub.ids.tolist() == ["ccc", "aaa"]
    sub.images[0, 0, 0] ^= 1  # a copy: the original is untouched
    assert sub.images[0, 0, 0] != data.images[2, 0, 0]
    assert len(data.subset(np.array([True, False, True]))) == 2
    back = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(back.masks, data.masks)
    with pytest.raises(ValueError, match="no masks"):
        _ = load_split(tmp_path, "test").coverage


def test_saltdata_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="ids"):
        SaltData(np.array(["a", "b"]), np.zeros((3, 101, 101), np.uint8))


# ---- DataError for each kind of bad input -------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="train/images") as err:
        load_split(tmp_path, "train")
    assert "layout" in str(err.value)
    make_layout(tmp_path)
    for f in (tmp_path / "train/masks").iterdir():
        f.unlink()
    (tmp_path / "train/masks").rmdir()
    with pytest.raises(DataError, match="train/masks"):
        load_split(tmp_path, "train")


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_split(tmp_path, "valid")


def test_image_without_mask(tmp_path):
    make_layout(tmp_path, train_ids=[f"id{i}" for i in range(8)])
    for i in range(7):
        (tmp_path / f"train/masks/id{i}.png").unlink()
    with pytest.raises(DataError, match="7 id") as err:
        load_split(tmp_path, "train")
    assert "id0" in str(err.value) and "more" in str(err.value) and "without a mask" in str(err.value)


def test_mask_without_image(tmp_path):
    make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / "train/masks/zzz.png"), _tile(0))
    with pytest.raises(DataError, match="zzz") as err:
        load_split(tmp_path, "train")
    assert "without an image" in str(err.value)


def test_unreadable_png(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "train/images/bbb.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="bbb.png.*not a readable PNG"):
        load_split(tmp_path, "train")


def test_wrong_tile_shape(tmp_path):
    make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / "train/images/aaa.png"), _tile(0, (100, 101)))
    with pytest.raises(DataError, match=r"aaa.png.*\(100, 101\).*101x101"):
        load_split(tmp_path, "train")


def test_non_binary_mask(tmp_path):
    make_layout(tmp_path)
    mask = _tile(0)
    mask[0, :3] = [1, 2, 3]
    cv2.imwrite(str(tmp_path / "train/masks/ccc.png"), mask)
    with pytest.raises(DataError, match=r"ccc.png.*\[0, 1, 2, 3\]"):
        load_split(tmp_path, "train")


@pytest.mark.parametrize("csv, split", [("train.csv", "train"), ("sample_submission.csv", "test")])
def test_csv_id_without_image(tmp_path, csv, split):
    make_layout(tmp_path)
    pd.DataFrame({"id": ["aaa", "ttt", "ghost"], "rle_mask": ["", "", ""]}).to_csv(
        tmp_path / csv, index=False
    )
    with pytest.raises(DataError, match=f"{csv}.*ghost"):
        load_split(tmp_path, split)


def test_resolve_data_path(tmp_path):
    assert resolve_data(str(tmp_path), DataConfig()) == tmp_path
    with pytest.raises(DataError, match="nowhere"):
        resolve_data(str(tmp_path / "nowhere"), DataConfig())


def test_resolve_synthetic_caches(tmp_path):
    cfg = DataConfig(synthetic_train=12, synthetic_test=3, synthetic_seed=5)
    root = resolve_data("synthetic", cfg, cache_dir=tmp_path)
    assert root.parent == tmp_path and "seed5" in root.name and "train12" in root.name
    stamp = (root / "train.csv").stat().st_mtime_ns
    assert resolve_data("synthetic", cfg, cache_dir=tmp_path) == root
    assert (root / "train.csv").stat().st_mtime_ns == stamp
    assert len(load_split(root, "train")) == 12 and has_test(root)
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folders left behind


def test_resolve_synthetic_lost_race_uses_winner(tmp_path, monkeypatch):
    cfg = DataConfig(synthetic_train=10, synthetic_test=0, synthetic_seed=1)
    real_generate = synthetic.generate

    def racing_generate(out_dir, n_train, n_test, seed):
        winner = Path(out_dir).parent / Path(out_dir).name.split(".")[1]
        real_generate(winner, n_train, n_test, seed)  # another process finishes first
        (winner / "winner").write_text("")
        return real_generate(out_dir, n_train, n_test, seed)

    monkeypatch.setattr(synthetic, "generate", racing_generate)
    root = resolve_data("synthetic", cfg, cache_dir=tmp_path)
    assert (root / "winner").exists()
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    assert not has_test(root)


# ---- the real competition data, when ../shared/tgs is present ---------------------------------


@pytest.fixture(scope="module")
def real_train():
    return load_split(REAL, "train")


@pytest.mark.realdata
@realdata
def test_real_train_split(real_train):
    data = real_train
    assert len(data) == 3200 and data.images.shape == (3200, 101, 101) and data.images.dtype == np.uint8
    assert data.masks.dtype == np.uint8 and data.masks.max() == 1
    first_salt = data.ids[~data.empty][0]
    raw = cv2.imread(str(REAL / "train" / "masks" / f"{first_salt}.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() == 65535  # stored 16-bit, loaded binarised
    assert data.depths.dtype == np.float32 and not np.isnan(data.depths).any()
    assert 0.36 < data.empty.mean() < 0.42
    flat = data.images.reshape(len(data), -1).std(axis=1) == 0
    assert 0.01 < flat.mean() < 0.03 and data.empty[flat].all()
    assert data.coverage.max() < 1.0
    assert 110 < data.images.mean() < 130


@pytest.mark.realdata
@realdata
def test_real_test_split():
    data = load_split(REAL, "test")
    on_disk = len(list((REAL / "test" / "images").glob("*.png")))
    assert on_disk == 1800  # ../shared/tgs/README.md: 1800 unlabelled test tiles (it was 1000 before)
    assert data.images.shape == (on_disk, 101, 101) and data.masks is None
    order = pd.read_csv(REAL / "sample_submission.csv")["id"].tolist()
    assert data.ids.tolist() == order


@pytest.mark.realdata
@realdata
def test_real_rle_matches_mask_pngs(real_train):
    frame = pd.read_csv(REAL / "train.csv", dtype=str, keep_default_na=False)
    position = {i: k for k, i in enumerate(real_train.ids)}
    assert len(frame) == 3200
    for tile_id, rle in zip(frame["id"], frame["rle_mask"], strict=True):
        np.testing.assert_array_equal(rle_decode(rle), real_train.masks[position[tile_id]], err_msg=tile_id)


@pytest.mark.realdata
@realdata
def test_real_masks_encode_to_kaggles_train_csv_strings(real_train):
    frame = pd.read_csv(REAL / "train.csv", dtype=str, keep_default_na=False).set_index("id")
    for tile_id, mask in zip(real_train.ids, real_train.masks, strict=True):
        assert rle_encode(mask) == frame.loc[tile_id, "rle_mask"], tile_id


SUBMISSIONS = sorted((Path(__file__).resolve().parents[1] / "bench" / "submissions").glob("*.csv"))


@pytest.mark.realdata
@realdata
@pytest.mark.parametrize("path", SUBMISSIONS, ids=[p.name for p in SUBMISSIONS])
def test_committed_submissions_hold_the_samples_ids_in_order_and_valid_masks(path):
    """Each submission made on ../shared/tgs/test: the sample's 1800 ids in its order, every mask a valid
    RLE that round-trips, and not all of them empty."""
    sample = pd.read_csv(REAL / "sample_submission.csv", dtype=str, keep_default_na=False)
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "rle_mask"]
    assert sub["id"].tolist() == sample["id"].tolist() and len(sub) == 1800
    for tile_id, rle in zip(sub["id"], sub["rle_mask"], strict=True):
        assert rle_encode(rle_decode(rle)) == rle, tile_id
    assert 0.2 < (sub["rle_mask"] != "").mean() < 0.9, "nearly every mask is empty, or none is"
