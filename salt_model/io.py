"""Atomic file writes: a failed run never leaves a half-written output behind, and says which file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


class OutputError(OSError):
    """An output could not be written (folder not writable, disk full); the message names the file."""


def check_writable(folder: Path) -> None:
    """Creates `folder` if needed and proves a file can be written there, before any long work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"output folder {folder}: not writable ({err.strerror or err})") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls write(tmp) on a temporary file beside `path`, then renames it over `path`.

    Any OSError (disk full, not writable) becomes an OutputError naming `path`; the temporary file
    is removed, so `path` is either its old complete content or the new complete content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"could not write {path}: {err.strerror or err}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        os_error = _os_error(err)
        if os_error is None:
            raise
        # disk full, quota, I/O error: say which file; nothing half-written is left behind
        raise OutputError(
            f"could not write {path}: {os_error.strerror or os_error}; nothing was written "
            f"(free space there: {_free(path.parent)})"
        ) from err


def atomic_torch_save(path: Path, payload) -> None:
    """torch.save through a file object, so a full disk surfaces as an OSError (torch's own file
    writer reports it as a bare RuntimeError), hence as an OutputError naming `path`."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, value) -> None:
    """`value` as indented JSON with a final newline, written atomically (every JSON file of a run)."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The complete records of a JSON-lines file that may still be growing: blank lines skipped, a last
    line still being written left for the next read; [] when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def load_torch_dict(path: Path, what: str, kind: str) -> dict:
    """A torch file saved as a dict, loaded safely (weights_only, on the CPU); ValueError naming `what`
    and the file when it is not a readable `kind` (truncated, foreign) or holds something else."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{what} {path}: not a readable {kind} ({err})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{what} {path}: expected a dict, got {type(payload).__name__}")
    return payload


def atomic_savez(path: Path, **arrays) -> None:
    """np.savez through a file object, so numpy does not append '.npz' to the temporary name."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` (itself, or what it was raised from or during), if any."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown"
