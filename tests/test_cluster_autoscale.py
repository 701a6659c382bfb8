"""Ray's fake multi-node autoscaler (RAY_FAKE_CLUSTER=1, provider fake_multinode, autoscaler v1) with
the node types of cluster.yaml and no GPU node at start: a k-fold run asks for GPUs from the possible
node types, the autoscaler launches GPU nodes, and the run finishes on them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.runtime import FAKE_GPUS
from salt_model import run_folder
from tests.cluster_helpers import ray_head
from tests.conftest import TINY, tiny_args

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TWO_FOLDS = [o for o in TINY if not o.startswith("data.folds")] + ["data.folds=2"]


def fake_config(cluster_yaml: Path, gcs_address: str, cpus_per_node: int = 2, max_per_type: int = 1) -> dict:
    """cluster.yaml's node types on the fake provider, shrunk to this machine (CPUs, node count)."""
    real = yaml.safe_load(cluster_yaml.read_text())
    types = {}
    for name, spec in real["available_node_types"].items():
        resources = dict(spec["resources"])
        if name == real["head_node_type"]:
            types["ray.head.default"] = {"resources": resources, "node_config": {}, "max_workers": 0}
        else:
            resources["CPU"] = min(resources["CPU"], cpus_per_node)
            types[name] = {
                "resources": resources,
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_per_type,
            }
    empty = {"file_mounts": {}, "cluster_synced_files": [], "rsync_exclude": [], "rsync_filter": []}
    commands = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    return {
        "cluster_name": "fake-salt",
        "max_workers": 2 * max_per_type,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": real["idle_timeout_minutes"],
        "docker": {},
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "file_mounts_sync_continuously": False,
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        **empty,
        **{c: [] for c in commands},
    }


def test_a_gpu_kfold_run_scales_gpu_nodes_up_and_finishes(tiny_data_root, tmp_path, monkeypatch):
    import ray
    from ray._private.services import get_node_ip_address

    from orchestrator import train
    from tests.cluster_helpers import free_port

    port = free_port()
    config = tmp_path / "fake-cluster.json"
    config.write_text(json.dumps(fake_config(REPO / "cluster.yaml", f"{get_node_ip_address()}:{port}")))
    types = json.loads(config.read_text())["available_node_types"]
    assert all(t.get("min_workers", 0) == 0 for t in types.values())  # no GPU node at start
    head_resources = types["ray.head.default"]["resources"]
    # Autoscaler v1 (what `ray up` runs): v2's monitor needs the fake provider's example.yaml,
    # which the 2.60 wheel does not ship.
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", FAKE_GPUS: "1"}
    extra = {k: v for k, v in head_resources.items() if k != "CPU"}
    with ray_head(
        f"--autoscaling-config={config}",
        f"--num-cpus={int(head_resources['CPU'])}",
        f"--resources={json.dumps(extra)}",
        port=port,
        env_extra=env,
    ) as (address, _, driver_env):
        for key in ("RAY_TMPDIR", "PYTHONPATH"):
            monkeypatch.setenv(key, driver_env[key])
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setenv(FAKE_GPUS, "1")  # the fake GPU nodes have no CUDA: init_ray forwards it to the job
        gpu_nodes_up: list[float] = []
        start = time.perf_counter()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if ray.is_initialized():
                    up = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
                    if len(up) > len(gpu_nodes_up):
                        gpu_nodes_up.extend([time.perf_counter() - start] * (len(up) - len(gpu_nodes_up)))
                done.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            args = ["--address", address, "--cluster-config", str(config)]  # the autoscaler's own config
            assert train.main(tiny_args(tiny_data_root, tmp_path / "out", *args, overrides=TWO_FOLDS)) == 0
        finally:
            done.set()
            watcher.join()
            ray.shutdown()
    wall = time.perf_counter() - start
    progress = [
        json.loads(line) for line in (tmp_path / "out" / run_folder.PROGRESS).read_text().splitlines()
    ]
    assert [p["epoch"] for p in progress] == [1, 2]
    assert len(set(progress[-1][f"node_fold{r}"] for r in range(2))) == 2  # one fold per launched GPU node
    assert len(gpu_nodes_up) == 2 and (tmp_path / "out" / "submission.csv").exists()
    print(f"\nautoscaler: GPU nodes up at {gpu_nodes_up[0]:.1f}s and {gpu_nodes_up[1]:.1f}s; run {wall:.0f}s")
