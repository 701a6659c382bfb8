"""The driver of orchestrator.train / orchestrator.tune SIGKILLed mid-run, then resumed.

Each command runs in a subprocess with its own local Ray (its own RAY_TMPDIR: a killed head leaves a
stale ray_current_cluster file behind), killed with its whole process group while folds are training.
What was kept is read from the run's own records: progress.jsonl (one line per reported epoch, with
the epoch each fold's attempt resumed after) and, for the search, the Optuna study.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import tiny_args
from tests.test_tune import SEARCH, check_search_outputs

pytestmark = [pytest.mark.ray, pytest.mark.faults]
# The killed driver's Ray workers notice its death within seconds and may finish (and report) the
# epoch they were in meanwhile: the first run's records are read after this long.
STRAYS_S = 15
SECRET = "not-a-real-secret-0123456789abcdef"  # must never reach a log or an output


def env() -> dict:
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: unix socket paths
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp, "AWS_SECRET_ACCESS_KEY": SECRET}


def start(cmd) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True
    )


def kill_when(proc, ready, timeout=600) -> list[str]:
    """Reads the driver's output until ready(lines) holds, then SIGKILLs its process group."""
    lines, deadline = [], time.time() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if ready(lines) or time.time() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return lines


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_no_secret(out: Path, *texts: str) -> None:
    """Neither the Ray auth token nor a credential from the environment is in an output or a log."""
    secrets = [SECRET]
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.read_text().strip():
        secrets.append(token.read_text().strip())
    for path in out.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"{path} holds a secret"
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_the_train_driver_killed_mid_run_resumes_without_retraining(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "orchestrator.train", *tiny_args(tiny_data_root, out, "--epochs", "4")]
    progress = out / "progress.jsonl"

    def two_epochs_checkpointed(lines) -> bool:
        return len(records(progress)) >= 2  # written by the driver after epoch 2's checkpoint

    first = kill_when(start(cmd), two_epochs_checkpointed)
    time.sleep(STRAYS_S)
    before = records(progress)
    assert 2 <= len(before) < 4, "".join(first[-30:])
    assert not (out / "cv.json").exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = records(progress)[len(before) :]
    # no epoch reported (so trained) twice; the new attempt of every fold started after the kill's last
    assert [p["epoch"] for p in before + after] == [1, 2, 3, 4]
    last = before[-1]["epoch"]
    assert all(after[0][f"resumed_after_fold{r}"] == last for r in range(3))
    print(f"driver killed after epoch {last} of 4; resumed after epoch {last}; epochs redone: 0")
    assert (out / "submission.csv").exists() and len(list((out / "models").glob("fold_*.pt"))) == 3
    assert_no_secret(out, "".join(first), resumed.stdout, resumed.stderr)


def test_the_tune_driver_killed_while_trials_run_resumes_every_trial_once(tiny_data_root, tmp_path):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "orchestrator.tune", *tiny_args(tiny_data_root, out, overrides=SEARCH)]

    def second_trial_running(lines) -> bool:
        # kill while the second trial trains, or the moment ASHA stops a trial (the study has it
        # PRUNED; Tune's state, saved on a timer, most likely still has it running)
        if any(" pruned by ASHA after epoch " in line for line in lines):
            return True
        finished = [line for line in lines if " finished: " in line]
        return bool(finished) and sum(" 1/3 " in line for line in lines) >= 2

    first = kill_when(start(cmd), second_trial_running, timeout=900)
    time.sleep(STRAYS_S)
    killed_at = time.time()  # every line before this is the first run's
    assert not (out / "trials.csv").exists(), "the search ended before it could be interrupted"
    study = optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / 'optuna.db'}")
    before = {t.number: t.state.name for t in study.trials}

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env(), timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    check_search_outputs(out, tiny_data_root)  # 3 trials, study == Tune, no duplicate, states agree
    study = optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / 'optuna.db'}")
    assert not [t.number for t in study.trials if t.state.name in ("RUNNING", "FAIL")]

    redone = {}
    tune_ids = {
        t.number: t.user_attrs["tune_trial_id"] for t in study.trials
    }  # the Tune trial that ran it last
    lines = records(out / "progress.jsonl")  # the search's live view: one line per trial epoch
    for number, state in before.items():
        mine = [p for p in lines if p.get("trial_id") == tune_ids[number]]
        old = [p for p in mine if p["time"] < killed_at]
        new = [p for p in mine if p["time"] >= killed_at and not p.get("rereport")]
        trained = [p["epoch"] for p in old + new if not p.get("rereport")]
        assert len(trained) == len(set(trained)), f"trial {number} trained an epoch twice: {trained}"
        if state != "RUNNING":  # finished before the kill: not rerun
            assert not new, f"trial {number} ({state} before the kill) was trained again"
        elif old and new:  # running at the kill: resumed from its fold checkpoints (the last one
            # may be newer than the last progress line, if the kill fell between the two)
            assert all(new[0][f"resumed_after_fold{r}"] >= old[-1]["epoch"] for r in range(2))
        redone[number] = 0 if not (old and new) else max(0, old[-1]["epoch"] - new[0]["resumed_after"])
    print(f"study before the kill {before}; epochs redone per trial {redone}")
    assert_no_secret(out, "".join(first), resumed.stdout, resumed.stderr)


def test_more_folds_than_the_local_cluster_holds_fails_before_training(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    cpus = os.cpu_count() or 2
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.train",
        *tiny_args(tiny_data_root, out, "--cpus-per-fold", str(cpus)),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"3 folds x {cpus:g} CPUs need {3 * cpus:g} CPUs at once" in result.stderr, result.stderr[-2000:]
    assert "largest possible cluster" in result.stderr
    assert not (out / "ray").exists() and not (out / "progress.jsonl").exists()


def test_a_trial_with_a_nan_loss_fails_at_once_with_its_reason_and_the_search_goes_on(
    tiny_data_root, tmp_path
):
    import pandas as pd

    out = tmp_path / "search"
    marker = tmp_path / "fault-marker"
    fault = {"study_trial": 0, "fold": 1, "epoch": 2, "mode": "nan", "batches": 1, "marker": str(marker)}
    cmd = [sys.executable, "-m", "orchestrator.tune", *tiny_args(tiny_data_root, out, overrides=SEARCH)]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**env(), "SALT_INJECT_FAULT": json.dumps(fault)},
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NaN weights after 1 batches of epoch 2" in marker.read_text()
    study = optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{out / 'optuna.db'}")
    failed = study.trials[0]
    assert failed.state.name == "FAIL"
    assert "fold 1: FloatingPointError: loss is nan" in failed.user_attrs["fail_reason"]
    assert failed.intermediate_values == {
        1: pytest.approx(failed.intermediate_values[1])
    }  # epoch 2 never reported
    # not retried: a retry would find the fault spent (marker) and finish the trial's 3 epochs
    tune_id = failed.user_attrs["tune_trial_id"]
    assert [p["epoch"] for p in records(out / "progress.jsonl") if p.get("trial_id") == tune_id] == [1]
    assert [t.state.name for t in study.trials[1:]] != [] and all(
        t.state.name in ("COMPLETE", "PRUNED") for t in study.trials[1:]
    )
    table = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert len(table) == 3
    row = table[table["param_study_trial"] == 0].iloc[0]
    assert row["state"] == "FAIL" and "FloatingPointError" in row["fail_reason"]
    assert (out / "submission.csv").exists()  # the best of the other trials
