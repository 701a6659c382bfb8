"""The driver of orchestrator.train / orchestrator.tune SIGKILLed mid-run, then resumed.

Each command runs in a subprocess with its own local Ray (its own RAY_TMPDIR), killed with its whole
process tree (every Ray process of the run, so nothing writes after the kill). What was kept is read
from the run's own records: progress.jsonl (one line per reported epoch, with the epoch each fold's
attempt resumed after) and, for the search, the Optuna study. The search's kills land at known
points through the test faults of orchestrator/faults.py: a fold worker that holds before a report,
a trial that learns nothing (ASHA prunes it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from salt_model import run_folder
from tests.conftest import SEARCH, check_run, records, tiny_args
from tests.processes import child_env, run, start, stop
from tests.test_tune import check_search_outputs, study_of

pytestmark = [pytest.mark.ray, pytest.mark.faults]
SECRET = "not-a-real-secret-0123456789abcdef"  # must never reach a log or an output


def read_until(proc, ready, timeout=600) -> list[str]:
    """Collects the command's output until ready(lines) holds (checked every 0.2 s, also while the
    command prints nothing, e.g. when a test fault holds it), it ends, or the timeout passes."""
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while not ready(lines) and reader.is_alive() and time.time() < deadline:
        time.sleep(0.2)
    return list(lines)


def killed(cmd: list[str], ready, **env: str) -> list[str]:
    """Starts cmd, SIGKILLs it and every process of its run once ready(lines) holds; its output."""
    env = child_env(AWS_SECRET_ACCESS_KEY=SECRET, **env)
    proc = start(cmd, env)
    try:
        lines = read_until(proc, ready, timeout=900)
    finally:
        stop(proc, env["RAY_TMPDIR"])
    assert ready(lines), "the kill point never came:\n" + "".join(lines[-40:])
    return lines


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


@pytest.mark.slow
def test_the_train_driver_killed_mid_run_resumes_without_retraining(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "orchestrator.train", *tiny_args(tiny_data_root, out, "--epochs", "4")]
    progress = out / run_folder.PROGRESS
    # progress.jsonl is written by the driver after each epoch's checkpoint
    first = killed(cmd, lambda lines: len(records(progress)) >= 2)
    before = records(progress)
    assert 2 <= len(before) < 4, "".join(first[-30:])
    assert not (out / "cv.json").exists()

    resumed = run(cmd, child_env(AWS_SECRET_ACCESS_KEY=SECRET), timeout=900)
    check_run(resumed, "the resumed run")
    after = records(progress)[len(before) :]
    # no epoch reported (so trained) twice; the new attempt of every fold started after the kill's last
    assert [p["epoch"] for p in before + after] == [1, 2, 3, 4]
    last = before[-1]["epoch"]
    assert all(after[0][f"resumed_after_fold{r}"] == last for r in range(3))
    print(f"driver killed after epoch {last} of 4; resumed after epoch {last}; epochs redone: 0")
    assert (out / "submission.csv").exists() and len(list((out / "models").glob("fold_*.pt"))) == 3
    assert_no_secret(out, "".join(first), resumed.stdout, resumed.stderr)


def trial_epochs(lines: list[dict], number: int) -> list[dict]:
    """Study trial `number`'s epoch lines in the search's progress.jsonl, re-reports left out."""
    return [p for p in lines if p.get("study_trial") == number and not p.get("rereport")]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_tune_driver_killed_mid_trial_and_as_asha_stops_a_trial_resumes_every_trial_once(
    tiny_data_root, tmp_path
):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "orchestrator.tune", *tiny_args(tiny_data_root, out, overrides=SEARCH)]
    held = tmp_path / "held"
    # one trial at a time (SEARCH): trial 0 first at every rung, never pruned; trial 1 learns nothing
    hold = {"study_trial": 0, "fold": 0, "epoch": 3, "mode": "hold", "marker": str(held)}
    faults = json.dumps([hold, {"study_trial": 1, "mode": "poor"}])
    progress = out / run_folder.PROGRESS

    # kill 1: trial 0's fold 0 holds before its epoch-3 report (epochs 1-2 reported and checkpointed)
    first = killed(
        cmd,
        lambda _: held.exists() and len(trial_epochs(records(progress), 0)) == 2,
        SALT_INJECT_FAULT=faults,
    )
    one = records(progress)
    study = study_of(out)
    assert [t.state.name for t in study.trials] == ["RUNNING"] and set(
        study.trials[0].intermediate_values
    ) == {1, 2}

    # kill 2: the moment ASHA stops trial 1 (the study has it PRUNED; Tune's state, saved on a timer,
    # most likely still has it running). Its rung: 1, or 2 when the restored scheduler kept no
    # first-rung score of trial 0 (trial 0 reported only epoch 3 after the resume).
    second = killed(
        [*cmd, "--resume"],
        lambda lines: any(" pruned by ASHA after epoch " in line for line in lines),
        SALT_INJECT_FAULT=faults,
    )
    pruned_at = int(re.search(r" pruned by ASHA after epoch (\d)/3", "".join(second))[1])
    two = records(progress)[len(one) :]

    resumed = run([*cmd, "--resume"], child_env(AWS_SECRET_ACCESS_KEY=SECRET, SALT_INJECT_FAULT=faults), 1200)
    check_run(resumed, "the resumed search")
    three = records(progress)[len(one) + len(two) :]
    table, study = check_search_outputs(out, tiny_data_root)  # 3 trials, study == Tune, states agree
    # Tune's side too: no trial errored (a resumed PRUNED trial must not end FAILED in Tune)
    assert not [r for r in table["fail_reason"] if r], table[["trial_id", "state", "fail_reason"]]
    assert " FAILED" not in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", study.trials[2].state.name]
    assert study.trials[2].state.name in ("COMPLETE", "PRUNED")
    assert set(study.trials[1].intermediate_values) == set(range(1, pruned_at + 1))  # trained no further

    # trial 0 was running at kill 1 with epochs on both sides: resumed after epoch 2, from its checkpoints
    assert [p["epoch"] for p in trial_epochs(one, 0)] == [1, 2]
    later = trial_epochs(two + three, 0)
    assert [p["epoch"] for p in later] == [3]
    assert all(later[0][f"resumed_after_fold{r}"] == 2 for r in range(2))
    for number in range(3):  # no epoch of any trial trained twice over the three drivers
        trained = [p["epoch"] for p in trial_epochs(one + two + three, number)]
        assert len(trained) == len(set(trained)), f"trial {number} trained an epoch twice: {trained}"
    assert [p["epoch"] for p in trial_epochs(one + two + three, 1)] == list(range(1, pruned_at + 1))
    assert_no_secret(out, "".join(first), "".join(second), resumed.stdout, resumed.stderr)


def test_more_folds_than_the_local_cluster_holds_fails_before_training(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    cpus = os.cpu_count() or 2
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.train",
        *tiny_args(tiny_data_root, out, "--cpus-per-fold", str(cpus)),
    ]
    result = run(cmd, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"3 folds x {cpus:g} CPUs need {3 * cpus:g} CPUs at once" in result.stderr, result.stderr[-2000:]
    assert "largest possible cluster" in result.stderr
    assert not (out / run_folder.RAY).exists() and not (out / run_folder.PROGRESS).exists()
