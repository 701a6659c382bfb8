"""`python -m salt_model.train` end to end in a subprocess: its outputs, resuming, and clean error exits."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.loading import load_split
from tests.conftest import TINY
from tests.processes import run, run_in_one_process

OUTPUTS = (
    run_folder.CONFIG,
    run_folder.fold_result(0),
    f"{run_folder.MODELS}/{run_folder.member_file(0, 'last')}",
    run_folder.FOLDS,
    f"{run_folder.STATE}/fold_0.pt",
    run_folder.fold_oof(0),
)


def _train_args(data, out, *extra) -> list[str]:
    args = [sys.executable, "-m", "salt_model.train", "--data", str(data), "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    return args + ["--set", "train.eval_tta=false", *extra]


def _run(args, timeout=300) -> subprocess.CompletedProcess:
    return run(args, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    """One 1-epoch run of fold 0, then the same command again (which must resume), then fold 1 into
    the same folder."""
    out = tmp_path_factory.mktemp("cli") / "run"
    args = _train_args(tiny_data_root, out, "--epochs", "1")
    first = _run(args)
    second = _run(args) if first.returncode == 0 else None
    if second is not None and second.returncode == 0:
        assert _run([*args, "--fold", "1"]).returncode == 0
    return out, first, second


def test_train_writes_every_output(trained, tiny_data_root):
    out, first, _ = trained
    assert first.returncode == 0, first.stderr
    for name in OUTPUTS:
        assert (out / name).is_file(), f"{name} missing; stdout:\n{first.stdout}"
    assert not list(out.glob(".*.tmp")), "a temporary file of an atomic write was left behind"
    epoch_lines = [line for line in first.stdout.splitlines() if line.startswith("fold 0 epoch")]
    assert len(epoch_lines) == 1 and "val_map" in epoch_lines[0] and "lr" in epoch_lines[0]

    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 1 and config["model"]["width"] == 0.125
    result = json.loads((out / run_folder.fold_result(0)).read_text())
    assert result["fold"] == 0 and [h["epoch"] for h in result["history"]] == [1]
    assert 0 <= result["best_val_map"] <= 1
    folds_csv = (out / run_folder.FOLDS).read_text().splitlines()
    n_tiles = len(list((tiny_data_root / "train" / "images").glob("*.png")))
    assert len(folds_csv) == n_tiles + 1  # a header, then one row per tile
    with np.load(out / run_folder.fold_oof(0)) as oof:
        assert oof["probs_last"].shape == (len(oof["ids"]), 101, 101)
        assert oof["probs_last"].dtype == np.float32 and "probs_best" in oof
        assert 0 < len(oof["ids"]) < n_tiles
    model = torch.load(out / "models" / "fold_0_last.pt", map_location="cpu", weights_only=True)
    assert model["fold"] == 0 and model["state_dict"]
    assert Config.from_dict(model["config"]) == Config.from_dict(config)  # JSON has lists for tuples
    ckpt = torch.load(out / run_folder.STATE / "fold_0.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1


def test_rerun_resumes(trained):
    out, first, second = trained
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout
    assert "fold 0 epoch" not in second.stdout  # the only epoch was already trained
    result = json.loads((out / run_folder.fold_result(0)).read_text())
    assert [h["epoch"] for h in result["history"]] == [1]


def test_predict_reads_the_folds_trained_into_one_folder(trained, tiny_data_root, capsys):
    """orchestrator.predict --run on salt_model.train's folder: its data, every member of both folds,
    and thresholds chosen on the two folds' OOF of the same member average."""
    from orchestrator.predict import thresholds_for_run, trained_on
    from orchestrator.submission import load_models
    from salt_model.evaluation.metric import competition_metric
    from salt_model.evaluation.thresholds import Thresholds, binarize, choose_thresholds

    out, first, _ = trained
    assert first.returncode == 0, first.stderr
    assert trained_on(out) == str(Path(tiny_data_root).resolve())
    models = load_models(out)
    assert sorted({m["fold"] for m in models}) == [0, 1]
    ids, probs, empty = [], [], []
    data = load_split(tiny_data_root, "train")
    truth = dict(zip(data.ids, data.masks.astype(bool), strict=True))
    for fold in (0, 1):
        names = [m["member"] for m in models if m["fold"] == fold]
        with np.load(out / run_folder.fold_oof(fold)) as oof:
            ids += list(oof["ids"])
            probs.append(np.mean([oof[f"probs_{n}"] for n in names], axis=0, dtype=np.float32))
            empty.append(np.mean([oof[f"empty_{n}"] for n in names], axis=0, dtype=np.float32))
    probs, empty = np.concatenate(probs), np.concatenate(empty)
    masks = np.stack([truth[i] for i in ids])
    expected, score = choose_thresholds(probs, empty, masks)
    chosen = Thresholds(**thresholds_for_run(out, Path(tiny_data_root)))
    assert chosen == expected
    assert competition_metric(masks, binarize(probs, empty, chosen)) == pytest.approx(score)
    assert "held-out tiles of fold(s) 0, 1" in capsys.readouterr().out


