"""Bad input is refused before any training: one line naming the file/key/value, non-zero exit,
no traceback, nothing written. Checks that load_split already had are in test_data/test_cli."""

from __future__ import annotations

import shutil
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from salt_model.config import load_config
from salt_model.data.checks import DataWarning, check_data_folder
from salt_model.data.folds import make_folds
from salt_model.data.loading import DataError, load_split
from tests.conftest import TINY
from tests.processes import run_in_one_process


def copy_data(root, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    return copy


def orchestrator_train(data, out, *extra):
    args = [sys.executable, "-m", "orchestrator.train", "--data", str(data), "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    return args + list(extra)


def predict_args(run, data):
    return [sys.executable, "-m", "orchestrator.predict", "--run", str(run), "--data", str(data)]


def bad_folders(root, tmp_path):
    """One broken copy of the tiny data per case: name -> (folder, pieces the error must name)."""
    cases = {}

    def case(name):
        folder = copy_data(root, tmp_path / name)
        return folder

    empty = case("empty-test")
    for png in (empty / "test" / "images").glob("*.png"):
        png.unlink()
    cases["empty test/images"] = (empty, [str(empty / "test" / "images"), "no .png test tiles"])

    orphan = case("orphan-id")
    sample = pd.read_csv(orphan / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample.loc[len(sample)] = ["zzz_no_image", ""]
    sample.to_csv(orphan / "sample_submission.csv", index=False)
    cases["sample id without image"] = (orphan, ["sample_submission.csv", "zzz_no_image", "no image"])

    bad_rle = case("bad-rle")
    train = pd.read_csv(bad_rle / "train.csv", dtype=str, keep_default_na=False)
    bad_id = train.loc[3, "id"]
    train.loc[3, "rle_mask"] = "5 10 3"  # odd number of values
    train.to_csv(bad_rle / "train.csv", index=False)
    cases["malformed rle"] = (bad_rle, ["train.csv", bad_id, "odd number of values"])

    disagree = case("disagree")
    train = pd.read_csv(disagree / "train.csv", dtype=str, keep_default_na=False)
    other = train.loc[4, "id"]
    train.loc[4, "rle_mask"] = "1 50"  # a valid RLE, but not the PNG mask's
    train.to_csv(disagree / "train.csv", index=False)
    cases["train.csv vs masks"] = (disagree, ["train.csv", other, "disagrees with the mask PNG"])

    dupes = case("dupes")
    train = pd.read_csv(dupes / "train.csv", dtype=str, keep_default_na=False)
    pd.concat([train, train.iloc[[0]]]).to_csv(dupes / "train.csv", index=False)
    cases["duplicate id"] = (dupes, ["train.csv", "duplicated id", train.loc[0, "id"]])
    return cases


def test_the_training_commands_refuse_bad_data_and_bad_settings_before_training(tiny_data_root, tmp_path):
    cases = {
        name: (orchestrator_train(folder, tmp_path / f"out-{i}"), pieces)
        for i, (name, (folder, pieces)) in enumerate(bad_folders(tiny_data_root, tmp_path).items())
    }
    root = tiny_data_root
    cases["fold smaller than a batch"] = (
        orchestrator_train(root, tmp_path / "out-batch", "--set", "train.batch_size=48"),
        ["fold 0 has 40 training tiles", "train.batch_size=48"],
    )
    cases["switch beyond the budget"] = (
        orchestrator_train(root, tmp_path / "out-switch", "--set", "train.loss_switch_epoch=5"),
        ["train.loss_switch_epoch=5", "train.epochs=2"],
    )
    cases["pseudo round shorter than SWA"] = (
        orchestrator_train(
            root, tmp_path / "out-round", *("--set", "pseudo.rounds=1", "--set", "pseudo.epochs=1"),
            *("--set", "train.swa_epochs=2"),
        ),
        ["pseudo.epochs=1", "train.swa_epochs=2"],
    )  # fmt: skip
    cases["one fold"] = (
        orchestrator_train(root, tmp_path / "out-k1", "--folds", "1"),
        ["data.folds=1", ">= 2"],
    )
    cases["zero lr"] = (
        orchestrator_train(root, tmp_path / "out-lr", "--set", "schedule.lr=0"),
        ["schedule.lr=0", "(0, 10)"],
    )
    file_not_dir = tmp_path / "a-file"
    file_not_dir.write_text("")
    cases["out not writable"] = (
        orchestrator_train(root, file_not_dir / "run"),
        [str(file_not_dir / "run"), "not writable"],
    )
    for name, (returncode, stdout, stderr) in run_in_one_process(cases).items():
        lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
        assert returncode != 0, f"{name}: exit 0; stdout {stdout!r}"
        assert "Traceback" not in stderr, f"{name}: {stderr}"
        assert len(lines) == 1, f"{name}: {stderr!r}"
        for piece in cases[name][1]:
            assert piece in lines[0], f"{name}: {piece!r} not in {lines[0]!r}"
        assert "Ray dashboard" not in stdout, f"{name}: Ray was started before the error"
    assert not list(tmp_path.glob("out-*")), "a refused run wrote its output folder"


def test_depths_ids_without_a_tile_are_a_warning(tiny_data_root, tmp_path):
    data_root = copy_data(tiny_data_root, tmp_path)
    depths = (
        pd.read_csv(data_root / "depths.csv", dtype={"id": str})
        if (data_root / "depths.csv").exists()
        else None
    )
    extra = pd.DataFrame({"id": ["ghost1", "ghost2"], "z": [1.0, 2.0]})
    pd.concat([depths, extra] if depths is not None else [extra]).to_csv(
        data_root / "depths.csv", index=False
    )
    train = load_split(data_root, "train")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert check_data_folder(data_root, train)  # not an error; the test split is there
    messages = [str(w.message) for w in seen if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "ghost1" in messages[0] and "2 id(s)" in messages[0]


def test_a_folder_without_any_test_split_trains_without_a_submission(tiny_data_root, tmp_path):
    data_root = copy_data(tiny_data_root, tmp_path)
    shutil.rmtree(data_root / "test")
    (data_root / "sample_submission.csv").unlink()
    assert not check_data_folder(data_root, load_split(data_root, "train"))
    (data_root / "sample_submission.csv").write_text("id,rle_mask\nabc,\n")
    with pytest.raises(DataError, match="no .png test tiles, but .*sample_submission.csv lists test ids"):
        check_data_folder(data_root, load_split(data_root, "train"))


def test_a_coverage_class_smaller_than_k_is_merged_with_a_warning():
    masks = np.zeros((12, 101, 101), np.uint8)
    masks[10:, :50] = 1  # two tiles of coverage class 5: fewer than k=3
    with pytest.warns(UserWarning, match="coverage class 5 has 2 tile"):
        folds = make_folds(masks, 3, seed=0)
    assert np.bincount(folds, minlength=3).tolist() == [4, 4, 4]


def test_corrupted_or_foreign_model_files_are_refused_by_predict(tiny_data_root, tmp_path):
    cases = {}
    for name, content in {
        "truncated": b"PK\x03\x04 not the whole zip",
        "foreign": None,  # a valid torch file that is not a fold model
    }.items():
        run = tmp_path / name
        (run / "models").mkdir(parents=True)
        path = run / "models" / "fold_0.pt"
        if content is None:
            torch.save({"weights": torch.zeros(3)}, path)
        else:
            path.write_bytes(content)
        cases[name] = (predict_args(run, tiny_data_root), [str(path)])
    for name, (returncode, stdout, stderr) in run_in_one_process(cases).items():
        assert returncode == 2 and "Traceback" not in stderr, f"{name}: {stderr}"
        assert stderr.startswith("error: fold model") and cases[name][1][0] in stderr, stderr
        assert "Ray dashboard" not in stdout
        assert not (tmp_path / name / "submission.csv").exists()


def test_config_checks_switch_epoch_against_the_budget():
    assert load_config(None, ["train.epochs=3", "train.loss_switch_epoch=3"]).train.loss_switch_epoch == 3
    with pytest.raises(
        ValueError, match=r"train.loss_switch_epoch=4 is out of range; expected in \[0, train.epochs=3\]"
    ):
        load_config(None, ["train.epochs=3", "train.loss_switch_epoch=4"])


@pytest.mark.parametrize("module", ["orchestrator.train", "orchestrator.tune", "salt_model.train"])
@pytest.mark.parametrize("old", ["folds.csv", "progress.jsonl", "fold_0.pt"])
def test_a_run_folder_in_the_older_flat_layout_is_refused_before_anything_starts(module, old, tmp_path):
    """Machine state at the top of --out is the layout before state/ and logs/: the command names what
    to move where instead of starting over beside it."""
    import importlib

    from salt_model import run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / old).write_text("")
    with pytest.raises(ValueError, match=rf"{old} at its top level is the older layout; move"):
        importlib.import_module(module).main(["--data", "synthetic", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [old], "the refused command wrote into the folder"
    assert not (out / run_folder.STATE).exists()


def test_a_best_trial_without_a_checkpoint_is_one_error_line(tmp_path, capsys):
    """A search whose best trial's checkpoints were moved away by hand: one `error:` line, exit 2."""
    import pandas as pd

    from orchestrator.search_results import best_checkpoint
    from salt_model.cli import run_cli

    best = pd.Series({"checkpoint_path": None, "trial_id": "t1", "params": {"study_trial": 3}})
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: best_checkpoint(best, str(tmp_path)), [])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.startswith(f"error: best trial t1 has no checkpoint under {tmp_path}"), err
