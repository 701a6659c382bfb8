"""Shared fixtures: the session's private temp root, the real data folder (when present), tiny generated
data, a CPU-sized config, and the real runs that several test modules read (one train run, its pseudo
round, one search), each run once per session."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from salt_model import run_folder
from salt_model.config import load_config
from tests import processes

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
# cosine restarts every epoch: 2 epochs end 2 cycles, both kept as snapshots; SWA over both epochs
MEMBERS = [
    *TINY,
    "schedule.name=cosine",
    "schedule.cycle_epochs=1",
    "train.snapshots=2",
    "train.swa_epochs=2",
]
# A small search: 2 folds x 3 epochs, ASHA rungs at epochs 1 and 2
SEARCH = [
    *TINY,
    "data.folds=2",
    "train.epochs=3",
    "search.trials=3",
    "search.switch_low=1",
    "search.grace_epochs=1",
    "search.max_concurrent=1",
]
# A loose pseudo-label rule, so that the tiny 2-epoch model (its probabilities are within ~0.3 of 0.5)
# keeps some of the 12 test tiles and drops others (tests/test_pseudo_rounds.py asserts both)
RULE = {"low": 0.45, "high": 0.55, "min_fraction": 0.5}
ROUND_1 = [
    *MEMBERS,
    "pseudo.rounds=1",
    *(f"pseudo.{k}={v}" for k, v in RULE.items()),
    "pseudo.weight=0.5",
    "pseudo.teacher=ensemble",  # one set of tiles for every fold (tests/test_teacher.py: the fold teacher)
]


@pytest.fixture(scope="session", autouse=True)
def private_temp_root():
    """Every Ray the suite starts lives under one private temp root, with RAY_ADDRESS unset: none
    attaches to a cluster that `ray start` left on the machine. At the end, the processes naming the
    root (Ray daemons a test left behind) are stopped and the root is removed."""
    root = tempfile.mkdtemp(prefix="salt", dir="/tmp")  # short: Ray's unix socket paths live below it
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_TMPDIR", processes.ROOT_ENV)}
    os.environ.pop("RAY_ADDRESS", None)
    os.environ[processes.ROOT_ENV] = root
    os.environ["RAY_TMPDIR"] = processes.private_tmpdir()  # the in-process Ray of `ray_cluster`
    try:
        yield root
    finally:
        processes.kill_naming(root)
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    from salt_model.data.loading import resolve_data

    return resolve_data("synthetic", tiny_config.data, cache_dir=tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray per test module (in the session's private RAY_TMPDIR): 4 logical CPUs so 3 fold
    workers fit on 2 cores. Commands that tests run in subprocesses get their own RAY_TMPDIR."""
    import ray

    from orchestrator.runtime import init_ray

    init_ray(num_cpus=4, resources={"tune_driver": 8})
    yield
    ray.shutdown()


# In-process fold runs (tests/test_ensemble.py, the shared `fold_checkpoints`), on top of TINY: cosine
# restarts every epoch, so 3 epochs end 3 cycles (at 1, 2, 3); keep the last 2, SWA over epochs 2-3.
IN_PROCESS_MEMBERS = [
    "train.eval_tta=false",
    "train.seed=0",
    "train.epochs=3",
    "schedule.name=cosine",
    "schedule.cycle_epochs=1",
    "train.snapshots=2",
    "train.swa_epochs=2",
]


@pytest.fixture(scope="session")
def fold_checkpoints(tiny_config, tiny_data_root, tmp_path_factory):
    """3 folds trained in-process (no Ray) with IN_PROCESS_MEMBERS and an empty head with a hidden layer,
    a checkpoint per epoch as Ray Train lays it out (checkpoint_{epoch}/, every fold's files merged):
    (config, data, folds, checkpoint root). Shared by the collection, emptiness and teacher tests."""
    from salt_model.data.folds import make_folds
    from salt_model.data.loading import load_split
    from salt_model.training.fold_loop import train_fold

    config = tiny_config.with_overrides([*IN_PROCESS_MEMBERS, "model.empty_hidden=8"])
    data = load_split(tiny_data_root, "train")
    folds = make_folds(data.masks, 3, config.data.fold_seed)
    root = tmp_path_factory.mktemp("ckpt")
    for fold in range(3):
        save = lambda m, save: save(root / f"checkpoint_{m['epoch']}")  # noqa: E731
        train_fold(config, data, fold, folds=folds, report=save, device="cpu")
    return config, data, folds, root


