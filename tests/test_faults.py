"""Real faults inside a k-fold run on a local Ray, and what each one keeps (from the run's records).

progress.jsonl is written by the driver after every epoch's report; each line says, per fold, the
epoch its current attempt resumed after (`resumed_after_fold{r}`). So a restart from scratch and a
resume leave different records even when the final histories are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salt_model import run_folder
from salt_model.data.folds import make_folds
from salt_model.data.loading import load_split

pytestmark = [pytest.mark.ray, pytest.mark.faults]


def progress(out):
    return [json.loads(line) for line in (out / run_folder.PROGRESS).read_text().splitlines()]


def run(config, root, out, failure, max_failures=2):
    from orchestrator.kfold import run_kfold
    from orchestrator.runtime import fold_resources

    data = load_split(root, "train")
    folds = make_folds(data.masks, config.data.folds, config.data.fold_seed)
    failure = {**failure, "marker": str(out.parent / "fault-marker")}
    return run_kfold(
        config, data, folds, out, fold_resources(config.data.folds, None, None), max_failures, failure
    )


def test_a_fold_worker_sigkilled_mid_epoch_resumes_from_the_latest_checkpoint(
    ray_cluster, tiny_config, tiny_data_root, tmp_path
):
    from orchestrator.runtime import fold_resources

    # train.threads=2 too: a fold worker runs as many torch threads as its Ray CPU share, whatever
    # train.threads says (4 logical CPUs / 3 folds: 1 thread each)
    config = tiny_config.with_overrides({"train.epochs": 3, "train.threads": 2})
    out = tmp_path / "run"
    result = run(config, tiny_data_root, out, {"fold": 1, "epoch": 3, "mode": "sigkill", "batches": 2})
    share = fold_resources(3, None, None).threads
    assert share == 1 and [h["threads"] for h in result.histories[0]] == [share] * 3

    marker = (tmp_path / "fault-marker").read_text()
    assert "SIGKILL after 2 batches of epoch 3" in marker  # killed in the middle of epoch 3
    lines = progress(out)
    # each epoch was reported exactly once: no finished epoch was trained again
    assert [p["epoch"] for p in lines] == [1, 2, 3]
    # The new attempt resumed from the latest checkpoint Ray had registered, never from scratch. The
    # kill falls two batches into epoch 3, so Ray's controller may not yet have registered epoch 2's
    # report and checkpoint: then epoch 2 (never reported before) is the one epoch redone.
    assert [p["resumed_after"] for p in lines] in ([0, 0, 2], [0, 1, 1])
    restart = lines[2]["resumed_after"]
    assert restart >= 1 and all(lines[2][f"resumed_after_fold{r}"] == restart for r in range(3))
    assert len(result.scores) == 3 and all(p.exists() for p in result.model_paths)
    for fold, history in enumerate(result.histories):
        assert [h["epoch"] for h in history] == [1, 2, 3] and {h["fold"] for h in history} == {fold}


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_at_once_and_is_not_retried(
    ray_cluster, tiny_config, tiny_data_root, tmp_path
):
    from orchestrator.faults import RunFailed

    out = tmp_path / "run"
    with pytest.raises(RunFailed, match="fold 2: FloatingPointError: loss is nan at epoch 1"):
        # max_failures=3: a retry would find the fault spent (marker) and finish, so finishing = retried
        run(tiny_config, tiny_data_root, out, {"fold": 2, "epoch": 2, "mode": "nan", "batches": 1}, 3)
    assert "NaN weights after 1 batches of epoch 2" in (tmp_path / "fault-marker").read_text()
    assert [p["epoch"] for p in progress(out)] == [1]  # epoch 2 never reported
    assert "FloatingPointError" in json.loads((out / run_folder.FAILURE).read_text())["fatal_error"]
    assert not (out / "models").exists()


@pytest.mark.slow
def test_a_transient_error_is_retried_from_the_checkpoint(ray_cluster, tiny_config, tiny_data_root, tmp_path):
    out = tmp_path / "run"
    result = run(tiny_config, tiny_data_root, out, {"fold": 0, "epoch": 2, "mode": "exit"})
    assert "exit at the end of epoch 2" in (tmp_path / "fault-marker").read_text()
    lines = progress(out)
    assert [p["epoch"] for p in lines] == [1, 2] and [p["resumed_after"] for p in lines] == [0, 1]
    assert len(result.model_paths) == 3


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets that listen on `port` (IPv4, from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_the_local_dashboard_listens_on_localhost_only(ray_cluster):
    """What the socket is bound to, not what Ray says: 0.0.0.0 would expose the dashboard (and its
    job submission API) to the network."""
    from ray._private.worker import global_worker

    url = global_worker.node.address_info["webui_url"]
    port = int(url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}, (
        f"the dashboard on port {port} listens on {listening_addresses(port)}"
    )


@pytest.mark.slow
def test_a_corrupted_checkpoint_resumes_from_the_previous_one_and_twice_stops_the_run_naming_the_files(
    ray_cluster, tiny_config, tiny_data_root, tmp_path
):
    """A rerun of a finished 2-epoch run resumes from Ray's latest checkpoint (epoch 2). Fold 1's file
    in it cut short: every fold resumes after epoch 1 (the checkpoint Ray kept before, keep_checkpoints
    2), retraining epoch 2 only. The latest one corrupted again, and the one before it too: the run
    stops without retrying, naming both files, and trains nothing."""
    from orchestrator.faults import RunFailed

    def kept():
        return sorted(p for p in (out / run_folder.RAY).glob("*/checkpoint_*") if p.is_dir())

    def cut_short(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    config = tiny_config.with_overrides({"train.epochs": 2, "train.keep_checkpoints": 2})
    out = tmp_path / "run"
    run(config, tiny_data_root, out, {"fold": -1, "epoch": 0})
    assert len(kept()) == 2
    cut_short(kept()[-1] / "fold_1.pt")
    result = run(config, tiny_data_root, out, {"fold": -1, "epoch": 0}, 3)
    lines = progress(out)
    assert [p["epoch"] for p in lines] == [1, 2, 2]  # epoch 2 retrained, epoch 1 kept
    assert all(lines[-1][f"resumed_after_fold{r}"] == 1 for r in range(3)) and "rereport" not in lines[-1]
    assert [h["epoch"] for h in result.histories[1]] == [1, 2] and len(result.model_paths) == 3

    latest, previous = kept()[-1] / "fold_1.pt", kept()[-2] / "fold_1.pt"  # the new one, the corrupted one
    cut_short(latest)
    with pytest.raises(RunFailed, match="no readable checkpoint left to resume from") as failed:
        run(config, tiny_data_root, out, {"fold": -1, "epoch": 0}, 3)
    for path in (latest, previous):
        assert f"fold 1: checkpoint {path}: not a readable fold checkpoint" in str(failed.value)
    assert [p["epoch"] for p in progress(out)] == [1, 2, 2]  # nothing trained on a corrupted state
