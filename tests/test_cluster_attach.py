"""Attaching to a cluster that `ray start --head` runs (token auth on), as on a `ray up` head:
`python -m orchestrator.tune` with no --address, then with RAY_ADDRESS=HOST:PORT (where Ray itself does
not turn token auth on); during the first run the node's Prometheus endpoint shows the per-fold gauge."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.cluster_helpers import ray_head, run_cli, scrape
from tests.conftest import TINY, tiny_args

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

TWO_FOLDS = [o for o in TINY if not o.startswith("data.folds")] + ["data.folds=2"]


@pytest.fixture(scope="module")
def head():
    with ray_head(
        "--num-cpus=4", '--resources={"tune_driver": 8}', env_extra={"RAY_AUTH_MODE": "token"}
    ) as running:
        yield running


def watch_metrics(port: int, stop: threading.Event, found: list) -> None:
    pattern = re.compile(r"^ray_fold_val_map\{([^}]*)\} ", re.M)
    while not stop.is_set():
        try:
            for labels in pattern.findall(scrape(port)):
                found.append(dict(re.findall(r'(\w+)="([^"]*)"', labels)))
        except OSError:
            pass
        stop.wait(2)


def test_tune_on_the_head_attaches_with_no_address_and_exports_fold_metrics(head, tiny_data_root, tmp_path):
    address, metrics_port, env = head
    stop, found = threading.Event(), []
    watcher = threading.Thread(target=watch_metrics, args=(metrics_port, stop, found), daemon=True)
    watcher.start()
    try:
        proc = run_cli(
            "orchestrator.tune",
            tiny_args(tiny_data_root, tmp_path / "a", "--trials", "1", overrides=TWO_FOLDS),
            env,
        )
        deadline = time.time() + 30  # the metrics agent exports on a timer
        while not {f.get("fold") for f in found} >= {"0", "1"} and time.time() < deadline:
            time.sleep(1)
    finally:
        stop.set()
        watcher.join()
    assert f"attached to the Ray cluster at {address}" in proc.stdout
    assert (tmp_path / "a" / "submission.csv").exists()
    trial = json.loads((tmp_path / "a" / "cv.json").read_text())["best_trial"]
    folds = {f["fold"] for f in found if f.get("trial") == trial}
    assert folds == {"0", "1"}, found[:4]


def test_tune_attaches_through_ray_address_with_token_auth(head, tiny_data_root, tmp_path):
    address, _, env = head
    env = {**env, "RAY_ADDRESS": address}
    assert "RAY_AUTH_MODE" not in env
    proc = run_cli(
        "orchestrator.tune",
        tiny_args(tiny_data_root, tmp_path / "b", "--trials", "1", overrides=TWO_FOLDS),
        env,
    )
    assert f"attached to the Ray cluster at {address}" in proc.stdout
    assert (tmp_path / "b" / "submission.csv").exists()
