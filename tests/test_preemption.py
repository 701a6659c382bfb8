"""A node preemption costs a resume, not a retry: a real 3-node Ray (ray.cluster_utils.Cluster: a head
with no CPUs, two 2-CPU nodes), `orchestrator.train --max-failures 0` with 2 folds of 1 CPU, and, once
epoch 1 is checkpointed, the node holding the folds is drained with reason PREEMPTION through Ray's
own `ray drain-node` (what autoscaler v2 and a SIGTERM to `ray start --block` do on a reclaim). Ray
Train's preemption watcher sees the drain; after its deadline the folds restart on the other node from
the last checkpoint, charged to --max-preemptions; with --max-failures 0 any retry counted there would
end the run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from orchestrator.runtime import cluster_wants_token
from tests.cluster_helpers import read_jsonl, stop_tmpdir_processes
from tests.conftest import TINY, tiny_args
from tests.processes import child_env, private_tmpdir, start, stop

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow, pytest.mark.faults]

EPOCHS = 6
OVERRIDES = [o for o in TINY if not o.startswith(("data.folds", "train.epochs"))] + [
    "data.folds=2",
    f"train.epochs={EPOCHS}",
]


@pytest.fixture
def three_nodes():
    import ray
    from ray.cluster_utils import Cluster

    tmpdir = private_tmpdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", tmpdir)
    mp.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        yield cluster, tmpdir
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_tmpdir_processes(tmpdir)
        mp.undo()


def drain(address: str, node_id: str, env: dict, deadline_s: int) -> None:
    """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` (Ray's CLI; token auth when needed)."""
    if cluster_wants_token(address):
        env = {**env, "RAY_AUTH_MODE": "token"}
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "drain-node", f"--address={address}",
        f"--node-id={node_id}", "--reason=DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message=spot instance reclaimed (test)", f"--deadline-remaining-seconds={deadline_s}",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_drained_node_costs_a_resume_not_a_retry(three_nodes, tiny_data_root, tmp_path):
    cluster, tmpdir = three_nodes
    out = tmp_path / "run"
    env = child_env(RAY_TMPDIR=tmpdir, RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="1")  # Ray propagates it
    args = tiny_args(
        tiny_data_root,
        out,
        *("--address", cluster.address, "--cpus-per-fold", "1", "--max-failures", "0"),
        overrides=OVERRIDES,
    )
    proc = start([sys.executable, "-m", "orchestrator.train", *args], env, merge_stderr=False)
    try:
        deadline = time.time() + 300
        while not (out / "progress.jsonl").exists() or not read_jsonl(out / "progress.jsonl"):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.5)
        first = read_jsonl(out / "progress.jsonl")[0]
        drained = first["node_fold0"]
        assert first["node_fold1"] == drained  # PACK: both folds on one node
        drain(cluster.address, drained, env, deadline_s=3)
        stdout, stderr = proc.communicate(timeout=420)
    finally:
        stop(proc)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    progress = read_jsonl(out / "progress.jsonl")
    assert [p["epoch"] for p in progress] == list(range(1, EPOCHS + 1))
    resumed = [p for p in progress if p.get("resumed_after", 0) > 0]
    assert resumed, progress  # the folds restarted from a checkpoint ...
    assert {resumed[-1]["node_fold0"], resumed[-1]["node_fold1"]} != {drained}  # ... on the other node
    lines = [line for line in stdout.splitlines() if line.startswith("node preempted")]
    assert len(lines) == 1, stdout[-3000:]
    assert f"({drained[:8]}: folds [0, 1])" in lines[0]
    assert "(preemption 1 of unlimited, not counted in --max-failures)" in lines[0]
    print(f"\npreemption: {lines[0]}; resumed after epoch {resumed[0]['resumed_after']}")
