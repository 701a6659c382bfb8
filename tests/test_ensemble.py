"""Ensemble members (snapshots, SWA), the honest variant choice, and the two-file checkpoint layout."""

import numpy as np
import pytest
import torch

from salt_model.config import load_config
from salt_model.data.augment import pad_batch
from salt_model.data.loading import load_split
from salt_model.evaluation.thresholds import choose_thresholds
from salt_model.training import fold_loop
from salt_model.training.fold_loop import (
    fold_split,
    load_checkpoint,
    members_name,
    strip_resume_state,
    train_fold,
)
from salt_model.training.members import Member, mean_probs
from salt_model.training.variants import cross_validate
from tests.conftest import IN_PROCESS_MEMBERS

CPU = torch.device("cpu")
MEMBERS = IN_PROCESS_MEMBERS


@pytest.fixture(scope="module")
def tiny_data(tiny_data_root):
    return load_split(tiny_data_root, "train")


@pytest.fixture(scope="module")
def run(tiny_config, tiny_data, tmp_path_factory):
    """Fold 0 trained 3 epochs with a checkpoint every epoch, and each evaluation's probabilities."""
    config = tiny_config.with_overrides(MEMBERS)
    root = tmp_path_factory.mktemp("members")
    probs, saved = [], []
    real_evaluate = fold_loop.evaluate

    def evaluate(model, data, epoch, config, device, tta=None):
        out = real_evaluate(model, data, epoch, config, device, tta=tta)
        probs.append(out[1].copy())
        return out

    fold_loop.evaluate = evaluate
    try:
        result = train_fold(
            config,
            tiny_data,
            0,
            report=lambda m, save: saved.append(save(root / f"e{m['epoch']}")),
            device=CPU,
        )
    finally:
        fold_loop.evaluate = real_evaluate
    return config, result, probs, saved


def _weights(path):
    """The model weights a checkpoint holds: its own, or after the last epoch the "last" member's."""
    ckpt = load_checkpoint(path)
    if ckpt["model"] is not None:
        return ckpt["model"]
    return next(m["state_dict"] for m in ckpt["members"] if m["name"] == "last")


def test_snapshots_are_taken_at_the_last_cycle_ends_with_their_oof(run):
    config, result, probs, saved = run
    m = result.members
    assert set(m) == {"best", "snap2", "snap3", "last", "swa"}  # snap1 is not among the last 2
    assert [m["snap2"].epoch, m["snap3"].epoch] == [2, 3]
    # each snapshot is the model of its epoch (as checkpointed then) with that epoch's OOF
    for epoch in (2, 3):
        weights = _weights(saved[epoch - 1])
        for name, tensor in m[f"snap{epoch}"].state.items():
            torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
        np.testing.assert_array_equal(m[f"snap{epoch}"].probs, probs[epoch - 1])
    assert m["snap2"].probs.dtype == np.float32
    assert not torch.equal(m["snap2"].state["head.2.weight"], m["snap3"].state["head.2.weight"])
    assert m["last"].state is m["snap3"].state  # the last epoch is the last snapshot: one copy
    assert m["best"].state is None
    assert result.history[-1]["swa_val_map"] == m["swa"].score


