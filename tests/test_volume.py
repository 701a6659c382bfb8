"""Whole seismic volumes: stitching, orientation, SEG-Y headers, real files, IoU on a synthetic cube, Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_model.config import Config, load_config
from salt_model.data.segy import SegyError, SegyReader, read_geometry, write_probability_segy
from salt_model.data.synthetic_volume import make_cube, write_cube_segy
from salt_model.data.volume_store import ProbabilityStore
from salt_model.evaluation.section_inference import fit_scaling, predict_section, window_starts
from salt_model.model import build_model
from tests.conftest import TINY

segyio = pytest.importorskip("segyio")

SHARED_SEGY = Path(__file__).resolve().parents[2] / "shared" / "segy"
# the suite's tiny model, trained longer and faster (the cube IoU test)
VOLUME = [*TINY, "train.epochs=5", "train.loss_switch_epoch=5", "schedule.lr=0.01"]


class Pointwise(torch.nn.Module):
    """A stand-in member whose logit is a function of its own input pixel only."""

    def forward(self, x):  # (B, 1, P, P) in 0..1
        return 6 * (x - 0.5), None


class DepthStep(torch.nn.Module):
    """A stand-in that lights up where the input brightens going down the rows (depth)."""

    def forward(self, x):
        d = torch.zeros_like(x)
        d[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
        return 40 * d - 4, None


def expected_pointwise(section, scaling):
    u = scaling.apply(section).astype(np.float32) / 255
    return 1 / (1 + np.exp(-6 * (u - 0.5)))


@pytest.fixture(scope="module")
def tiny_config():
    return load_config(None, VOLUME)


@pytest.fixture(scope="module")
def random_members(tiny_config):
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append((build_model(tiny_config.model).eval(), tiny_config))
    return members


@pytest.fixture(scope="module")
def trained_member(tiny_config):
    """A tiny model trained for 5 epochs on 101x101 tiles cut from a synthetic cube (another seed)."""
    from salt_model.data.loading import SaltData
    from salt_model.evaluation.inference import model_from_payload
    from salt_model.training.fold_loop import train_fold

    amplitudes, truth = make_cube((12, 202, 202), seed=7)
    scaling = fit_scaling(amplitudes.reshape(-1, amplitudes.shape[-1]))
    images, masks = [], []
    for i in range(amplitudes.shape[0]):
        image, mask = scaling.apply(amplitudes[i]).T, truth[i].T  # (samples, traces)
        for r in window_starts(202, 101, 50):
            for c in window_starts(202, 101, 50):
                images.append(image[r : r + 101, c : c + 101])
                masks.append(mask[r : r + 101, c : c + 101])
    data = SaltData(np.array([f"t{i}" for i in range(len(images))]), np.stack(images), np.stack(masks))
    result = train_fold(tiny_config, data, 0, threads=2)
    payload = {"config": tiny_config.to_dict(), "state_dict": result.members["last"].state}
    return model_from_payload(payload, torch.device("cpu")), payload


def test_pointwise_stitching_is_exact_for_sizes_not_divisible_by_the_stride():
    members = [(Pointwise(), Config())]
    rng = np.random.default_rng(0)
    for traces, samples, stride in [
        (130, 157, 51),
        (240, 333, 51),
        (187, 211, 37),
        (60, 75, 51),
        (101, 260, 50),
    ]:
        section = rng.normal(0, 1000, (traces, samples)).astype(np.float32)
        scaling = fit_scaling(section)
        got = predict_section(members, section, scaling, stride=stride)
        assert got.shape == (traces, samples)
        np.testing.assert_allclose(got, expected_pointwise(section, scaling), rtol=0, atol=2e-6)


def test_orientation_round_trip_depth_stays_down(tmp_path):
    """A cube brightening at sample 90 goes through SEG-Y and back: the step stays at sample 90 in every
    trace, read as an inline and as a crossline."""
    cube = np.zeros((3, 120, 180), np.float32)
    cube[:, :, 90:] = 1000.0
    cube += np.linspace(0, 1, 180, dtype=np.float32)  # no exact ties
    path = write_cube_segy(tmp_path / "step.sgy", cube)
    geometry = read_geometry(path)
    members = [(DepthStep(), Config())]
    with SegyReader(geometry) as reader:
        for direction, i in (("inline", 1), ("crossline", 50)):
            section, live = reader.section(direction, i)
            assert live.all()
            probs = predict_section(members, section, fit_scaling(section))  # (traces, samples)
            assert probs.shape == section.shape
            assert (np.argmax(probs, axis=1) == 89).all()


def test_seamless_with_a_real_model(random_members):
    """The change across window borders is no larger than inside windows (blended, not pasted)."""
    amplitudes, _ = make_cube((2, 260, 300), seed=3)
    section = amplitudes[0]  # (260 traces, 300 samples)
    probs = predict_section(random_members, section, fit_scaling(section), stride=51)
    image = probs.T  # (samples, traces)
    for axis, length in ((1, image.shape[1]), (0, image.shape[0])):
        step = np.abs(np.diff(image, axis=axis)).mean(axis=1 - axis)  # (length - 1,)
        starts = window_starts(length, 101, 51)
        border = sorted({s - 1 for s in starts if s > 0} | {s + 100 for s in starts if s + 101 < length})
        inside = np.setdiff1d(np.arange(length - 1), border)
        assert step[border].max() <= 1.25 * np.percentile(step[inside], 99), (axis, step[border].max())


def test_headers_trace_count_and_dead_traces_preserved(tmp_path):
    """Little-endian, int16, dead and missing traces: every header byte and the order come back."""
    positions = [(il, xl) for il in (10, 11, 12) for xl in (100, 102, 104, 106)][:-2]  # two missing
    spec = segyio.spec()
    spec.samples, spec.format, spec.tracecount, spec.endian = list(range(80)), 3, len(positions), "little"
    path = tmp_path / "little.sgy"
    rng = np.random.default_rng(1)
    with segyio.create(path, spec) as f:
        for k, (il, xl) in enumerate(positions):
            f.header[k] = {189: il, 193: xl, 115: 80, 71: -7, 181: 1000 + k}
            f.trace[k] = np.zeros(80, np.int16) if k == 3 else rng.integers(-3000, 3000, 80).astype(np.int16)
    with pytest.raises(SegyError, match="little-endian"):
        read_geometry(path, endian="big")
    geometry = read_geometry(path)
    assert geometry.endian == "little" and geometry.missing == 2 and geometry.shape == (3, 4, 80)
    store = ProbabilityStore(tmp_path / "p.npy", geometry.shape)
    members = [(Pointwise(), Config())]
    with SegyReader(geometry) as reader:
        for i in range(3):
            section, live = reader.section("inline", i)
            store.put("inline", i, predict_section(members, section, fit_scaling(section), live=live))
        write_probability_segy(geometry, tmp_path / "out.sgy", store, reader)
    store.close()
    raw_in, raw_out = path.read_bytes(), (tmp_path / "out.sgy").read_bytes()
    assert raw_in[:3200] == raw_out[:3200]
    binary_in, binary_out = bytearray(raw_in[3200:3600]), bytearray(raw_out[3200:3600])
    assert int.from_bytes(binary_out[24:26], "little") == 5
    binary_in[24:26] = binary_out[24:26]
    assert binary_in == binary_out
    with (
        segyio.open(path, ignore_geometry=True, endian="little") as a,
        segyio.open(tmp_path / "out.sgy", ignore_geometry=True, endian="little") as b,
    ):
        assert a.tracecount == b.tracecount == 10
        assert all(a.header[k].buf == b.header[k].buf for k in range(10))
        assert np.all(b.trace[3] == 0)  # the dead trace stays as it was
        live = [k for k in range(10) if k != 3]
        out = np.stack([b.trace[k] for k in live])
        assert np.all((out > 0) & (out < 1))
    probs = np.load(tmp_path / "p.npy")
    assert np.isnan(probs[2, 2:]).all() and np.isnan(probs[0, 3]).all()


@pytest.mark.parametrize("name", ["f3.sgy", "f3-withdead.sgy", "volve-il10117-depth.sgy"])
def test_real_files_read_scaled_and_written(tmp_path, name):
    path = SHARED_SEGY / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    geometry = read_geometry(path)
    expected = {
        "f3.sgy": ("3d", 414, 0),
        "f3-withdead.sgy": ("3d", 239, 175),
        "volve-il10117-depth.sgy": ("2d", 202, 0),
    }
    assert (geometry.kind, geometry.n_traces, geometry.missing) == expected[name]
    members = [(Pointwise(), Config())]
    store = ProbabilityStore(tmp_path / "p.npy", geometry.shape)
    with SegyReader(geometry) as reader:
        scaling = fit_scaling(reader.sample_traces())
        u = scaling.apply(reader.sample_traces())
        assert 100 < u.mean() < 140 and 15 < u.std() < 45  # the tiles' grey levels
        for i in range(geometry.shape[0]):
            section, live = reader.section("inline", i)
            store.put("inline", i, predict_section(members, section, scaling, live=live))
        write_probability_segy(geometry, tmp_path / "out.sgy", store, reader)
    store.close()
    with (
        segyio.open(path, ignore_geometry=True) as a,
        segyio.open(tmp_path / "out.sgy", ignore_geometry=True) as b,
    ):
        assert b.tracecount == a.tracecount and b.bin[segyio.BinField.Format] == 5
        assert bytes(a.text[0]) == bytes(b.text[0])
        assert all(a.header[k].buf == b.header[k].buf for k in range(a.tracecount))
        k = a.tracecount // 2
        np.testing.assert_allclose(b.trace[k], expected_pointwise(a.trace[k][None], scaling)[0], atol=2e-6)


def test_bad_input_is_one_error_line_exit_2_before_any_model(tmp_path, capsys):
    from orchestrator.predict import main as predict_main
    from salt_model.cli import run_cli

    bad = tmp_path / "bad.sgy"
    bad.write_bytes(b"not seismic" * 500)
    good = write_cube_segy(tmp_path / "good.sgy", make_cube((3, 4, 80), 0)[0])
    truncated = tmp_path / "truncated.sgy"
    truncated.write_bytes(good.read_bytes()[:-100])
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "models" / "fold_0_last.pt").write_bytes(b"not a model")  # loading it would fail differently
    blocker = tmp_path / "a-file"  # a folder cannot be made under a file (chmod does not stop root)
    blocker.write_text("x")
    short = write_cube_segy(tmp_path / "short.sgy", make_cube((3, 4, 20), 0)[0])
    cases = [
        (bad, tmp_path / "o1", "bad.sgy: not a readable SEG-Y file"),
        (truncated, tmp_path / "o2", "not a whole number of them (truncated?)"),
        (short, tmp_path / "o3", "20 samples per trace; expected at least 51"),
        (good, blocker / "sub", "not writable"),
    ]
    for source, out, message in cases:
        argv = ["--run", str(run), "--segy", str(source), "--out", str(out)]
        with pytest.raises(SystemExit) as exit_info:
            run_cli(predict_main, argv)  # in-process: what `python -m orchestrator.predict` runs
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2, lines
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
        assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_synthetic_cube_iou_well_above_chance(trained_member):
    model_config, _ = trained_member
    amplitudes, truth = make_cube((4, 160, 200), seed=11)
    scaling = fit_scaling(amplitudes.reshape(-1, amplitudes.shape[-1]))
    inter = union = 0
    for i in range(len(amplitudes)):
        pred = predict_section([model_config], amplitudes[i], scaling) > 0.5
        inter += (pred & (truth[i] > 0)).sum()
        union += (pred | (truth[i] > 0)).sum()
    p = truth.mean()
    chance = p / (2 - p)  # IoU of a random prediction with the right salt fraction
    assert inter / union > 2 * chance, (inter / union, chance)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    from orchestrator.runtime import init_ray

    init_ray(num_cpus=4)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_actors_match_one_process(tmp_path, ray_local, random_members, tiny_config):
    from orchestrator.volume import run_volume

    amplitudes, truth = make_cube((7, 30, 120), seed=2)
    path = write_cube_segy(tmp_path / "cube.sgy", amplitudes)
    geometry = read_geometry(path)
    payloads = [
        {"config": tiny_config.to_dict(), "state_dict": m.state_dict(), "fold": f, "member": "last"}
        for f, (m, _) in enumerate(random_members)
    ]
    with SegyReader(geometry) as reader:
        scaling = fit_scaling(reader.sample_traces())
    out = tmp_path / "out"
    out.mkdir()
    summary = run_volume(
        geometry,
        payloads,
        scaling,
        out,
        ["inline", "crossline"],
        (0.0, 1.0, 3),
        batch_sections=2,
        truth=truth,
    )
    got = np.load(out / "salt_probability.npy")
    local = np.stack([predict_section(random_members, amplitudes[i], scaling) for i in range(7)])
    across = np.stack([predict_section(random_members, amplitudes[:, j], scaling) for j in range(30)], axis=1)
    np.testing.assert_allclose(got, (local + across) / 2, atol=1e-5)
    assert summary["actors"]["count"] == 3 and 0 <= summary["truth_iou"] <= 1
    for name in (
        "salt_probability.sgy",
        "volume.json",
        "report.html",
        "qc_inline.png",
        "qc_crossline.png",
        "qc_slice.png",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "volume.json").read_text())["geometry"]["traces"] == 210
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
