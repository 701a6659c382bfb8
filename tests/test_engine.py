"""Fold-loop tests: the model learns the generated data, checkpoints resume exactly, best weights are
copies, bad folds/batch sizes are refused, and flip TTA is equivariant."""

import numpy as np
import pytest
import torch

from salt_model.config import load_config
from salt_model.data.loading import load_split, resolve_data
from salt_model.evaluation.inference import predict_probs
from salt_model.evaluation.metric import competition_metric
from salt_model.model import build_model
from salt_model.training import fold_loop
from salt_model.training.fold_loop import fold_split, load_checkpoint, train_fold

CPU = torch.device("cpu")

# Learnability run, measured on 2 shared CPU cores: ~4 s an epoch uncontended (180 training tiles at
# 128x128), val_map 0.50-0.55 against 0.33 for the all-empty prediction on this fold. Every piece of
# the model stays on (scSE, hypercolumn, empty head); onecycle anneals so the last epochs are stable.
LEARN = [
    "model.encoder=resnet18",
    "model.width=0.125",
    "model.deep_supervision=false",
    "model.dropout=0",
    "train.batch_size=8",
    "train.epochs=8",
    "train.loss_switch_epoch=8",  # = train.epochs: BCE only
    "train.eval_tta=false",
    "train.empty_loss_weight=0.5",
    "train.optimizer=adam",
    "train.seed=0",
    "train.loader_workers=0",
    "schedule.name=onecycle",
    "schedule.lr=0.005",
    "schedule.min_lr=0.0001",
    "schedule.pct_start=0.2",
    "schedule.warmup_epochs=0",
    "data.folds=4",
    "data.synthetic_train=240",
    "data.synthetic_test=0",
    "data.synthetic_seed=0",
    "data.pad=128",
]


@pytest.fixture(scope="module")
def tiny_data(tiny_data_root):
    return load_split(tiny_data_root, "train")


def _tiny(tiny_config, *overrides):
    # Fixed here so that a change of the library defaults does not change what these tests train.
    return tiny_config.with_overrides(["train.eval_tta=false", "train.seed=0", *overrides])


