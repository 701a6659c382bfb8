"""bench/gpu_run.py --smoke end to end on CPU: the device run's code path, so it cannot fail on a typo there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import gpu_plan
from salt_model.config import load_config
from salt_model.data.loading import resolve_data
from tests import processes
from tests.processes import child_env

REPO = Path(__file__).resolve().parents[1]


def test_scaled_recipe_keeps_the_cycles_and_snapshots():
    config = load_config(REPO / "configs" / "tgs.yaml")
    assert gpu_plan.cycles_of(config) == 4
    assert gpu_plan.fit_epochs(400, 10, 4, 100) == 32  # floor(400 * 0.85 / 10) - 1 = 33 -> 32
    out = gpu_plan.scaled_recipe(config, 32)
    assert out["schedule.cycle_epochs"] == 8 and out["train.loss_switch_epoch"] == 8
    assert out["train.swa_epochs"] == 8 and out["train.snapshots"] == 3
    config.with_overrides(out)  # a valid config


@pytest.mark.slow
def test_smoke_run_writes_submission_and_figures(tmp_path):
    cfg = load_config(None, ["data.synthetic_train=96", "data.synthetic_test=20"])
    data = resolve_data("synthetic", cfg.data, cache_dir=tmp_path / "cache")
    out = tmp_path / "out"
    env = child_env(NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, "-m", "bench.gpu_run", "--smoke", "--data", str(data), "--out", str(out)]
    # the budget only caps the run (the epochs are fixed): ~80 s on 2 idle cores, more beside other runs
    cmd += ["--device", "cpu", "--budget-s", "400", "--epochs", "4"]
    run = processes.run(cmd, env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    sub = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == ["id", "rle_mask"] and list(sub["id"]) == list(sample["id"])

    f = json.loads((out / "figures.json").read_text())
    for key in ("gpu", "data", "throughput", "plan", "train", "folds", "cv", "submission", "stages"):
        assert key in f, key
    assert set(f["stages"]) == {"gpu", "data", "bench", "plan", "train", "cv", "submit"}
    names = {t["name"] for t in f["throughput"]}
    assert {"model_step_b4_eager", "model_step_b8_eager", "inference_tta_b8"} <= names
    assert {"model_step_b4_compiled", "model_step_b8_compiled"} <= names  # measured or skipped
    assert f["plan"]["epochs"] == 4 and f["config"]["train"]["snapshots"] == 3
    # on a loaded machine the window can close first: a stopped fold joins from its last checkpoint
    for fold in f["folds"]:
        assert fold["status"] in ("finished", "partial") and "last" in fold["members"], fold["status"]

    cv = f["cv"]
    chosen = cv["variants"][cv["chosen"]]
    assert chosen["honest"] and cv["thresholds"] == chosen["thresholds"]  # chosen on that variant's OOF
    assert set(cv["thresholds"]) == {"pixel", "min_area", "empty", "rule"}
    assert cv["oof_score"] == chosen["oof_score"] >= chosen["oof_score_default_thresholds"] - 1e-9
    assert f["submission"]["thresholds"] == cv["thresholds"] and f["submission"]["tiles"] == len(sample)
    assert (out / "gpu_run.log").read_text().count("== submit done") == 1
