"""On a fold worker: the checkpoint the k folds resume from, the newest one every fold can read.

Ray Train restarts a worker group (or a rerun driver resumes) from the run's latest checkpoint. A fold
file in it that cannot be read (a truncated S3 download, a file cut short on the storage) does not end
the run: Ray keeps `train.keep_checkpoints` checkpoints (CheckpointConfig num_to_keep, 2 by default),
and the folds step back to the one before, all together, because `ray.train.report` is a barrier and
every fold must resume after the same epoch. Only when no kept checkpoint is readable by every fold is
the resume fatal (deterministic: a retry would read the same files), naming each unreadable file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from orchestrator.storage import checkpoint_files
from salt_model.training.fold_loop import checkpoint_name, load_checkpoint, members_name

C = TypeVar("C")


class ResumeFailed(ValueError):
    """No kept checkpoint is readable by every fold. str() names the unreadable files."""


def pick_resume(
    candidates: Sequence[C], load: Callable[[C], dict], all_folds: Callable[[dict], list[dict]]
) -> tuple[dict, C, list[str]]:
    """(this fold's resume state, the checkpoint it came from, what was skipped on the way).

    `candidates`: the run's checkpoints, newest first. `load(c)`: this fold's state in `c`, raising
    ValueError when it cannot be read. `all_folds(payload)`: every fold's payload, in rank order (an
    all-gather; every fold calls it the same number of times, since each round's outcome is the same
    on every fold). A checkpoint is taken when every fold read its file and all are at one epoch.
    """
    skipped: list[str] = []
    for candidate in candidates:
        try:
            state, error = load(candidate), None
        except ValueError as err:
            state, error = None, str(err)
        folds = all_folds({"error": error, "epoch": None if state is None else int(state["epoch"])})
        errors = [f"fold {r}: {f['error']}" for r, f in enumerate(folds) if f["error"] is not None]
        epochs = sorted({f["epoch"] for f in folds if f["epoch"] is not None})
        if not errors and len(epochs) == 1:
            return state, candidate, skipped  # type: ignore[return-value]
        skipped.extend(errors or [f"{candidate}: its fold files are from different epochs {epochs}"])
    raise ResumeFailed(
        f"no readable checkpoint left to resume from ({len(candidates)} kept): {'; '.join(skipped)}"
    )


def read_fold(checkpoint, fold: int) -> dict:
    """Fold `fold`'s resume state in a Ray checkpoint (local or remote), naming the checkpoint's own
    file in any error (a remote one is read from a private download folder)."""
    names = [checkpoint_name(fold), members_name(fold)]
    with checkpoint_files(checkpoint, names) as directory:
        path = Path(directory) / names[0]
        try:
            if not path.is_file():
                raise ValueError(f"checkpoint {path}: missing")
            return load_checkpoint(path)
        except ValueError as err:
            raise ValueError(str(err).replace(str(directory), checkpoint.path.rstrip("/"))) from None
