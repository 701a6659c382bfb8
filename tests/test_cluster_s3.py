"""One storage on a real S3 server (moto's server mode on 127.0.0.1, endpoint from AWS_ENDPOINT_URL,
which pyarrow's S3 filesystem honours): Ray's run state and the fold checkpoints of `train` and `tune`
go to the bucket, only the user outputs to --out, a killed `train` resumes from the bucket, and a
killed `tune` resumes from the bucket alone into a new --out (the first one deleted)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from bench.moto_s3 import CREDS, moto_s3
from salt_model import run_folder
from tests.cluster_helpers import (
    private_env,
    read_jsonl,
    run_cli,
    stop_tmpdir_processes,
)
from tests.conftest import SEARCH, TINY, check_run, records, tiny_args
from tests.processes import REPO, private_tmpdir, run, start, stop
from tests.test_faults_driver import read_until, trial_epochs
from tests.test_tune import check_search_outputs

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

TWO_FOLDS = [o for o in TINY if not o.startswith("data.folds")] + ["data.folds=2"]


@pytest.fixture(scope="module")
def s3():
    """(env for drivers, boto3 client, bucket) with a moto S3 server this module started."""
    pytest.importorskip("boto3")
    with moto_s3("salt") as (endpoint, client):
        tmpdir = private_tmpdir()
        env = private_env(tmpdir, AWS_ENDPOINT_URL=endpoint, **CREDS)
        yield env, client, "salt"
        stop_tmpdir_processes(tmpdir)


def assert_no_ray_state(out) -> None:
    """Only the user's outputs in OUT: no Ray run folders, checkpoints or Tune experiment state."""
    state = out / run_folder.STATE
    assert not {p.name for p in state.iterdir()} & {"ray", "tune", "trials"}, sorted(state.iterdir())
    ray_files = [
        *out.rglob("checkpoint_*"),
        *out.rglob("experiment_state*"),
        *out.rglob(".validate_storage_marker"),
    ]
    assert not ray_files, ray_files


def keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_train_keeps_its_run_in_the_bucket_and_resumes_from_it_after_a_kill(s3, tiny_data_root, tmp_path):
    env, client, bucket = s3
    out = tmp_path / "train"
    overrides = [o for o in TWO_FOLDS if not o.startswith("train.epochs")] + ["train.epochs=3"]
    args = tiny_args(tiny_data_root, out, "--storage", f"s3://{bucket}/train", overrides=overrides)
    first = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.train", *args], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:  # kill the driver (and the local Ray it started) once epoch 1 is checkpointed in the bucket
        deadline = time.time() + 300
        while not ((out / run_folder.PROGRESS).exists() and read_jsonl(out / run_folder.PROGRESS)):
            assert first.poll() is None and time.time() < deadline, "the first run ended before epoch 1"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    stop_tmpdir_processes(env["RAY_TMPDIR"])
    done = read_jsonl(out / run_folder.PROGRESS)[-1]["epoch"]
    assert done < 3
    saved = keys(client, bucket, "train/")
    assert any(k.endswith("/fold_0.pt") for k in saved) and any(k.endswith("/fold_1.pt") for k in saved)

    second = run_cli("orchestrator.train", args, env)
    logs = "".join(f.read_text(errors="replace") for f in out.rglob("*.log"))  # worker lines go to OUT/logs
    resumed = re.search(r"fold 0: [^\n]*resuming after epoch (\d+)", second.stdout + second.stderr + logs)
    assert resumed, second.stdout[-2000:]
    after = int(resumed[1])  # the newest checkpoint in the bucket (>= the last progress line seen)
    assert after >= done
    epochs = [p["epoch"] for p in read_jsonl(out / run_folder.PROGRESS)]
    # nothing trained twice (the killed run's Train controller may still log the epoch it was in after
    # `done` was read, which is why the resume can start after a later epoch than `done`)
    assert epochs == [1, 2, 3], epochs
    checkpoints = {k.split("/")[2] for k in keys(client, bucket, "train/") if "/checkpoint_" in k}
    assert checkpoints and all(c.startswith("checkpoint_") for c in checkpoints)
    assert_no_ray_state(out)  # Ray's state is in the bucket
    print("\ns3 train keys:\n" + "\n".join(sorted(keys(client, bucket, "train/"))))


def test_tune_keeps_its_state_and_trials_in_the_bucket(s3, tiny_data_root, tmp_path):
    env, client, bucket = s3
    out = tmp_path / "tune"
    run_cli(
        "orchestrator.tune",
        tiny_args(
            tiny_data_root, out, "--trials", "1", "--storage", f"s3://{bucket}/tune", overrides=TWO_FOLDS
        ),
        env,
    )
    saved = keys(client, bucket, "tune/")
    assert any(k.startswith("tune/search/") for k in saved)  # Tune's experiment state, for --resume
    folds = [k for k in saved if k.startswith("tune/trials/trial-") and "/checkpoint_" in k]
    assert any(k.endswith("/fold_0.pt") for k in folds) and any(k.endswith("/fold_1.pt") for k in folds)
    assert_no_ray_state(out)
    assert (out / "submission.csv").exists() and len(list((out / "models").glob("fold_*.pt"))) == 2
    print("\ns3 tune keys:\n" + "\n".join(sorted(saved)))