@pytest.mark.slow
def test_learnability_on_generated_data(tmp_path_factory):
    """A short CPU run must score well above predicting every tile empty on the held-out fold."""
    config = load_config(None, LEARN)
    root = resolve_data("synthetic", config.data, cache_dir=tmp_path_factory.mktemp("learn"))
    data = load_split(root, "train")
    _, val_idx = fold_split(data, 0, config)
    truth = data.masks[val_idx].astype(bool)
    all_empty = competition_metric(truth, np.zeros_like(truth))  # = fraction of empty masks
    assert all_empty == pytest.approx(float((~truth.any(axis=(1, 2))).mean()))

    result = train_fold(config, data, 0, device=CPU)
    curve = [round(h["val_map"], 3) for h in result.history]
    print(
        f"learnability: best val_map {result.best_score:.3f} (epoch {result.best_epoch}) "
        f"vs all-empty {all_empty:.3f}; curve {curve}"
    )
    assert result.best_score >= all_empty + 0.15, (result.best_score, all_empty, curve)
    assert result.best_score == max(h["val_map"] for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the returned OOF probabilities are the best epoch's: they reproduce its score
    from salt_model.evaluation.thresholds import Thresholds, binarize

    pred = binarize(result.oof_probs, result.oof_empty, Thresholds(empty=0.5))
    assert competition_metric(truth, pred) == pytest.approx(result.best_score, abs=0.02)


def test_checkpoint_resume_continues_the_run(tiny_config, tiny_data, tmp_path):
    config = _tiny(tiny_config, "train.epochs=1")
    n_train = len(fold_split(tiny_data, 0, config)[0])
    saved = []

    def report(metrics, save):
        saved.append(save(tmp_path / f"epoch{metrics['epoch']}"))

    first = train_fold(config, tiny_data, 0, report=report, device=CPU)
    assert [h["epoch"] for h in first.history] == [1]
    ckpt1 = load_checkpoint(saved[0])
    assert saved[0].name == "fold_0.pt"
    assert ckpt1["epoch"] == 1 and ckpt1["fold"] == 0
    assert ckpt1["step"] == n_train // config.train.batch_size  # drop_last: whole batches only

    longer = config.with_overrides(["train.epochs=2"])
    epochs_reported = []

    def report2(metrics, save):
        epochs_reported.append(metrics["epoch"])
        saved.append(save(tmp_path / f"epoch{metrics['epoch']}"))

    resumed = train_fold(
        longer,
        tiny_data,
        0,
        report=report2,
        resume=saved[0],
        device=CPU,
        allow_changed=("train.epochs",),
    )
    assert epochs_reported == [2]  # only the epoch left is trained and reported
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 comes from the checkpoint
    ckpt2 = load_checkpoint(saved[-1])
    assert ckpt2["step"] == 2 * ckpt1["step"]  # the step (the LR schedule's state) went on
    assert ckpt2["epoch"] == 2
    assert resumed.best_score == max(h["val_map"] for h in resumed.history)

    # nothing left to train: no report, the checkpoint's history comes back
    done = train_fold(
        longer, tiny_data, 0, report=lambda m, s: pytest.fail("reported"), resume=saved[-1], device=CPU
    )  # the checkpoint of epoch 2 holds the longer config: nothing to allow
    assert [h["epoch"] for h in done.history] == [1, 2]

    with pytest.raises(ValueError, match="different config: model.scse"):
        train_fold(longer.with_overrides(["model.scse=false"]), tiny_data, 0, resume=saved[0], device=CPU)
    with pytest.raises(ValueError, match="different config: data.crop_prob"):
        train_fold(longer.with_overrides(["data.crop_prob=0"]), tiny_data, 0, resume=saved[0], device=CPU)
    with pytest.raises(ValueError, match="fold 0, not fold 1"):
        train_fold(longer, tiny_data, 1, resume=saved[0], device=CPU)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        train_fold(longer, tiny_data, 0, resume=garbage, device=CPU)


def test_members_are_deep_copies_and_best_keeps_only_its_oof(tiny_config, tiny_data, tmp_path, monkeypatch):
    """Scores forced to fall after epoch 1: "best" is epoch 1's OOF (no weights), "last" holds a copy of
    the final weights, never the live state_dict."""
    config = _tiny(tiny_config, "train.epochs=2", "schedule.lr=0.01")
    models, epoch_probs = [], []
    real_build, real_evaluate = fold_loop.build_model, fold_loop.evaluate

    def build(cfg):
        models.append(real_build(cfg))
        return models[-1]

    def evaluate(model, data, epoch, config, device, tta=None):
        metrics, probs, empty = real_evaluate(model, data, epoch, config, device, tta=tta)
        epoch_probs.append(probs.copy())
        return {**metrics, "val_map": [0.9, 0.1][epoch]}, probs, empty

    monkeypatch.setattr(fold_loop, "build_model", build)
    monkeypatch.setattr(fold_loop, "evaluate", evaluate)
    live_after = {}

    def report(metrics, save):
        save(tmp_path / str(metrics["epoch"]))
        live_after[metrics["epoch"]] = {k: v.clone() for k, v in models[0].state_dict().items()}

    result = train_fold(config, tiny_data, 0, report=report, device=CPU)
    assert result.best_epoch == 1 and result.best_score == pytest.approx(0.9)
    assert result.members["best"].state is None  # the optimistic choice keeps no weights
    np.testing.assert_array_equal(result.oof_probs, epoch_probs[0])  # float32, exactly
    assert not np.allclose(result.oof_probs, epoch_probs[1], atol=1e-3)
    last = result.members["last"]
    np.testing.assert_array_equal(last.probs, epoch_probs[1])
    live = models[0].state_dict()
    for name, tensor in last.state.items():
        assert tensor.untyped_storage().data_ptr() != live[name].untyped_storage().data_ptr(), name
        torch.testing.assert_close(tensor, live_after[2][name], rtol=0, atol=0, msg=name)
    changed = [
        k for k, v in last.state.items() if v.is_floating_point() and not torch.equal(v, live_after[1][k])
    ]
    assert changed, "epoch 2 changed no weight"


@pytest.mark.parametrize("fold", [-1, 3, 10])
def test_fold_out_of_range(tiny_config, tiny_data, fold):
    with pytest.raises(ValueError, match=rf"fold={fold} is out of range; expected 0\.\.2"):
        train_fold(_tiny(tiny_config), tiny_data, fold, device=CPU)


def test_batch_larger_than_the_training_set(tiny_config, tiny_data):
    n_train = len(fold_split(tiny_data, 0, tiny_config)[0])
    config = _tiny(tiny_config, f"train.batch_size={n_train + 1}")
    with pytest.raises(ValueError, match=rf"{n_train} training tiles.*batch_size={n_train + 1}"):
        train_fold(config, tiny_data, 0, device=CPU)


def test_training_needs_masks(tiny_config, tiny_data):
    test_like = type(tiny_data)(tiny_data.ids, tiny_data.images)
    with pytest.raises(ValueError, match="needs masks"):
        train_fold(_tiny(tiny_config), test_like, 0, device=CPU)


def _eval_model(config):
    torch.manual_seed(0)
    model = build_model(config.model)
    # A few training-mode passes give BatchNorm non-trivial running statistics.
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, config.data.pad, config.data.pad))
    return model.eval()


