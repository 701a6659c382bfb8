"""A node preemption costs a resume, not a retry: a real 3-node Ray (ray.cluster_utils.Cluster: a head
with no CPUs, two 2-CPU nodes), `orchestrator.train --max-failures 0` with 2 folds of 1 CPU, and, once
epoch 1 is checkpointed, the instance metadata of the node holding the folds (a local HTTP server
standing in for EC2's IMDSv2) announces a spot reclaim; orchestrator.spot_watch, watching it as on a
cluster.yaml worker, drains that node with reason PREEMPTION through Ray's `ray drain-node`. Ray
Train's preemption watcher sees the drain; after its deadline the folds restart on the other node from
the last checkpoint, charged to --max-preemptions; with --max-failures 0 any retry counted there would
end the run."""

from __future__ import annotations

import calendar
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.runtime import cluster_wants_token
from orchestrator.spot_watch import ACTION, drain_command, seconds_left
from salt_model import run_folder
from tests.cluster_helpers import read_jsonl, stop_tmpdir_processes
from tests.conftest import TINY, tiny_args
from tests.processes import child_env, private_tmpdir, start, stop

EPOCHS = 10  # epochs take seconds here: the drain must land before the last one
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


class FakeIMDS(BaseHTTPRequestHandler):
    """IMDSv2 as EC2 serves it: a token on PUT, then spot/instance-action 404 until `notice` is set."""

    notice: str | None = None

    def do_PUT(self):
        self._reply(200, "token-for-test")

    def do_GET(self):
        ok = self.path == ACTION and self.headers.get("X-aws-ec2-metadata-token") == "token-for-test"
        if ok and FakeIMDS.notice:
            self._reply(200, FakeIMDS.notice)
        else:
            self._reply(404, "Not Found")

    def _reply(self, code: int, body: str) -> None:
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_the_notice_time_becomes_the_drain_deadline():
    notice = json.dumps({"action": "terminate", "time": "2026-12-02T01:02:03Z"})
    now = calendar.timegm(time.strptime("2026-12-02T01:00:03Z", "%Y-%m-%dT%H:%M:%SZ"))
    assert seconds_left(notice, now=now) == 120
    assert seconds_left(notice, now=now + 500) == 0
    cmd = drain_command("10.0.0.1:6379", None, 120, notice)
    assert "--reason=DRAIN_NODE_REASON_PREEMPTION" in cmd and "--deadline-remaining-seconds=120" in cmd
    assert not any(c.startswith("--node-id") for c in cmd)  # this node


@pytest.mark.ray
@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("budget", [-1, 0], ids=["any-preemptions", "no-preemptions"])
def test_a_drained_node_costs_a_resume_not_a_retry(three_nodes, tiny_data_root, tmp_path, budget):
    cluster, tmpdir = three_nodes
    out = tmp_path / "run"
    env = child_env(RAY_TMPDIR=tmpdir, RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="1")  # Ray propagates it
    args = tiny_args(
        tiny_data_root,
        out,
        *(
            "--address",
            cluster.address,
            "--cpus-per-fold",
            "1",
            "--max-failures",
            "0",
            "--max-preemptions",
            str(budget),
        ),
        overrides=OVERRIDES,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeIMDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    imds = f"http://127.0.0.1:{server.server_address[1]}"
    FakeIMDS.notice = None
    proc = start([sys.executable, "-m", "orchestrator.train", *args], env, merge_stderr=False)
    try:
        deadline = time.time() + 300
        while not (out / run_folder.PROGRESS).exists() or not read_jsonl(out / run_folder.PROGRESS):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.5)
        first = read_jsonl(out / run_folder.PROGRESS)[0]
        drained = first["node_fold0"]
        assert first["node_fold1"] == drained  # PACK: both folds on one node
        watch = start(
            [sys.executable, "-m", "orchestrator.spot_watch", "--address", cluster.address,
             "--node-id", drained, "--imds", imds, "--every", "0.5"],
            {**env, "RAY_AUTH_MODE": "token"} if cluster_wants_token(cluster.address) else env,
        )  # fmt: skip
        FakeIMDS.notice = json.dumps(
            {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 4))}
        )
        watched = watch.communicate(timeout=120)[0]
        assert watch.returncode == 0 and "draining" in watched, watched
        stdout, stderr = proc.communicate(timeout=420)
    finally:
        stop(proc)
        server.shutdown()
    if budget == 0:  # the preemption budget is spent: one error line, no traceback
        assert proc.returncode == 2, stdout[-3000:] + stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert (
            f"error: nodes were preempted more often than --max-preemptions allows (the last: {drained[:8]}"
            in stderr
        )
        return
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    progress = read_jsonl(out / run_folder.PROGRESS)
    assert [p["epoch"] for p in progress] == list(range(1, EPOCHS + 1))
    resumed = [p for p in progress if p.get("resumed_after", 0) > 0]
    assert resumed, progress  # the folds restarted from a checkpoint ...
    assert {resumed[-1]["node_fold0"], resumed[-1]["node_fold1"]} != {drained}  # ... on the other node
    lines = [line for line in stdout.splitlines() if line.startswith("node preempted")]
    assert len(lines) == 1, stdout[-3000:]
    assert f"({drained[:8]}: folds [0, 1])" in lines[0]
    assert "(preemption 1 of unlimited, not counted in --max-failures)" in lines[0]
    print(f"\npreemption: {lines[0]}; resumed after epoch {resumed[0]['resumed_after']}")