def saved_study(client, bucket: str, experiment: str):
    """The study as the newest searcher state Tune saved in the bucket holds it, or None."""
    import optuna

    states = [
        o
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=experiment)
        for o in page.get("Contents", [])
        if o["Key"].rsplit("/", 1)[-1].startswith("searcher-state-")
    ]
    if not states:
        return None
    newest = max(states, key=lambda o: o["LastModified"])
    state = pickle.loads(client.get_object(Bucket=bucket, Key=newest["Key"])["Body"].read())
    if state.get("study") is None:
        return None
    db = Path(tempfile.mkdtemp(prefix="saved-study", dir=os.environ.get("SALT_TEST_TMP"))) / "s.db"
    db.write_bytes(zlib.decompress(state["study"]))
    return optuna.load_study(study_name="salt-orchestrator", storage=f"sqlite:///{db}")


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_a_killed_search_resumes_from_the_bucket_alone_into_a_new_out(s3, tiny_data_root, tmp_path):
    env, client, bucket = s3
    out, new = tmp_path / "first", tmp_path / "new"
    storage = ["--storage", f"s3://{bucket}/lost-head"]
    # 2 trials one after the other, no ASHA: trial 0 completes; trial 1's fold 0 holds before its
    # epoch-2 report (epoch 1 reported and checkpointed in the bucket)
    overrides = [*SEARCH, "search.trials=2", "search.early_stopping=false"]
    held = tmp_path / "held"
    faults = json.dumps([{"study_trial": 1, "fold": 0, "epoch": 2, "mode": "hold", "marker": str(held)}])
    first_env = {**env, "RAY_TMPDIR": private_tmpdir(), "SALT_INJECT_FAULT": faults}
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.tune",
        *tiny_args(tiny_data_root, out, *storage, overrides=overrides),
    ]

    def saved_as_wanted(_lines) -> bool:  # Tune's last save (in the bucket) has trial 0 done, 1 running
        study = held.exists() and saved_study(client, bucket, "lost-head/search/")
        return (
            bool(study)
            and [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
            and set(study.trials[1].intermediate_values) == {1}
        )

    proc = start(cmd, first_env)
    try:
        lines = read_until(proc, saved_as_wanted, timeout=600)
        time.sleep(3)  # the rest of that save's upload (Tune's experiment state beside it)
    finally:
        stop(proc, first_env["RAY_TMPDIR"])
    assert saved_as_wanted(lines), "the kill point never came:\n" + "".join(lines[-40:])
    before = records(out / run_folder.PROGRESS)
    old = {
        t.number: dict(t.intermediate_values) for t in saved_study(client, bucket, "lost-head/search/").trials
    }
    shutil.rmtree(out)  # the head's disk is gone: only the bucket is left

    resume_env = {**env, "RAY_TMPDIR": private_tmpdir(), "SALT_INJECT_FAULT": faults}
    resumed = run(
        [sys.executable, "-m", "orchestrator.tune", *tiny_args(tiny_data_root, new, *storage), "--resume"],
        resume_env,
        timeout=600,
    )
    check_run(resumed, "the search resumed into a new --out")
    assert f"{run_folder.CONFIG}, {run_folder.FOLDS} copied into" in resumed.stdout, resumed.stdout[-3000:]
    after = records(new / run_folder.PROGRESS)
    table, study = check_search_outputs(new, tiny_data_root, trials=2)  # also submission.csv, cv.json
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    # the study in NEW holds what the lost one had: trial 0's three epochs, trial 1's first
    assert study.trials[0].intermediate_values == old[0] and set(old[0]) == {1, 2, 3}
    assert study.trials[1].intermediate_values[1] == old[1][1]
    # trial 0 was not retrained; trial 1 went on from its epoch-1 checkpoint in the bucket
    assert [p["epoch"] for p in trial_epochs(before, 0)] == [1, 2, 3]
    assert trial_epochs(after, 0) == []
    assert [p["epoch"] for p in trial_epochs(before, 1)] == [1]
    assert [p["epoch"] for p in trial_epochs(after, 1)] == [2, 3]
    assert all(trial_epochs(after, 1)[0][f"resumed_after_fold{r}"] == 1 for r in range(2))
    assert len(list((new / "models").glob("fold_*.pt"))) == 2 and (new / "best_config.json").exists()
    assert_no_ray_state(new)