def test_swa_averages_the_window_and_recomputes_batchnorm(run, tiny_data):
    config, result, probs, saved = run
    swa = result.members["swa"].state
    e2, e3 = (_weights(saved[i]) for i in (1, 2))
    for name, tensor in swa.items():
        if "running_" in name or "num_batches" in name:
            continue
        torch.testing.assert_close(tensor, (e2[name] + e3[name]) / 2, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(swa["head.2.weight"], e3["head.2.weight"])  # differs from the last weights
    # BatchNorm: the stem's running mean is the batch-averaged mean of conv1's output over the
    # fold's training tiles (40 tiles, 5 batches of 8), not an average of the epochs' statistics
    train_idx, _ = fold_split(tiny_data, 0, config)
    from salt_model.model import build_model

    model = build_model(config.model)
    model.load_state_dict(swa)
    x = torch.from_numpy(pad_batch(tiny_data.images[train_idx], config.data))[:, None].float() / 255
    with torch.no_grad():
        feats = model.encoder.conv1((x - model.mean) / model.std)  # (N, C, H, W)
    batches = feats.split(config.train.batch_size)
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(swa["encoder.bn1.running_mean"], expected, rtol=1e-4, atol=1e-5)
    averaged = (e2["encoder.bn1.running_mean"] + e3["encoder.bn1.running_mean"]) / 2
    assert not torch.allclose(swa["encoder.bn1.running_mean"], averaged, atol=1e-4)


def test_checkpoint_layout_keeps_members_apart_and_oof_once(run):
    config, result, probs, saved = run
    last = saved[-1]
    resume = torch.load(last, weights_only=True)
    members = torch.load(last.parent / members_name(0), weights_only=True)
    assert {"model", "optimizer", "scaler", "swa", "step", "epoch"} <= set(resume)
    # at the end the model is the "last" member and the SWA average the "swa" member: not stored twice
    assert resume["model"] is None and resume["swa"]["state"] is None
    mid = torch.load(saved[1], weights_only=True)  # after epoch 2: inside the SWA window
    assert mid["model"] is not None and mid["swa"]["state"] is not None and mid["swa"]["count"] == 1
    assert not {"members", "best_state", "best_oof", "probs"} & set(resume)
    assert "optimizer" not in members and "model" not in members
    assert [m["name"] for m in members["members"]] == ["best", "snap2", "snap3", "last", "swa"]
    # stored once: the last epoch's weights and OOF (snap3 = last, and best if it was epoch 3)
    weights = sum(t.nbytes for t in result.members["last"].state.values())
    oof = result.members["last"].probs.nbytes
    distinct_probs = len({id(m.probs) for m in result.members.values()})
    expected = 3 * weights + distinct_probs * oof  # snap2, snap3 = last, swa
    size = (last.parent / members_name(0)).stat().st_size
    assert expected < size < expected * 1.1 + 200_000, (size, expected)
    assert last.stat().st_size < 2 * weights * 1.1 + 200_000  # Adam's two moments and little else
    loaded = {m["name"]: m for m in members["members"]}
    snap3, final = loaded["snap3"]["state_dict"], loaded["last"]["state_dict"]
    assert (
        snap3["head.2.weight"].untyped_storage().data_ptr()
        == final["head.2.weight"].untyped_storage().data_ptr()
    )
    assert loaded["last"]["probs"].dtype == torch.float32


def test_resume_keeps_members_and_the_swa_average(run, tiny_data, tmp_path):
    """Resumed after epoch 2 (SWA window and snap2 already under way): only epoch 3 is trained, and
    the members equal those of the uninterrupted run."""
    config, result, probs, saved = run
    reported = []
    resumed = train_fold(
        config, tiny_data, 0, report=lambda m, s: reported.append(m["epoch"]), resume=saved[1], device=CPU
    )
    assert reported == [3]
    assert resumed.members["snap2"].epoch == 2
    np.testing.assert_array_equal(resumed.members["snap2"].probs, result.members["snap2"].probs)
    for name in ("last", "swa"):
        for key, tensor in result.members[name].state.items():
            torch.testing.assert_close(resumed.members[name].state[key], tensor, rtol=1e-5, atol=1e-6)


def test_stripped_checkpoints(run, tiny_data, tmp_path):
    config, result, probs, saved = run
    import shutil

    for i in (1, 2):
        shutil.copytree(saved[i].parent, tmp_path / f"e{i + 1}")
    finished, stopped = tmp_path / "e3" / "fold_0.pt", tmp_path / "e2" / "fold_0.pt"
    size = finished.stat().st_size
    assert strip_resume_state(finished) > 0.5 * size
    assert strip_resume_state(finished) == 0  # idempotent
    slim = torch.load(finished, weights_only=True)
    assert not {"optimizer", "scaler", "model", "swa"} & set(slim) and slim["resumable"] is False
    # a finished run is still collected from it, without training
    done = train_fold(
        config, tiny_data, 0, report=lambda m, s: pytest.fail("trained"), resume=finished, device=CPU
    )
    assert set(done.members) == set(result.members)
    strip_resume_state(stopped)
    assert "model" in torch.load(stopped, weights_only=True)  # a stopped run keeps its last weights
    with pytest.raises(ValueError, match="stripped of its optimizer state"):
        train_fold(config, tiny_data, 0, resume=stopped, device=CPU)


def test_config_refuses_snapshots_beyond_the_cycles():
    with pytest.raises(ValueError, match=r"train.snapshots=3 .* ends 2 cycle\(s\) .* at most 2"):
        load_config(
            None, ["schedule.name=cosine", "schedule.cycle_epochs=2", "train.epochs=5", "train.snapshots=3"]
        )
    with pytest.raises(ValueError, match="has no cycles; snapshots need cosine or cyclic"):
        load_config(None, ["schedule.name=onecycle", "train.snapshots=1"])
    with pytest.raises(ValueError, match=r"train.swa_epochs=5 .* \[0, train.epochs=4\]"):
        load_config(None, ["train.epochs=4", "train.swa_epochs=5"])
    cfg = load_config(
        None, ["schedule.name=cyclic", "schedule.cycle_epochs=2", "train.epochs=4", "train.snapshots=2"]
    )
    assert cfg.train.snapshots == 2


def _member(name, epoch, probs, empty, score=0.0):
    return Member(name, epoch, score, probs.astype(np.float32), empty.astype(np.float32), None)


def test_cross_validate_scores_every_variant_and_chooses_an_honest_one():
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 101, 101), bool)
    masks[::2, 20:80, 20:80] = True  # half the tiles salt, half empty
    folds = []
    for f in range(2):
        val = np.arange(f, 40, 2)
        truth = masks[val].astype(np.float32)

        def noisy(scale, truth=truth):
            return np.clip(truth + rng.normal(0, scale, truth.shape), 0, 1)

        empty = 1.0 - truth.max(axis=(1, 2))
        members = {
            "best": _member("best", 1, noisy(0.3), empty),
            "snap1": _member("snap1", 1, noisy(0.6), np.full(len(val), 0.5)),
            "snap2": _member("snap2", 2, noisy(0.6), empty),
        }
        members["last"] = members["snap2"]
        folds.append((val, members))
    cv = cross_validate(folds, masks)
    v = cv["variants"]
    assert set(v) == {"best", "last", "snapshots"} and cv["chosen"] in ("last", "snapshots")
    assert v["snapshots"].members_per_fold == [2, 2] and not v["best"].honest
    assert cv["chosen"] == max(("last", "snapshots"), key=lambda n: v[n].oof_score)
    # thresholds are chosen on the OOF of the same member average
    probs, empty = mean_probs([folds[0][1]["snap1"], folds[0][1]["snap2"]])
    np.testing.assert_array_equal(v["snapshots"].probs[:20], probs)
    index = cv["index"]
    expected, score = choose_thresholds(v["snapshots"].probs, v["snapshots"].empty, masks[index])
    assert v["snapshots"].thresholds == expected and v["snapshots"].oof_score == score


