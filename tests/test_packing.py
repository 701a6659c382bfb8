"""The default GPU share per fold (orchestrator.packing, runtime.default_gpus_per_fold): the largest
of 1, 0.5, 0.25 that keeps the most of the cluster's GPUs busy with k folds x the trials at once, and
the plan line printed at start. Pure arithmetic, no Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.capacity import Capacity, NodeType, launcher_capacity
from orchestrator.packing import GpuPlan, folds_fit_the_node, plan_gpus, runs_that_fit
from orchestrator.runtime import default_gpus_per_fold, fold_resources
from salt_model.config import load_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"
HEAD = NodeType("head", {"CPU": 0.0, "tune_driver": 8.0}, 1, worker=False)
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}


def gpu_nodes(count: int, node: dict = GPU_NODE, max_workers: int = -1) -> Capacity:
    return Capacity((HEAD, NodeType("gpu", dict(node), count)), "test", max_workers)


@pytest.mark.parametrize(
    ("total", "folds", "wanted", "share", "runs", "busy"),
    [
        (8, 5, 8, 0.5, 3, 7.5),  # the case: 1 GPU each runs 1 trial, 3 GPUs idle
        (8, 5, 2, 1.0, 1, 5.0),  # 2 trials wanted: 0.5 busies 5 GPUs too, so folds keep a whole GPU
        (8, 5, 1, 1.0, 1, 5.0),  # orchestrator.train: one run
        (8, 3, 8, 0.5, 5, 7.5),  # 1 -> 2 trials (6 busy), 0.25 -> 8 trials (6): 0.5 -> 5 trials
        (8, 4, 8, 1.0, 2, 8.0),  # 4 folds divide 8 GPUs: nothing idle at a whole GPU
        (10, 5, 20, 1.0, 2, 10.0),
        (10, 3, 20, 0.25, 13, 9.75),  # 1 and 0.5 leave 1 GPU idle, 0.25 a quarter
        (10, 3, 4, 1.0, 3, 9.0),  # max_concurrent 4: 0.5 runs all 4 but busies only 6
        (4, 5, 1, 0.5, 1, 2.5),  # 5 folds on 4 GPUs: a whole GPU each cannot run at all
        (1, 3, 8, 0.25, 1, 0.75),
        (1, 2, 8, 0.5, 1, 1.0),
        (2, 2, 1, 1.0, 1, 2.0),
    ],
)
def test_the_share_that_keeps_the_most_gpus_busy(total, folds, wanted, share, runs, busy):
    plan = plan_gpus(folds, wanted, total, GPU_NODE)
    assert (plan.share, plan.runs, plan.busy) == (share, runs, pytest.approx(busy))
    # no other share busies more GPUs, and none larger busies as many
    for other in (1.0, 0.5, 0.25):
        fit = runs_that_fit(folds, other, total, wanted)
        if fit >= 1:
            assert fit * folds * other <= plan.busy + 1e-9
            assert other <= share or fit * folds * other < plan.busy


def test_the_plan_line():
    assert plan_gpus(5, 8, 8, GPU_NODE).line() == "3 trials at once x 5 folds x 0.5 GPU = 7.5 of 8 GPUs busy"
    assert (
        plan_gpus(5, 1, 8, GPU_NODE, noun="run").line()
        == "1 run at once x 5 folds x 1 GPU = 5 of 8 GPUs busy"
    )
    assert (
        GpuPlan(4, 5, 1.0, math.inf).line()
        == "4 trials at once x 5 folds x 1 GPU = 20 of unlimited GPUs busy"
    )


def test_nothing_fits_one_gpu_with_five_folds():
    assert plan_gpus(5, 4, 1, GPU_NODE) is None  # 5 x 0.25 = 1.25 GPUs
    assert runs_that_fit(5, 0.25, 1, 4) == 0


def test_a_node_without_cpus_for_the_packed_folds_limits_the_share():
    two_cpus = {"CPU": 2.0, "GPU": 1.0}
    assert not folds_fit_the_node(0.25, two_cpus, 1.0) and folds_fit_the_node(0.5, two_cpus, 1.0)
    assert plan_gpus(3, 8, 1, two_cpus) is None  # 0.25 would put 4 folds on 2 CPUs, 0.5 x 3 > 1 GPU
    assert plan_gpus(3, 8, 8, two_cpus).share == 0.5
    assert plan_gpus(3, 8, 8, {"CPU": 8.0, "GPU": 1.0}, cpus_per_fold=8).share == 1.0  # --cpus-per-fold 8
    assert not folds_fit_the_node(1.0, {"CPU": 4.0, "GPU": 0.5}, 1.0)  # a share larger than the node's GPUs


def test_an_unlimited_cluster_keeps_a_gpu_per_fold():
    plan = plan_gpus(5, 6, math.inf, GPU_NODE)
    assert (plan.share, plan.runs) == (1.0, 6)


def test_the_default_from_the_clusters_capacity():
    assert default_gpus_per_fold(5, 8, gpu_nodes(8)) == 0.5
    assert (
        default_gpus_per_fold(5, 8, Capacity((HEAD, NodeType("p4d", {"CPU": 96.0, "GPU": 8.0}, 1)), "t"))
        == 0.5
    )
    assert default_gpus_per_fold(5, 1, gpu_nodes(8)) == 1.0
    assert default_gpus_per_fold(3, 8, gpu_nodes(1)) == 0.25
    # the global max_workers caps 20 possible GPU nodes at 10 (orchestrator.capacity)
    assert default_gpus_per_fold(3, 20, gpu_nodes(20, max_workers=10)) == 0.25
    assert default_gpus_per_fold(5, 20, gpu_nodes(20, max_workers=10)) == 1.0
    # not even 0.25 fits: 1, and fold_resources names the shortfall
    assert default_gpus_per_fold(5, 4, gpu_nodes(1)) == 1.0
    with pytest.raises(ValueError, match="5 folds x 1 GPUs need 5 GPUs"):
        fold_resources(5, None, None, capacity=gpu_nodes(1))


def test_cpu_only_clusters_stay_on_cpus():
    laptop = Capacity((NodeType("laptop", {"CPU": 2.0}, 1),), "test")
    assert default_gpus_per_fold(3, 4, laptop) == 0.0
    r = fold_resources(3, None, None, capacity=laptop)
    assert (r.gpus, r.cpus) == (0.0, pytest.approx(0.6))  # as before: the CPUs shared among the folds


def test_cluster_yaml_packs_three_fold_trials_on_its_ten_gpus():
    capacity = launcher_capacity(CLUSTER)  # 10 GPU workers at most (global max_workers), 1 GPU 4 CPUs each
    assert default_gpus_per_fold(5, 16, capacity) == 1.0  # 2 trials busy all 10
    assert default_gpus_per_fold(3, 16, capacity) == 0.25  # 13 trials busy 9.75
    r = fold_resources(3, None, 0.25, capacity=capacity)
    assert (r.gpus, r.cpus) == (0.25, 1.0)  # four folds on a GPU node share its 4 CPUs


@pytest.mark.parametrize(
    ("folds", "trials", "total"), [(5, 8, 8), (3, 8, 8), (5, 20, 10), (3, 2, 10), (5, 3, 1)]
)
def test_the_search_runs_the_planned_trials_at_once(folds, trials, total):
    """tune.main's sizing: the default share, then trials_per_wave on it, gives the plan's trial count."""
    from orchestrator.search_setup import trials_per_wave

    config = load_config(None, [f"data.folds={folds}", f"search.trials={trials}"])
    capacity = gpu_nodes(total)
    share = default_gpus_per_fold(folds, trials, capacity)
    plan = plan_gpus(folds, trials, total, GPU_NODE)
    if plan is None:
        with pytest.raises(ValueError, match="largest possible cluster has"):
            fold_resources(folds, None, share, capacity=capacity)
        return
    one_run = fold_resources(folds, None, share, capacity=capacity)
    assert (one_run.gpus, trials_per_wave(config, one_run, capacity)) == (plan.share, plan.runs)
