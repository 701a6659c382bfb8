"""A fold's checkpoint upload (orchestrator/checkpoint_upload.py) through Ray's own StorageContext on a
filesystem that counts what is written to it: an unchanged members file is copied inside the storage,
never uploaded again; a changed one is uploaded; every checkpoint folder stays complete."""

from __future__ import annotations

import pyarrow.fs
import pytest

pytest.importorskip("ray")
fsspec_local = pytest.importorskip("fsspec.implementations.local")

from ray.train import Checkpoint  # noqa: E402
from ray.train.v2._internal.execution.storage import StorageContext  # noqa: E402

from orchestrator.checkpoint_upload import FoldUpload  # noqa: E402
from salt_model.training.checkpoint import checkpoint_name, members_name  # noqa: E402


class CountingFS(fsspec_local.LocalFileSystem):
    """A local filesystem that records the bytes written through it and the copies made inside it."""

    written: dict[str, int]
    copies: list[tuple[str, str]]

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode=mode, **kwargs)
        if "w" in mode or "a" in mode:
            write, name = f.write, str(path).rsplit("/", 1)[-1]

            def counted(data):
                self.written[name] = self.written.get(name, 0) + len(data)
                return write(data)

            f.write = counted
        return f

    def cp_file(self, path1, path2, **kwargs):
        self.copies.append((str(path1).rsplit("/", 1)[-1], str(path2)))
        return super().cp_file(path1, path2, **kwargs)


def write_fold(folder, fold: int, members: bytes, state: bytes):
    folder.mkdir(parents=True)
    (folder / members_name(fold)).write_bytes(members)
    (folder / checkpoint_name(fold)).write_bytes(state)
    return Checkpoint.from_directory(str(folder))


def test_an_unchanged_members_file_is_copied_in_the_storage_and_a_changed_one_uploaded(tmp_path):
    counting = CountingFS(skip_instance_cache=True)
    counting.written, counting.copies = {}, []
    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(counting))
    storage = StorageContext(str(tmp_path / "store"), "run", storage_filesystem=fs)
    upload = FoldUpload(1, storage=storage)
    members_a, members_b = b"a" * 5000, b"b" * 7000
    for epoch, members in enumerate([members_a, members_a, members_b, members_b], start=1):
        counting.written.clear()
        local = write_fold(tmp_path / f"local{epoch}" / "checkpoint", 1, members, b"s" * 300 * epoch)
        persisted = upload(local, f"checkpoint_{epoch}")
        stored = tmp_path / "store" / "run" / f"checkpoint_{epoch}"
        assert persisted.path.endswith(f"run/checkpoint_{epoch}")
        assert (stored / members_name(1)).read_bytes() == members  # complete, with the right bytes
        assert (stored / checkpoint_name(1)).read_bytes() == b"s" * 300 * epoch
        assert counting.written[checkpoint_name(1)] == 300 * epoch  # the resume state: always uploaded
        assert counting.written.get(members_name(1), 0) == (0 if epoch in (2, 4) else len(members)), epoch
    assert [dest.rsplit("/", 2)[-2] for _, dest in counting.copies] == ["checkpoint_2", "checkpoint_4"]
    assert (upload.copied, upload.uploaded) == (2, 2)


def test_when_the_earlier_checkpoint_is_gone_the_members_file_is_uploaded(tmp_path):
    storage = StorageContext(str(tmp_path / "store"), "run")
    upload = FoldUpload(0, storage=storage)
    upload(write_fold(tmp_path / "l1" / "checkpoint", 0, b"m" * 100, b"s"), "checkpoint_1")
    pyarrow.fs.LocalFileSystem().delete_dir(str(tmp_path / "store" / "run" / "checkpoint_1"))  # num_to_keep
    upload(write_fold(tmp_path / "l2" / "checkpoint", 0, b"m" * 100, b"s"), "checkpoint_2")
    assert (tmp_path / "store" / "run" / "checkpoint_2" / members_name(0)).read_bytes() == b"m" * 100
    assert (upload.copied, upload.uploaded) == (0, 2)


@pytest.mark.slow
@pytest.mark.cluster
def test_on_s3_the_unchanged_members_file_is_a_server_side_copy(tmp_path, monkeypatch):
    """Against a moto S3 server, through the pyarrow S3 filesystem Ray's storage gets: the second
    checkpoint's members file was copied inside the bucket (pyarrow's copy_file is S3 CopyObject; it
    did not fall back to an upload) and holds the same bytes."""
    from bench.moto_s3 import CREDS, moto_s3
    from orchestrator.storage import ray_storage

    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    with moto_s3("bucket") as (endpoint, s3):
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        storage = StorageContext(**ray_storage("s3://bucket/store"), experiment_dir_name="run")
        upload = FoldUpload(0, storage=storage)
        members = b"m" * 200_000
        for epoch in (1, 2):
            upload(
                write_fold(tmp_path / f"l{epoch}" / "checkpoint", 0, members, b"s" * epoch),
                f"checkpoint_{epoch}",
            )
        for epoch in (1, 2):
            key = f"store/run/checkpoint_{epoch}/{members_name(0)}"
            assert s3.get_object(Bucket="bucket", Key=key)["Body"].read() == members, key
            state = f"store/run/checkpoint_{epoch}/{checkpoint_name(0)}"
            assert s3.get_object(Bucket="bucket", Key=state)["Body"].read() == b"s" * epoch
        assert (upload.copied, upload.uploaded) == (1, 1)
