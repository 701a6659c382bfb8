"""Shared fixtures: the real data folder (when present), tiny generated data, a CPU-sized config."""

from __future__ import annotations

from pathlib import Path

import pytest

from salt_model.config import load_config

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "tgs"

# A model small enough for 2 CPU cores; every architectural piece stays on.
TINY = [
    "model.encoder=resnet18",
    "model.width=0.125",
    "train.batch_size=8",
    "train.epochs=2",
    "train.loss_switch_epoch=1",
    "schedule.name=constant",
    "schedule.lr=0.003",
    "data.folds=3",
    "data.synthetic_train=60",
    "data.synthetic_test=12",
]


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "train" / "images").is_dir():
        pytest.skip(f"real TGS data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_config():
    return load_config(None, TINY)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory, tiny_config) -> Path:
    from salt_model.data import resolve_data

    return resolve_data("synthetic", tiny_config.data, cache_dir=tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray per test module: 4 logical CPUs so 3 fold workers fit on 2 cores. Module scope, so
    that modules whose tests start their own Ray in a subprocess never run beside this one."""
    import ray

    from orchestrator.runtime import init_ray

    init_ray(num_cpus=4, resources={"tune_driver": 8})
    yield
    ray.shutdown()


def tiny_args(root, out, *extra, overrides=TINY) -> list[str]:
    args = ["--data", str(root), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    return args + list(extra)
