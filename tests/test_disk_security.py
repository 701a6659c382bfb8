"""Disk faults (output folder not writable, disk full mid-write) and unsafe files.

The disk tests mount tiny tmpfs file systems (they need root, and skip without it): a full disk is a
real ENOSPC from the kernel, not a mocked writer.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager

import pytest
import torch

from salt_model.evaluation.inference import read_fold_model
from salt_model.io import OutputError, atomic_write, atomic_write_text, check_writable
from salt_model.training.fold_loop import load_checkpoint
from tests.test_cli import _run, _train_args


@contextmanager
def tmpfs(path, size="64k", readonly=False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    with tmpfs(tmp_path / "small", "64k") as disk:
        target = disk / "submission.csv"
        atomic_write_text(target, "id,rle_mask\nold,1 2\n")
        with pytest.raises(OutputError, match=rf"could not write {target}: No space left on device"):
            atomic_write_text(target, "id,rle_mask\n" + "x,1 2\n" * 40_000)  # ~240 KB on a 64 KB disk
        assert target.read_text() == "id,rle_mask\nold,1 2\n"  # the previous complete content
        assert sorted(p.name for p in disk.iterdir()) == ["submission.csv"]
        with pytest.raises(OutputError, match="new.npz"):
            atomic_write(disk / "new.npz", lambda tmp: tmp.write_bytes(b"0" * 200_000))
        assert not (disk / "new.npz").exists()


def test_an_output_folder_that_is_not_writable_is_refused_up_front(tmp_path):
    with (
        tmpfs(tmp_path / "ro", readonly=True) as disk,
        pytest.raises(
            OutputError, match=rf"output folder {disk / 'run'}: not writable \(Read-only file system\)"
        ),
    ):
        check_writable(disk / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="not writable"):
        check_writable(tmp_path / "file" / "run")


def test_training_onto_a_full_disk_exits_with_one_line_and_no_partial_checkpoint(tiny_data_root, tmp_path):
    with tmpfs(tmp_path / "small", "256k") as disk:  # config.json and folds.csv fit; a checkpoint does not
        out = disk / "run"
        result = _run(_train_args(tiny_data_root, out, "--epochs", "1"))
        state = out / "state"  # salt_model.train's checkpoint: run_folder.STATE
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "No space left" in errors[0]
        named = errors[0].removeprefix("error: could not write ").split(": No space left")[0]
        assert named in (str(state / "fold_0_members.pt"), str(state / "fold_0.pt")), errors[
            0
        ]  # first written
        assert not (state / "fold_0.pt").exists() and not (state / "fold_0_members.pt").exists()
        assert not list(out.rglob(".*.tmp"))


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_and_models_with_a_pickle_payload_are_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "fold_0.pt"
    torch.save({"config": {}, "state_dict": Payload(marker), "epoch": 1}, path)
    with pytest.raises(ValueError, match=rf"fold model {path}: not a readable salt-orchestrator model file"):
        read_fold_model(path)
    with pytest.raises(ValueError, match=rf"checkpoint {path}: not a readable fold checkpoint"):
        load_checkpoint(path)
    assert not marker.exists(), "the payload ran: a checkpoint was loaded without weights_only=True"


def test_every_torch_load_in_the_code_is_weights_only():
    from tests.processes import REPO

    for path in [
        *REPO.glob("salt_model/**/*.py"),
        *REPO.glob("orchestrator/**/*.py"),
        *REPO.glob("bench/**/*.py"),
    ]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{n}: {line.strip()}"
