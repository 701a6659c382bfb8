"""What a search costs on S3: bytes uploaded per trial and objects left in the bucket at the end.

    python -m bench.checkpoint_bytes --s3 [--repo DIR] [--label NAME] [--out bench/checkpoint_s3.json]

Starts a moto S3 server on 127.0.0.1 (moto[server], the dev extra) with versioning on the bucket, so
every object ever written stays listed as a version: the bytes uploaded are the sum over all versions
(overwrites and deleted checkpoints included; a delete leaves a marker, not bytes), the bytes left are
the current objects. Then runs a tiny search (`python -m orchestrator.tune`, 3 trials x 2 folds x 3
epochs, generated data) with `--storage s3://bench/run`, from `--repo` (default: this checkout; an
exported older commit measures "before"). Per trial = under trials/trial-N/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.moto_s3 import CREDS, moto_s3

REPO = Path(__file__).resolve().parents[1]
TINY_SEARCH = [
    "model.encoder=resnet18",
    "model.width=0.125",
    "train.batch_size=8",
    "train.epochs=3",
    "train.loss_switch_epoch=1",
    "schedule.name=constant",
    "schedule.lr=0.003",
    "data.folds=2",
    "data.synthetic_train=60",
    "data.synthetic_test=12",
    "search.trials=3",
    "search.switch_low=1",
    "search.grace_epochs=1",
    "search.max_concurrent=1",
]


def group(key: str) -> str:
    """trials/trial-N for a trial's objects, else the top folder (search, run, ...)."""
    parts = key.split("/")[1:]  # below the run prefix
    return "/".join(parts[:2]) if parts[:1] == ["trials"] and len(parts) > 2 else parts[0]


def measure(repo: Path, workdir: Path) -> dict:
    with moto_s3("bench", versioned=True) as (endpoint, s3):
        env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(repo)}
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="r", dir=workdir)
        cmd = [sys.executable, "-m", "orchestrator.tune", "--out", str(workdir / "out")]
        cmd += ["--storage", "s3://bench/run"] + [a for o in TINY_SEARCH for a in ("--set", o)]
        start = time.time()
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
        if proc.returncode != 0:
            raise RuntimeError(f"the search exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        uploaded, left = defaultdict(int), defaultdict(int)
        versions, objects = defaultdict(int), defaultdict(int)
        for page in s3.get_paginator("list_object_versions").paginate(Bucket="bench"):
            for v in page.get("Versions", []):
                uploaded[group(v["Key"])] += v["Size"]
                versions[group(v["Key"])] += 1
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
            for o in page.get("Contents", []):
                left[group(o["Key"])] += o["Size"]
                objects[group(o["Key"])] += 1
        return {
            "search_s": round(time.time() - start, 1),
            "uploaded_bytes": dict(sorted(uploaded.items())),
            "objects_written": dict(sorted(versions.items())),
            "left_bytes": dict(sorted(left.items())),
            "objects_left": dict(sorted(objects.items())),
            "total_uploaded_bytes": sum(uploaded.values()),
            "total_left_bytes": sum(left.values()),
            "total_objects_left": sum(objects.values()),
        }


def run(repo: Path, label: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ckpt-s3-") as tmp:
        result = {"label": label, "repo": str(repo), **measure(repo, Path(tmp))}
    mb = 1e6
    print(f"{label}: search {result['search_s']} s; uploaded {result['total_uploaded_bytes'] / mb:.1f} MB, "
          f"left {result['total_left_bytes'] / mb:.1f} MB in {result['total_objects_left']} objects")  # fmt: skip
    for name in result["uploaded_bytes"]:
        print(
            f"  {name:<16} uploaded {result['uploaded_bytes'][name] / mb:7.1f} MB "
            f"({result['objects_written'][name]} objects); left {result['left_bytes'].get(name, 0) / mb:6.1f} MB "
            f"({result['objects_left'].get(name, 0)} objects)"
        )
    return result
