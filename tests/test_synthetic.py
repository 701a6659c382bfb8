import cv2
import numpy as np
import pandas as pd
import pytest

from salt_model.data.loading import load_split
from salt_model.data.rle import rle_decode
from salt_model.data.synthetic import generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("synth"), n_train=400, n_test=20, seed=3)
    return root, load_split(root, "train")


def test_layout_and_file_encodings(synth):
    root, data = synth
    assert len(data) == 400 and data.images.shape == (400, 101, 101)
    assert all(len(i) == 10 and int(i, 16) >= 0 for i in data.ids)
    image = cv2.imread(str(root / "train/images" / f"{data.ids[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (101, 101, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    salt, empty = data.ids[~data.empty][0], data.ids[data.empty][0]
    mask16 = cv2.imread(str(root / "train/masks" / f"{salt}.png"), cv2.IMREAD_UNCHANGED)
    assert mask16.dtype == np.uint16 and set(np.unique(mask16)) == {0, 65535}
    mask8 = cv2.imread(str(root / "train/masks" / f"{empty}.png"), cv2.IMREAD_UNCHANGED)
    assert mask8.dtype == np.uint8 and mask8.max() == 0


def test_csvs_round_trip(synth):
    root, data = synth
    frame = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert sorted(frame["id"]) == data.ids.tolist()
    by_id = dict(zip(data.ids, data.masks, strict=True))
    for tile_id, rle in zip(frame["id"], frame["rle_mask"], strict=True):
        np.testing.assert_array_equal(rle_decode(rle), by_id[tile_id])
    test = load_split(root, "test")
    sub = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert test.ids.tolist() == sub["id"].tolist() and len(test) == 20 and (sub["rle_mask"] == "").all()
    assert not set(test.ids) & set(data.ids)
    assert data.depths is not None and ((data.depths >= 50) & (data.depths <= 959)).all()


def test_statistics_look_like_the_real_data(synth):
    _, data = synth
    assert 0.36 <= data.empty.mean() <= 0.42
    flat = data.images.reshape(400, -1).std(axis=1) == 0
    assert 4 <= flat.sum() <= 12 and data.empty[flat].all()
    cov = data.coverage[~data.empty]
    assert (cov < 0.1).mean() > 0.1 and (cov > 0.5).mean() > 0.3 and (cov > 0.9).sum() >= 5
    assert cov.max() < 1.0
    assert 110 < data.images.mean() < 130
    assert 22 < data.images[~flat].reshape(-1, 10201).std(axis=1).mean() < 34
    touching = data.masks[:, [0, -1], :].any(axis=(1, 2)) | data.masks[:, :, [0, -1]].any(axis=(1, 2))
    assert touching[~data.empty].mean() > 0.3


def test_salt_is_not_separable_by_intensity_alone(synth):
    _, data = synth
    salt_tiles = ~data.empty & (data.coverage > 0.2) & (data.coverage < 0.8)
    images, masks = data.images[salt_tiles].astype(float), data.masks[salt_tiles].astype(bool)
    inside = np.array([im[m].mean() for im, m in zip(images, masks, strict=True)])
    outside = np.array([im[~m].mean() for im, m in zip(images, masks, strict=True)])
    assert abs(inside.mean() - outside.mean()) < 15
    # ...but the texture differs: reflectors make the sediment vary more row to row than the salt
    grad = np.abs(np.diff(images, axis=1))
    g_in = np.array([g[m[1:] & m[:-1]].mean() for g, m in zip(grad, masks, strict=True)])
    g_out = np.array([g[~m[1:] & ~m[:-1]].mean() for g, m in zip(grad, masks, strict=True)])
    assert (g_out > g_in).mean() > 0.7


def test_deterministic(tmp_path):
    a = load_split(generate(tmp_path / "a", 15, 3, seed=9), "train")
    b = load_split(generate(tmp_path / "b", 15, 3, seed=9), "train")
    c = load_split(generate(tmp_path / "c", 15, 3, seed=10), "train")
    assert a.ids.tolist() == b.ids.tolist() != c.ids.tolist()
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_bad_counts_raise(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate(tmp_path, 0, 5, seed=0)
