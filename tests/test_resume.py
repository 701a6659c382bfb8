"""Which kept checkpoint the k folds resume from (orchestrator.resume), without Ray: the folds run as
threads over a real run folder of `checkpoint_*` folders and meet in an all-gather, as the fold workers
do over gloo. A corrupted latest checkpoint steps every fold back to the previous one; when no kept
checkpoint is readable by every fold, every fold fails with the same reason naming the files."""

from __future__ import annotations

import threading

import pytest
import torch
from ray.train import Checkpoint

from orchestrator.faults import DETERMINISTIC
from orchestrator.resume import ResumeFailed, pick_resume, read_fold
from orchestrator.storage import checkpoints_before
from salt_model.training.fold_loop import checkpoint_name, members_name

K = 3
NAMES = ("checkpoint_2026-12-02_01-00-00.000000", "checkpoint_2026-12-02_01-01-00.000000")


def write_checkpoint(folder, epoch: int, k: int = K):
    """A Ray checkpoint folder holding every fold's resume state and members file after `epoch`."""
    folder.mkdir(parents=True)
    for fold in range(k):
        torch.save(
            {"fold": fold, "epoch": epoch, "members_file": members_name(fold)}, folder / checkpoint_name(fold)
        )
        torch.save({"members": []}, folder / members_name(fold))
    return folder


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as Ray leaves it with num_to_keep=2: epoch 1's and epoch 2's checkpoints."""
    for epoch, name in enumerate(NAMES, start=1):
        write_checkpoint(tmp_path / name, epoch)
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")  # not a checkpoint
    return tmp_path


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a download cut short


def resume_every_fold(run_dir, k: int = K) -> list:
    """pick_resume on k threads, one per fold, from the run's latest checkpoint as Ray hands it."""
    latest = Checkpoint(str(sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]))
    slots, barrier, outcomes = [None] * k, threading.Barrier(k, timeout=30), [None] * k

    def fold_worker(fold: int) -> None:
        def all_folds(payload: dict) -> list[dict]:
            slots[fold] = payload
            barrier.wait()
            gathered = list(slots)
            barrier.wait()
            return gathered

        try:
            candidates = [latest, *checkpoints_before(latest)]
            outcomes[fold] = pick_resume(candidates, lambda c: read_fold(c, fold), all_folds)
        except Exception as error:
            outcomes[fold] = error

    threads = [threading.Thread(target=fold_worker, args=(r,)) for r in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_checkpoints_before_lists_the_older_checkpoints_newest_first(run_dir):
    (run_dir / "checkpoint_2026-12-02_01-02-00.000000").mkdir()  # newer than the one Ray handed over
    latest = Checkpoint(str(run_dir / NAMES[1]))
    assert [c.path for c in checkpoints_before(latest)] == [str(run_dir / NAMES[0])]
    assert checkpoints_before(Checkpoint(str(run_dir / NAMES[0]))) == []


def test_every_fold_resumes_from_the_latest_when_it_reads(run_dir):
    for fold, (state, chosen, skipped) in enumerate(resume_every_fold(run_dir)):
        assert (state["fold"], state["epoch"]) == (fold, 2)
        assert chosen.path == str(run_dir / NAMES[1]) and skipped == []


def test_a_corrupted_latest_checkpoint_steps_every_fold_back_to_the_previous_one(run_dir):
    bad = run_dir / NAMES[1] / checkpoint_name(1)
    truncate(bad)
    outcomes = resume_every_fold(run_dir)
    for fold, (state, chosen, skipped) in enumerate(outcomes):
        # all folds, not only fold 1, resume after epoch 1: report is a barrier across the folds
        assert (state["fold"], state["epoch"]) == (fold, 1)
        assert chosen.path == str(run_dir / NAMES[0])
        assert len(skipped) == 1 and skipped[0].startswith(
            f"fold 1: checkpoint {bad}: not a readable fold checkpoint"
        )


def test_a_missing_members_file_is_unreadable_too(run_dir):
    (run_dir / NAMES[1] / members_name(2)).unlink()
    for state, _, skipped in resume_every_fold(run_dir):
        assert state["epoch"] == 1 and "fold 2:" in skipped[0] and members_name(2) in skipped[0]


def test_fold_files_from_different_epochs_are_not_taken(run_dir):
    torch.save(
        {"fold": 0, "epoch": 7, "members_file": members_name(0)}, run_dir / NAMES[1] / checkpoint_name(0)
    )
    for state, _, skipped in resume_every_fold(run_dir):
        assert state["epoch"] == 1 and "different epochs [2, 7]" in skipped[0]


def test_corrupted_twice_fails_every_fold_naming_both_files(run_dir):
    latest, previous = run_dir / NAMES[1] / checkpoint_name(1), run_dir / NAMES[0] / checkpoint_name(2)
    truncate(latest)
    previous.write_bytes(b"not a checkpoint")
    outcomes = resume_every_fold(run_dir)
    assert all(isinstance(o, ResumeFailed) for o in outcomes), outcomes
    assert len({str(o) for o in outcomes}) == 1  # the same reason on every fold: each reports it once
    message = str(outcomes[0])
    assert message.startswith("no readable checkpoint left to resume from (2 kept): ")
    assert f"fold 1: checkpoint {latest}: not a readable fold checkpoint" in message
    assert f"fold 2: checkpoint {previous}: not a readable fold checkpoint" in message
    assert isinstance(outcomes[0], DETERMINISTIC)


def test_a_single_kept_checkpoint_that_is_corrupted_fails_naming_it(tmp_path):
    write_checkpoint(tmp_path / NAMES[0], 1)
    bad = tmp_path / NAMES[0] / checkpoint_name(0)
    truncate(bad)
    outcomes = resume_every_fold(tmp_path)
    assert all(isinstance(o, ResumeFailed) for o in outcomes)
    assert "(1 kept)" in str(outcomes[0]) and f"fold 0: checkpoint {bad}:" in str(outcomes[0])
