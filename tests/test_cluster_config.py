"""cluster.yaml against Ray's own launcher schema, its pins against the project's; the fold and trial
sizing against the node types and caps it declares (no Ray started). What `ray up` itself does with
the file (security group, instance profiles, the spot fallback) is tests/test_cluster_aws.py."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.capacity import Capacity, NodeType, launcher_capacity
from orchestrator.runtime import fold_resources

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_accepts_the_cluster_config(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_trial_drivers_go_to_the_head_and_folds_to_the_gpu_workers():
    from orchestrator.search_setup import trial_resources

    capacity = launcher_capacity(CLUSTER)
    assert trial_resources(capacity) == {"tune_driver": 1}  # the head has them, and no CPU for folds
    head = [t for t in capacity.node_types if not t.worker]
    assert len(head) == 1 and head[0].resources.get("CPU") == 0 and "GPU" not in head[0].resources
    assert capacity.node_type_with("GPU").worker


def test_trial_drivers_without_a_head_resource_are_an_error_not_a_cpu_anywhere():
    from orchestrator.search_setup import trial_resources

    hand_started = Capacity(
        (NodeType("head", {"CPU": 8.0}, 1), NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, 2)), "test"
    )
    with pytest.raises(
        ValueError, match=r"\(test\) has no 'tune_driver' resource.*ray start --head --resources="
    ):
        trial_resources(hand_started)
    laptop = Capacity((NodeType("laptop", {"CPU": 2.0, "tune_driver": 64.0}, 1),), "test")  # init_ray's own
    assert trial_resources(laptop) == {"tune_driver": 1}


def test_image_python_and_pins_agree(cluster):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
    )
    image = cluster["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-gpu", image)
    assert match, image
    assert match["ray"] == pins["ray"]
    assert project["project"]["requires-python"] == ">=3.11"
    assert (int(match["py"]), int(match["minor"])) >= (3, 11)
    assert project["tool"]["ruff"]["target-version"] == "py311"


def test_setup_installs_with_the_readmes_command(cluster):
    readme = (REPO / "README.md").read_text()
    install = "python3 -m pip install -c constraints.txt -e ."
    assert install in readme
    assert cluster["setup_commands"] == [f"cd ~/salt-orchestrator && {install}"]
    assert "--storage s3://" in readme and "ray down" in readme


def test_fold_resources_come_from_the_possible_gpu_nodes(cluster):
    capacity = launcher_capacity(CLUSTER)
    # two GPU types of max_workers 10 each, but the global max_workers caps all workers at 10
    assert (
        cluster["max_workers"] == 10 and capacity.max_total("GPU") == 10 and capacity.max_per_node("CPU") == 4
    )
    with pytest.raises(ValueError, match="11 folds x 1 GPUs need 11 GPUs"):
        fold_resources(11, None, 1, capacity=capacity)
    r = fold_resources(5, None, None, capacity=capacity)  # no GPU node is up, and folds still ask for GPUs
    assert (r.gpus, r.cpus) == (1.0, 4.0)
    half = fold_resources(5, None, 0.5, capacity=capacity)
    assert (half.gpus, half.cpus) == (0.5, 2.0)


def test_impossible_requests_fail_before_anything_starts():
    gpus = Capacity(
        (NodeType("head", {"CPU": 0.0, "tune_driver": 8.0}, 1), NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, 2)),
        "test",
    )
    with pytest.raises(ValueError, match="5 folds x 1 GPUs need 5 GPUs .* largest possible cluster has 2"):
        fold_resources(5, None, 1, capacity=gpus)
    with pytest.raises(ValueError, match="no node has that many GPUs"):
        fold_resources(1, None, 2, capacity=gpus)
    with pytest.raises(ValueError, match="no node has that many CPUs"):
        fold_resources(2, 8, 1, capacity=gpus)
    capped = Capacity(gpus.node_types, "test", max_workers=1)  # the global cap below the type's own
    with pytest.raises(ValueError, match="2 folds x 1 GPUs need 2 GPUs .* largest possible cluster has 1"):
        fold_resources(2, None, 1, capacity=capped)
    cpus = Capacity((NodeType("laptop", {"CPU": 2.0}, 1),), "test")
    with pytest.raises(ValueError, match="can have no GPUs"):
        fold_resources(2, None, 1, capacity=cpus)
    with pytest.raises(ValueError, match="3 folds x 1 CPUs need 3 CPUs"):
        fold_resources(3, 1, 0, capacity=cpus)
    assert fold_resources(3, None, None, capacity=cpus).cpus == pytest.approx(0.6)


def test_grafana_dashboard_plots_the_fold_gauge_by_trial_and_fold():
    dashboard = json.loads((REPO / "dashboards" / "salt_folds.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all("ray_fold_val_map" in e for e in exprs)
    assert "{{trial}} fold {{fold}}" in [t["legendFormat"] for p in dashboard["panels"] for t in p["targets"]]
    assert "dashboards/salt_folds.json" in (REPO / "docs" / "cluster.md").read_text()


def test_fold_resources_from_flags_else_the_config_cluster_section():
    from argparse import Namespace

    from orchestrator.runtime import requested
    from salt_model.config import load_config

    config = load_config(None, ["cluster.gpus_per_fold=0.5", "cluster.cpus_per_fold=2"])
    assert requested(Namespace(gpus_per_fold=None, cpus_per_fold=None), config.cluster) == (0.5, 2.0)
    assert requested(Namespace(gpus_per_fold=1.0, cpus_per_fold=None), config.cluster) == (1.0, 2.0)
    assert requested(Namespace(gpus_per_fold=None, cpus_per_fold=None), load_config(None).cluster) == (
        None,
        None,
    )
    with pytest.raises(ValueError, match=r"cluster.gpus_per_fold=1.5 is out of range"):
        load_config(None, ["cluster.gpus_per_fold=1.5"])
