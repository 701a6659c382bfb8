"""A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster): a head with no CPUs for
fold work and no GPUs (the trial drivers' `tune_driver` only, as cluster.yaml's head) and two nodes
with one fake GPU each. Fold workers hold a GPU each, so the 2 folds must land on different nodes;
with no CUDA behind the fake GPUs they train on the CPU (SALT_FAKE_GPUS=1; without it worker_device
refuses a GPU that CUDA cannot start)."""

from __future__ import annotations

import json
import time

import pytest

from orchestrator.runtime import FAKE_GPUS
from salt_model import run_folder
from tests.cluster_helpers import read_jsonl, stop_tmpdir_processes
from tests.conftest import TINY, tiny_args
from tests.processes import private_tmpdir

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

TWO_FOLDS = [o for o in TINY if not o.startswith("data.folds")] + ["data.folds=2"]


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray
    from ray.cluster_utils import Cluster

    tmpdir = private_tmpdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", tmpdir)
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.setenv(FAKE_GPUS, "1")  # the nodes' raylets and the job's workers inherit it
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "resources": {"tune_driver": 8}, "include_dashboard": True},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_tmpdir_processes(tmpdir)
        mp.undo()


def test_train_spreads_gpu_folds_over_the_nodes(gpu_cluster, tiny_data_root, tmp_path, capsys):
    import ray

    from orchestrator import train

    out = tmp_path / "train"
    start = time.perf_counter()
    assert (
        train.main(tiny_args(tiny_data_root, out, "--address", gpu_cluster.address, overrides=TWO_FOLDS)) == 0
    )
    wall = time.perf_counter() - start
    ray.shutdown()
    progress = read_jsonl(out / run_folder.PROGRESS)
    assert [p["epoch"] for p in progress] == [1, 2]
    placement = {f"fold {r}": progress[-1][f"node_fold{r}"] for r in range(2)}
    gpu_nodes = {n.node_id for n in gpu_cluster.worker_nodes}
    assert set(placement.values()) == gpu_nodes, placement  # one fold per GPU node, none on the head
    cv = json.loads((out / "cv.json").read_text())
    assert len(cv["fold_scores"]) == 2
    assert (out / "submission.csv").read_text().count("\n") == 12 + 1
    printed = capsys.readouterr().out
    assert "fold workers x {'CPU': 2.0, 'GPU': 1.0}" in printed
    assert "1 run at once x 2 folds x 1 GPU = 2 of 2 GPUs busy" in printed  # the utilisation plan
    print(f"\nmulti-node train: placement {placement}, wall {wall:.0f}s")


def test_tune_trials_spread_their_folds_over_the_nodes(gpu_cluster, tiny_data_root, tmp_path, monkeypatch):
    import ray

    from orchestrator import tune

    monkeypatch.setenv("RAY_ADDRESS", gpu_cluster.address)  # the address from the environment
    out = tmp_path / "tune"
    args = tiny_args(tiny_data_root, out, "--trials", "2", overrides=TWO_FOLDS)
    start = time.perf_counter()
    assert tune.main(args) == 0
    wall = time.perf_counter() - start
    ray.shutdown()
    results = sorted((out / run_folder.TUNE / "search").glob("*/result.json"))
    assert len(results) == 2
    gpu_nodes = {n.node_id for n in gpu_cluster.worker_nodes}
    for path in results:
        last = read_jsonl(path)[-1]
        assert last["epoch"] == 2
        assert {last["node_fold0"], last["node_fold1"]} == gpu_nodes, path
    assert (out / "submission.csv").exists() and (out / "trials.csv").exists()
    print(f"\nmulti-node tune: 2 trials in {wall:.0f}s")
