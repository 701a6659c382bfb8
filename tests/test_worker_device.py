"""A fold worker's device (orchestrator.runtime.worker_device), without Ray: a worker Ray gave GPUs
whose CUDA cannot start refuses, naming the node and the CUDA error, and is never retried; fake GPUs
(SALT_FAKE_GPUS=1, the tests' GPU nodes) train on the CPU; a worker without GPUs takes Ray's device."""

from __future__ import annotations

import pytest
import ray
import ray.train.torch
import torch

from orchestrator import runtime
from orchestrator.faults import DETERMINISTIC
from orchestrator.runtime import FAKE_GPUS, CudaUnavailable, worker_device

CPU = torch.device("cpu")


@pytest.fixture
def gpu_node(monkeypatch):
    """A node where Ray assigned GPU 3 to this worker and CUDA cannot start (a driver too old)."""
    monkeypatch.delenv(FAKE_GPUS, raising=False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setattr(runtime.socket, "gethostname", lambda: "ip-10-0-3-7")
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.3.7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def init():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040)")

    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 0))


def test_a_gpu_that_cuda_cannot_start_is_refused_naming_the_node_and_the_cuda_error(gpu_node):
    with pytest.raises(CudaUnavailable) as caught:
        worker_device()
    message = str(caught.value)
    assert "node ip-10-0-3-7 (10.0.3.7)" in message
    assert "GPU [3]" in message
    assert "RuntimeError: The NVIDIA driver on your system is too old (found version 11040)" in message
    assert f"torch {torch.__version__}" in message
    assert isinstance(caught.value, DETERMINISTIC)  # fold_worker reports it once: never retried


def test_configured_gpus_are_refused_even_when_ray_lists_no_gpu_ids(gpu_node, monkeypatch):
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    with pytest.raises(
        CudaUnavailable, match=r"node ip-10-0-3-7 \(10.0.3.7\): Ray gave this fold worker GPU 0.5"
    ):
        worker_device(gpus_per_fold=0.5)


def test_fake_gpus_train_on_the_cpu(gpu_node, monkeypatch):
    monkeypatch.setenv(FAKE_GPUS, "1")
    assert worker_device(gpus_per_fold=1.0) == CPU


def test_a_worker_without_gpus_takes_rays_device(gpu_node, monkeypatch):
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: CPU)
    assert worker_device(gpus_per_fold=0.0) == CPU


def test_a_working_gpu_is_rays_device(gpu_node, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_device(gpus_per_fold=1.0) == torch.device("cuda", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA starts here")
def test_the_real_cuda_error_of_this_torch_is_in_the_message(monkeypatch):
    """No CUDA patched: this machine's torch says itself why CUDA cannot start (a CPU build here)."""
    monkeypatch.delenv(FAKE_GPUS, raising=False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.3.7")
    with pytest.raises(CudaUnavailable) as caught:
        worker_device()
    try:
        torch.cuda.init()
    except Exception as error:
        assert str(error) in str(caught.value)
    else:
        pytest.fail("torch.cuda.init() started CUDA where is_available() is False")


def test_init_ray_forwards_the_fake_gpu_switch_to_the_job(monkeypatch):
    seen = {}
    monkeypatch.setenv(FAKE_GPUS, "1")
    for key in runtime.JOB_ENV:  # init_ray sets them in this process; restored after the test
        monkeypatch.setenv(key, runtime.JOB_ENV[key])
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime, "existing_cluster", lambda address: None)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(runtime.console, "capture_ray_logs", lambda: None)
    runtime.init_ray(num_cpus=1)
    assert seen["runtime_env"]["env_vars"][FAKE_GPUS] == "1"