@pytest.mark.slow
def test_quality_bench_scores_the_members_and_predicts_with_them(tiny_data_root, tmp_path):
    """bench/quality.py (no Ray): every variant in its JSON, and a submission from the chosen members."""
    import json

    import pandas as pd

    from bench.quality import main
    from tests.conftest import TINY

    args = ["--data", str(tiny_data_root), "--folds-to-run", "0,1", "--out", str(tmp_path / "q.json")]
    for item in [*TINY, *MEMBERS]:
        args += ["--set", item]
    assert main([*args, "--submission", str(tmp_path / "sub.csv")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert set(q["variants"]) == {"best", "last", "snapshots", "swa", "snapshots+swa"}
    chosen = q["variants"][q["submission_variant"]]
    assert chosen["honest"] and q["oof"]["chosen"]["metric"] == pytest.approx(chosen["oof_score"])
    assert q["submission"]["members"] == sum(chosen["members_per_fold"])
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert list(sub["id"]) == list(load_split(tiny_data_root, "test").ids)


def test_write_submission_averages_with_ensemble_probs_until_the_deadline(
    tiny_config, tiny_data_root, tmp_path, monkeypatch
):
    """bench.quality.write_submission builds members one by one for ensemble_probs: with the deadline
    already passed only the first is predicted, without one all are, and the mean is the same floats
    as ensemble_probs over a list of the same models."""
    import time

    import pandas as pd

    from bench import quality
    from salt_model.data.rle import rle_encode
    from salt_model.evaluation.inference import ensemble_probs, model_from_payload
    from salt_model.evaluation.thresholds import Thresholds, binarize
    from salt_model.model import build_model

    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        state = build_model(tiny_config.model).state_dict()
        members.append(Member(f"snap{seed}", seed, 0.0, np.zeros(0, np.float32), None, state))
    payload = tiny_config.to_dict()
    models = [model_from_payload({"config": payload, "state_dict": m.state}, CPU) for m in members]
    images = load_split(tiny_data_root, "test").images
    outputs = []

    def spy(*args, **kwargs):
        outputs.append(ensemble_probs(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(quality, "ensemble_probs", spy)
    th = Thresholds(pixel=0.5)
    for deadline, n in ((time.perf_counter() - 1.0, 1), (None, 3)):
        out = tmp_path / f"sub{n}.csv"
        result = quality.write_submission(out, members, tiny_config, tiny_data_root, th, CPU, deadline)
        assert result["members"] == n and result["tiles"] == len(images)
        probs, empty = outputs[-1]
        expected_probs, expected_empty = ensemble_probs(models[:n], images, CPU)
        assert np.array_equal(probs, expected_probs) and np.array_equal(empty, expected_empty)
        sub = pd.read_csv(out, keep_default_na=False)
        assert list(sub["rle_mask"]) == [rle_encode(m) for m in binarize(expected_probs, expected_empty, th)]
    assert not np.array_equal(outputs[0][0], outputs[1][0])  # one member is not the mean of three


def test_aggregation_loads_every_member_and_refuses_a_partial_models_folder(tiny_config, tmp_path):
    import json

    from orchestrator.submission import load_models
    from salt_model.evaluation.inference import ensemble_probs, model_from_payload, save_fold_model
    from salt_model.model import build_model

    state = build_model(tiny_config.model).state_dict()
    for fold in range(2):
        for member in ("snap1", "snap2"):
            save_fold_model(
                tmp_path / "models" / f"fold_{fold}_{member}.pt", state, tiny_config, fold, 0.5, 1, member
            )
    (tmp_path / "cv.json").write_text(json.dumps({"submission_members": 4}))
    payloads = load_models(tmp_path)
    assert sorted((p["fold"], p["member"]) for p in payloads) == [
        (f, m) for f in (0, 1) for m in ("snap1", "snap2")
    ]
    models = [model_from_payload(p, CPU) for p in payloads]
    images = np.random.default_rng(0).integers(0, 255, (3, 101, 101), dtype=np.uint8)
    probs, empty = ensemble_probs(models, images, CPU)
    assert probs.shape == (3, 101, 101) and probs.dtype == np.float32 and empty.shape == (3,)
    (tmp_path / "models" / "fold_1_snap2.pt").unlink()
    with pytest.raises(ValueError, match="3 member files .* submission uses 4"):
        load_models(tmp_path)
