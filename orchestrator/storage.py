"""One storage for Ray's run state: a local path, a shared mount, or an s3:// / gs:// URI.

Ray Train/Tune write their run state and the fold checkpoints there (`RunConfig(storage_path=...)`);
this module reads them back through the same pyarrow filesystem Ray uses, never by globbing a node's
local disk (on a cluster the checkpoints were written by workers on other nodes). pyarrow's S3
filesystem honours AWS_ENDPOINT_URL (an S3-compatible server such as MinIO or moto). Outputs meant
for the user (cv.json, submission.csv, trials.csv) stay in --out on the driver's machine; what a
search's `--resume` reads from --out is copied here too (`put_file` / `get_file`, see orchestrator.tune).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint

from salt_model.io import atomic_write


def is_uri(storage: str) -> bool:
    return "://" in storage


def storage_root(storage: str | None, default: Path) -> str:
    """`storage` as Ray wants it (a URI, or an absolute local path), else `default` made absolute."""
    if not storage:
        return str(default.resolve())
    return storage.rstrip("/") if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `root` and the path inside it, as Ray's storage gets them.

    For s3:// the filesystem is opened with allow_delayed_open: a file smaller than one part (every
    fold checkpoint of a small model, Tune's state files) is one PutObject instead of a multipart
    upload. (moto 5.2.1's CompleteMultipartUpload reply makes pyarrow 26 retry for ~25 s per file.)
    """
    try:
        fs, inner = pafs.FileSystem.from_uri(root if is_uri(root) else str(Path(root).resolve()))
        if isinstance(fs, pafs.S3FileSystem) and "?" not in root:  # region as found for the bucket
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            extra = {"endpoint_override": endpoint} if endpoint else {}
            fs = pafs.S3FileSystem(region=fs.region, allow_delayed_open=True, **extra)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for an unknown scheme or bucket
        raise ValueError(f"--storage {root}: cannot open it ({error})") from error
    return fs, inner


def ray_storage(root: str) -> dict:
    """RunConfig's storage arguments for `root` (a URI or an absolute local path)."""
    if not is_uri(root):
        return {"storage_path": root}
    fs, inner = filesystem(root)
    return {"storage_path": inner, "storage_filesystem": fs}


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def check_storage_writable(root: str) -> None:
    """Fails fast (before any training) when the storage cannot be written, naming it."""
    fs, inner = filesystem(root)
    probe = f"{inner.rstrip('/')}/.salt-orchestrator-write-check"
    try:
        fs.create_dir(inner, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok\n")
        fs.delete_file(probe)
    except Exception as error:
        raise ValueError(f"--storage {root}: cannot write there ({error})") from error


def latest_checkpoint(run_dir: str) -> Checkpoint | None:
    """The newest `checkpoint_*` folder of a Ray Train run folder (names are timestamps)."""
    fs, inner = filesystem(run_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except OSError:
        return None
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    return Checkpoint(f"{inner.rstrip('/')}/{names[-1]}", filesystem=fs) if names else None


def checkpoint_at(root: str, path: str) -> Checkpoint | None:
    """A checkpoint Ray reported by its path inside `root`'s filesystem, if it is still there."""
    fs, _ = filesystem(root)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    return Checkpoint(path, filesystem=fs)


@contextlib.contextmanager
def checkpoint_files(checkpoint: Checkpoint, names: list[str]) -> Iterator[Path]:
    """A local folder holding `names` of `checkpoint` (those that exist), for reading.

    A checkpoint on the local filesystem is read in place. A remote one is downloaded by this process
    alone into its own temporary folder, and only the named files: Ray's `as_directory()` shares one
    download folder between the processes of a node, and with two fold workers on a node resuming
    from S3 one of them read a truncated fold file from it.
    """
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="salt-ckpt-") as local:
        for name in names:
            source = f"{checkpoint.path.rstrip('/')}/{name}"
            if checkpoint.filesystem.get_file_info(source).type == pafs.FileType.File:
                pafs.copy_files(
                    source,
                    str(Path(local) / name),
                    source_filesystem=checkpoint.filesystem,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
        yield Path(local)


def checkpoints_before(checkpoint: Checkpoint) -> list[Checkpoint]:
    """The `checkpoint_*` folders beside `checkpoint` that are older (names are timestamps), newest
    first: what Ray still keeps of the run (CheckpointConfig num_to_keep) besides its latest."""
    fs = checkpoint.filesystem
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return []
    older = sorted(
        (
            i.base_name
            for i in infos
            if i.type == pafs.FileType.Directory
            and i.base_name.startswith("checkpoint_")
            and i.base_name < name
        ),
        reverse=True,
    )
    return [Checkpoint(f"{parent}/{n}", filesystem=fs) for n in older]


def put_file(local: Path, uri: str) -> None:
    """Copies the local file `local` to `uri` (a URI or a local path), replacing what is there."""
    fs, inner = filesystem(uri)
    parent = inner.rsplit("/", 1)[0]
    try:
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(inner) as f:  # S3: one PutObject, visible only once complete
            f.write(Path(local).read_bytes())
    except OSError as error:
        raise OSError(f"cannot copy {local} to {uri}: {error}") from error


def get_file(uri: str, local: Path) -> bool:
    """Copies `uri` to the local file `local` (atomically); False when `uri` does not exist."""
    fs, inner = filesystem(uri)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return False
    with fs.open_input_stream(inner) as f:
        data = f.readall()
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(local), lambda tmp: tmp.write_bytes(data))
    return True
