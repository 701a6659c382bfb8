"""Runs on each fold worker: how a fold's checkpoint files reach the run's storage (Ray Train's
`checkpoint_upload_fn`). A checkpoint is complete in itself, so that Ray may delete older ones
(CheckpointConfig.num_to_keep), but the members file (salt_model/training/checkpoint.py) changes only when the
fold's best epoch improves or a snapshot or SWA member is added: when its bytes equal the last one
this worker stored, it is copied inside the storage from that checkpoint (on S3 a server-side
CopyObject, no bytes from the worker) instead of being uploaded again. Everything else goes the way
Ray's own upload does (`persist_current_checkpoint`, pyarrow's copy_files).

Ray's asynchronous upload (CheckpointUploadMode.ASYNC, alpha in 2.60) is not used: it also moves the
epoch's report into the upload thread, so a worker killed during an upload loses an epoch it finished
(the run redoes it), and the next epoch's report waits for the upload anyway.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow.fs
import ray.train
from ray.train import Checkpoint

from salt_model.training.checkpoint import members_name


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class FoldUpload:
    """A fold worker's `checkpoint_upload_fn`: Ray's upload, but an unchanged members file is copied
    from the checkpoint that holds it. `storage` (tests) stands in for Ray's StorageContext."""

    def __init__(self, fold: int, storage=None):
        self.fold, self.storage = fold, storage
        self.last: tuple[str, str] | None = None  # (digest, path in the storage) of the last members file
        self.copied = self.uploaded = 0  # members files, for the worker's log

    def __call__(self, checkpoint: Checkpoint, dir_name: str) -> Checkpoint:
        storage = self.storage or ray.train.get_context().get_storage()  # Ray's DeveloperAPI
        local = Path(checkpoint.path) / members_name(self.fold)
        digest = file_digest(local)
        target = f"{storage.build_checkpoint_path_from_name(dir_name)}/{local.name}"
        reuse = self.last is not None and self.last[0] == digest
        if reuse:  # Ray's copy takes the rest of the folder; the members file waits beside it
            aside = local.parent.parent / f"{local.name}.aside"
            shutil.move(local, aside)
        persisted = storage.persist_current_checkpoint(checkpoint, dir_name)
        if reuse:
            try:
                storage.storage_filesystem.copy_file(self.last[1], target)
                self.copied += 1
            except OSError:  # the earlier checkpoint is gone (deleted, or the storage refused): upload
                pyarrow.fs.copy_files(
                    str(aside), target, source_filesystem=pyarrow.fs.LocalFileSystem(),
                    destination_filesystem=storage.storage_filesystem,
                )  # fmt: skip
                self.uploaded += 1
        else:
            self.uploaded += 1
        self.last = (digest, target)
        return persisted