def test_predict_probs_shapes_and_range(tiny_config, tiny_data):
    config = _tiny(tiny_config)
    model = _eval_model(config)
    images = tiny_data.images[:10]
    before = images.copy()
    for tta in (False, True):
        probs, empty = predict_probs(model, images, config, CPU, batch_size=4, tta=tta)
        assert probs.shape == (10, 101, 101) and probs.dtype == np.float32
        assert probs.min() >= 0 and probs.max() <= 1
        assert empty is not None and empty.shape == (10,) and empty.dtype == np.float32
        assert np.all((empty >= 0) & (empty <= 1))
    np.testing.assert_array_equal(images, before)
    # batch size does not change the result (eval mode: no batch statistics)
    np.testing.assert_allclose(
        predict_probs(model, images, config, CPU, batch_size=3)[0],
        predict_probs(model, images, config, CPU, batch_size=10)[0],
        atol=1e-5,
    )
    no_head = _tiny(tiny_config, "model.empty_head=false")
    probs, empty = predict_probs(_eval_model(no_head), images, no_head, CPU)
    assert probs.shape == (10, 101, 101) and empty is None


def test_tta_is_flip_equivariant(tiny_config, tiny_data):
    # 101 -> 128 pads 13 px on one side and 14 on the other: the flip must come before the padding
    # (as in training), or the flipped view is shifted by a pixel and this identity fails.
    config = _tiny(tiny_config, "data.pad=128")
    model = _eval_model(config)
    images = tiny_data.images[:6]
    probs, empty = predict_probs(model, images, config, CPU, tta=True)
    flipped_probs, flipped_empty = predict_probs(model, images[..., ::-1], config, CPU, tta=True)
    np.testing.assert_allclose(flipped_probs, probs[..., ::-1], atol=1e-5)
    np.testing.assert_allclose(flipped_empty, empty, atol=1e-5)
    # without TTA the model alone is not flip-equivariant, so the test above is not vacuous
    plain, _ = predict_probs(model, images, config, CPU, tta=False)
    plain_flipped, _ = predict_probs(model, images[..., ::-1], config, CPU, tta=False)
    assert np.abs(plain_flipped - plain[..., ::-1]).max() > 1e-3
    # TTA is the mean of the two views
    np.testing.assert_allclose(probs, (plain + plain_flipped[..., ::-1]) / 2, atol=1e-5)


def test_resume_refuses_a_changed_schedule_or_budget(tiny_config, tiny_data, tmp_path):
    """A changed epoch budget or schedule would silently bend the LR curve: refused, naming the keys."""
    config = _tiny(tiny_config, "train.epochs=1", "schedule.name=onecycle")
    saved = []
    train_fold(config, tiny_data, 0, report=lambda m, save: saved.append(save(tmp_path)), device=CPU)
    ckpt = load_checkpoint(saved[0])

    for overrides, named in [
        (["train.epochs=2"], ["train.epochs", "1 -> 2"]),
        (["schedule.lr=0.01", "schedule.pct_start=0.5"], ["schedule.lr", "schedule.pct_start"]),
        (["train.loss_switch_epoch=0"], ["train.loss_switch_epoch"]),
        (["train.batch_size=4"], ["train.batch_size"]),
        (["model.scse=false"], ["model.scse"]),
        (["data.crop_prob=0"], ["data.crop_prob"]),
    ]:
        with pytest.raises(ValueError, match="different config") as err:
            train_fold(config.with_overrides(overrides), tiny_data, 0, resume=ckpt, device=CPU)
        for piece in named:
            assert piece in str(err.value)

    # keys that do not change what is trained may differ
    runtime = config.with_overrides(["train.checkpoint_every=3", "train.threads=1", "train.eval_tta=true"])
    done = train_fold(
        runtime, tiny_data, 0, report=lambda m, s: pytest.fail("reported"), resume=ckpt, device=CPU
    )
    assert [h["epoch"] for h in done.history] == [1]

    # an explicit allowance extends the run; model and data changes can never be allowed
    longer = config.with_overrides(["train.epochs=2"])
    epochs = []
    train_fold(
        longer,
        tiny_data,
        0,
        report=lambda m, s: epochs.append(m["epoch"]),
        resume=ckpt,
        device=CPU,
        allow_changed=("train.epochs",),
    )
    assert epochs == [2]
    with pytest.raises(ValueError, match="model.scse"):
        train_fold(
            longer.with_overrides(["model.scse=false"]),
            tiny_data,
            0,
            resume=ckpt,
            device=CPU,
            allow_changed=("model.scse",),
        )