def collected_run(fold_checkpoints, tmp_path_factory):
    """`fold_checkpoints` collected into a new run folder's models/, cv.json and oof.npz as
    orchestrator.train does: (run folder, data, folds, cv summary)."""
    from ray.train import Checkpoint

    from orchestrator.collect import collect_folds
    from orchestrator.finish import write_cv

    config, data, folds, root = fold_checkpoints
    out = tmp_path_factory.mktemp("run")
    last = root / f"checkpoint_{config.train.epochs}"
    result = collect_folds(Checkpoint.from_directory(str(last)), out, data, folds, 3)
    return out, data, folds, write_cv(out, result, config, {})


def tiny_args(root, out, *extra, overrides=TINY) -> list[str]:
    args = ["--data", str(root), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    return args + list(extra)


def records(path: Path) -> list[dict]:
    """The lines of a JSONL file (progress.jsonl), [] when it does not exist yet."""
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def check_run(result, what: str) -> None:
    assert result.returncode == 0, (
        f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="session")
def train_run(tiny_data_root, tmp_path_factory):
    """One real `python -m orchestrator.train` (3 folds x 2 epochs, snapshots and SWA), as a user runs
    it: (run folder, its CompletedProcess). The console, orchestrator, predict and pseudo tests read it."""
    out = tmp_path_factory.mktemp("train") / "run"
    result = processes.run_entry("orchestrator.train", tiny_args(tiny_data_root, out, overrides=MEMBERS))
    check_run(result, "orchestrator.train")
    return out, result


@pytest.fixture(scope="session")
def pseudo_run(train_run, tiny_data_root, tmp_path_factory):
    """A copy of `train_run`, extended by the same command with pseudo.rounds=1: (folder, round 0's
    progress records, the extension's CompletedProcess)."""
    out = tmp_path_factory.mktemp("pseudo") / "run"
    shutil.copytree(train_run[0], out)
    round_0 = records(out / run_folder.PROGRESS)
    # round 1 trains 3 epochs where round 0 trained 2 (pseudo.epochs), Lovasz in the last one as in round 0
    extend = tiny_args(tiny_data_root, out, overrides=[*ROUND_1, "pseudo.epochs=3"])
    result = processes.run_entry("orchestrator.train", extend)
    check_run(result, "orchestrator.train with pseudo.rounds=1")
    return out, round_0, result


# The shared search's known outcome. Study trials 0 and 1 run at once; trial 2 starts when one of them
# has ended, so their first-rung scores are recorded before its own, and it learns nothing (its folds
# report a score of 0): ASHA stops it at its first rung, and the study records it PRUNED. Of trials 0
# and 1 at least one completes (the first to reach a rung is never stopped there). Trial 3 fails at
# epoch 2 with a NaN loss: a deterministic error, FAIL, never retried.
SEARCH_FAULTS = [
    {"study_trial": 2, "mode": "poor"},
    {"study_trial": 3, "fold": 1, "epoch": 2, "mode": "nan", "batches": 1},
]


@pytest.fixture(scope="session")
def search_run(tiny_data_root, tmp_path_factory):
    """One real `python -m orchestrator.tune`: 4 trials x 2 folds x 3 epochs, two trials at once, one
    PRUNED by ASHA and one FAIL (SEARCH_FAULTS): (folder, CompletedProcess, the fault markers' folder)."""
    base = tmp_path_factory.mktemp("search")
    out = base / "search"
    faults = [{**f, "marker": str(base / f"fault-{f['study_trial']}")} for f in SEARCH_FAULTS]
    overrides = [*SEARCH, "search.trials=4", "search.max_concurrent=2"]
    result = processes.run_entry(
        "orchestrator.tune",
        tiny_args(tiny_data_root, out, overrides=overrides),
        timeout=900,
        SALT_INJECT_FAULT=json.dumps(faults),
    )
    check_run(result, "orchestrator.tune")
    return out, result, base