def _image_without_mask(root: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "no_mask"
    shutil.copytree(root / "train", bad / "train")
    (bad / "train.csv").unlink(missing_ok=True)
    orphan = sorted((bad / "train" / "masks").glob("*.png"))[0]
    orphan.unlink()
    return bad, orphan.stem


def test_bad_inputs_exit_with_one_clean_line(tiny_data_root, tmp_path):
    no_mask, orphan_id = _image_without_mask(tiny_data_root, tmp_path)
    missing = tmp_path / "no_such_folder"
    out = tmp_path / "out"
    cases = {  # name: (args, pieces the error line must contain)
        "missing data": (_train_args(missing, out), [str(missing), "not found"]),
        "image without mask": (_train_args(no_mask, out), [orphan_id, "without a mask"]),
        "bad value": (
            _train_args(tiny_data_root, out, "--set", "train.epochs=abc"),
            ["train.epochs", "'abc'"],
        ),
        "unknown key": (
            _train_args(tiny_data_root, out, "--set", "train.epoch=2"),
            ["train.epoch", "allowed"],
        ),
        "missing config": (
            _train_args(tiny_data_root, out, "--config", str(tmp_path / "nope.yaml")),
            ["nope.yaml", "not found"],
        ),
    }
    for name, (returncode, stdout, stderr) in run_in_one_process(cases).items():
        lines = stderr.strip().splitlines()
        assert returncode != 0, f"{name}: exit 0; stdout {stdout!r}"
        assert "Traceback" not in stderr, f"{name}: {stderr}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {stderr!r}"
        for piece in cases[name][1]:
            assert piece in lines[0], f"{name}: {piece!r} not in {lines[0]!r}"


def _parsed(*argv: str):
    from salt_model.cli import add_config_args, config_from_args, make_parser

    parser = make_parser("test", None)
    add_config_args(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_epochs_alone_works_for_every_count_and_scales_the_loss_switch(capsys):
    for epochs in (1, 2, 3, 9):  # the defaults: 4 epochs, Lovasz from epoch 2
        train = _parsed("--epochs", str(epochs)).train
        assert train.epochs == epochs and train.loss_switch_epoch == min(epochs, -(-2 * epochs // 4))
    assert "--epochs 1: train.loss_switch_epoch 2 -> 1 (scaled with the epochs" in capsys.readouterr().out
    preset = _parsed("--config", "configs/cpu.yaml", "--epochs", "10").train  # 20 epochs, switch 15
    assert (preset.epochs, preset.loss_switch_epoch) == (10, 8)


def test_a_loss_switch_set_on_the_command_line_is_kept_and_checked():
    assert _parsed("--epochs", "10", "--set", "train.loss_switch_epoch=3").train.loss_switch_epoch == 3
    with pytest.raises(ValueError, match="train.loss_switch_epoch=5 is out of range"):
        _parsed("--epochs", "2", "--set", "train.loss_switch_epoch=5")
