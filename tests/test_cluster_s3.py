"""One storage on a real S3 server (moto's server mode on 127.0.0.1, endpoint from AWS_ENDPOINT_URL,
which pyarrow's S3 filesystem honours): Ray's run state and the fold checkpoints of `train` and `tune`
go to the bucket, only the user outputs to --out, and a killed `train` resumes from the bucket."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.cluster_helpers import (
    free_port,
    private_env,
    read_jsonl,
    run_cli,
    stop_group,
    stop_tmpdir_processes,
)
from tests.conftest import TINY, tiny_args
from tests.processes import REPO, private_tmpdir

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

TWO_FOLDS = [o for o in TINY if not o.startswith("data.folds")] + ["data.folds=2"]
USER_OUTPUTS = {
    "config.json",
    "folds.csv",
    "progress.jsonl",
    "models",
    "oof.npz",
    "cv.json",
    "oof_gallery.png",
    "submission.csv",
}


@pytest.fixture(scope="module")
def s3():
    """(env for drivers, boto3 client, bucket) with a moto S3 server this module started."""
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="salt")
        tmpdir = private_tmpdir()
        env = private_env(tmpdir, AWS_ENDPOINT_URL=endpoint, **creds)
        yield env, client, "salt"
        stop_tmpdir_processes(tmpdir)
    finally:
        stop_group(server, grace=5)


def assert_no_ray_state(out) -> None:
    """Only the user's outputs in OUT: no Ray run folders, checkpoints or Tune experiment state."""
    assert not {p.name for p in out.iterdir()} & {"ray", "tune", "trials"}, sorted(out.iterdir())
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
        while not ((out / "progress.jsonl").exists() and read_jsonl(out / "progress.jsonl")):
            assert first.poll() is None and time.time() < deadline, "the first run ended before epoch 1"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    stop_tmpdir_processes(env["RAY_TMPDIR"])
    done = read_jsonl(out / "progress.jsonl")[-1]["epoch"]
    assert done < 3
    saved = keys(client, bucket, "train/")
    assert any(k.endswith("/fold_0.pt") for k in saved) and any(k.endswith("/fold_1.pt") for k in saved)

    second = run_cli("orchestrator.train", args, env)
    logs = "".join(f.read_text(errors="replace") for f in out.rglob("*.log"))  # worker lines go to OUT/logs
    resumed = re.search(r"fold 0: [^\n]*resuming after epoch (\d+)", second.stdout + second.stderr + logs)
    assert resumed, second.stdout[-2000:]
    after = int(resumed[1])  # the newest checkpoint in the bucket (>= the last progress line seen)
    assert after >= done
    epochs = [p["epoch"] for p in read_jsonl(out / "progress.jsonl")]
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
