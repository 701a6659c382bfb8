"""The Optuna searcher of orchestrator.tune, and the stopper that keeps Tune and the study agreed.

The space itself is orchestrator/search_space.py.

Ray's OptunaSearch records a trial that ASHA stopped early as COMPLETE with its early value, which
tells TPE that a half-trained run is a finished one, and keeps its state in private attributes that a
Ray upgrade may rename. `PruningOptunaSearch` is a plain Tune `Searcher` over Optuna's public ask/tell
API: it records ASHA-stopped trials as PRUNED, reports intermediate values on our own `epoch` (Tune's
training_iteration restarts after a restore), tags each Optuna trial with its Tune trial id and hands
each Tune trial its Optuna trial number (`study_trial`, which also names the trial's k-fold run).

After a driver kill the Optuna study (SQLite, written at once) can be ahead of Tune's experiment state
(saved on a timer): trials asked or finished after Tune's last save. The searcher reconciles instead of
duplicating: a study trial Tune does not know is ADOPTED by the next trial Tune asks for (same params,
same k-fold run, so its checkpoints are resumed, not retrained), a trial already finished in the study
is never told twice (`skip_if_finished`), and `StudyStopper` stops a resumed trial at the epoch the
study already recorded it at, so Tune and the study agree on where every trial ended.

The study is also part of the searcher's saved state: every Tune save (`save`) holds a snapshot of
OUT/state/optuna.db (SQLite's backup API, compressed), and Tune copies its experiment folder, this state
included, to --storage. `--resume --out NEW --storage S3` after the head's disk is lost rebuilds
NEW/optuna.db from the snapshot (`restore`), consistent with the trial states saved with it. The
driver-side objects Tune pickled with the search (searcher, stopper, callbacks) are unpickled inside
`resumed_into(NEW)` and then work in NEW, not in the folder they were created in.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher

from orchestrator.study import STUDY_FILE, STUDY_NAME, load_run_study, run_storage
from salt_model.io import atomic_write

METRIC = "best_val_map"  # mean over folds of each fold's best held-out competition metric so far


_resumed_out: contextvars.ContextVar[Path | None] = contextvars.ContextVar("resumed_out", default=None)


@contextlib.contextmanager
def resumed_into(out: Path) -> Iterator[None]:
    """Objects with the `InRunFolder` mixin unpickled in this block (by Tuner.restore, from the
    search's tuner.pkl) take `out` as their run folder instead of the one they were pickled with."""
    token = _resumed_out.set(Path(out).resolve())
    try:
        yield
    finally:
        _resumed_out.reset(token)


class InRunFolder:
    """A driver-side object of the search that reads or writes the run folder `self.out`."""

    out: Path | None

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        moved = _resumed_out.get()
        if moved is not None and self.out is not None:
            self.out = moved


def study_snapshot(db: Path) -> bytes | None:
    """A consistent copy of the SQLite file `db` (backup API), zlib-compressed; None if absent."""
    if not db.exists():
        return None
    source, copy = sqlite3.connect(db), sqlite3.connect(":memory:")
    try:
        source.backup(copy)
        return zlib.compress(copy.serialize())
    finally:
        source.close()
        copy.close()


def rebuild_study(db: Path, snapshot: bytes) -> None:
    """Writes `db` from a `study_snapshot` (atomically)."""
    data = zlib.decompress(snapshot)
    db.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(db, lambda tmp: tmp.write_bytes(data))


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def live_trial(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> optuna.Trial:
    """A reportable Trial for study trial `number` while it is RUNNING. `Trial(study, trial_id)` takes
    the storage's trial id, looked up by the trial's number through the storage's public API (the
    study must have been opened on `storage`)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


class PruningOptunaSearch(InRunFolder, Searcher):
    """Define-by-run Optuna search for Tune; ASHA-stopped trials are PRUNED; safe to resume after a kill.

    The study lives in `out`/optuna.db (in memory when `out` is None). `failure_reason(number)` returns
    why a trial failed deterministically (or None); it becomes the FAIL trial's `fail_reason` user
    attribute.
    """

    def __init__(
        self,
        space,
        metric: str,
        mode: str,
        epochs: int,
        out: Path | None = None,
        study_name: str = STUDY_NAME,
        seed: int | None = None,
        failure_reason=None,
    ):
        super().__init__(metric=metric, mode=mode)
        self.space, self.epochs, self.out, self.study_name = space, epochs, out, study_name
        self.sampler = optuna.samplers.TPESampler(seed=seed)  # saved with the searcher (its RNG state)
        self.failure_reason = failure_reason
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._study: optuna.Study | None = None
        self._db: optuna.storages.BaseStorage | None = None  # the study's storage (live_trial needs it)

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._db = optuna.storages.InMemoryStorage() if self.out is None else run_storage(self.out)
            self._study = optuna.create_study(
                storage=self._db,
                study_name=self.study_name,
                sampler=self.sampler,
                direction="maximize" if self.mode == "max" else "minimize",
                load_if_exists=True,
            )
        return self._study

    def _trial(self, number: int) -> optuna.trial.FrozenTrial:
        return self.study.trials[number]  # Optuna numbers a study's trials 0, 1, 2, ...

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.numbers:
            known = set(self.numbers.values())
            orphans = [t for t in self.study.trials if t.number not in known]
            if orphans:  # asked before a driver kill that Tune's saved state does not remember
                frozen = orphans[0]
                if frozen.state == TrialState.RUNNING:
                    self._live(frozen.number).set_user_attr("tune_trial_id", trial_id)
            else:
                trial = self.study.ask()
                self.space(trial)
                trial.set_user_attr("tune_trial_id", trial_id)
                frozen = self._trial(trial.number)
            self.numbers[trial_id] = frozen.number
        frozen = self._trial(self.numbers[trial_id])
        return {**frozen.params, "study_trial": frozen.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self.numbers.get(trial_id)
        if number is None or self.metric not in result or "epoch" not in result:
            return
        frozen = self._trial(number)
        if frozen.state == TrialState.RUNNING and int(result["epoch"]) not in frozen.intermediate_values:
            self._live(number).report(result[self.metric], int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.get(trial_id)
        if number is None or self._trial(number).state in FINISHED:
            return  # already recorded (the study was ahead of Tune's saved state)
        if result and not error and self.metric in result:
            self.on_trial_result(trial_id, result)  # Tune hands the last result here, not to on_trial_result
            if int(result.get("epoch", 0)) < self.epochs:
                self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                self.study.tell(number, result[self.metric], skip_if_finished=True)
            return
        reason = (self.failure_reason(number) if self.failure_reason else None) or "error (see the trial log)"
        fail(*self._opened(), number, reason)

    def _opened(self) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
        """(storage, study), the study opened first: opening it opens its storage."""
        study = self.study
        return self._db, study

    def _live(self, number: int) -> optuna.Trial:
        return live_trial(*self._opened(), number)

    def save(self, checkpoint_path: str) -> None:
        """Tune's save (on its timer, into the experiment folder it copies to --storage): the trial
        map, the sampler (its RNG state) and a snapshot of the study as of this save."""
        study = study_snapshot(Path(self.out) / STUDY_FILE) if self.out is not None else None
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"numbers": self.numbers, "sampler": self.sampler, "study": study}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore on --resume. A study file still in the run folder is kept (it may be ahead of
        the save: the adoption above reconciles it); a missing one (a new --out) is rebuilt from the
        snapshot, which matches the trial states Tune saved with it."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.numbers, self.sampler, self._study = state["numbers"], state["sampler"], None
        if self.out is not None and not (Path(self.out) / STUDY_FILE).exists():
            if state.get("study") is None:
                raise ValueError(
                    f"--resume: {Path(self.out) / STUDY_FILE} is missing and the search's saved state "
                    f"({checkpoint_path}) holds no snapshot of the study; resume with the --out it ran in"
                )
            rebuild_study(Path(self.out) / STUDY_FILE, state["study"])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.out is not None:
            state["_study"] = state["_db"] = None  # reopened from the study file
        return state


def fail(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int, reason: str) -> None:
    """Records RUNNING study trial `number` as FAIL with its reason (user attribute `fail_reason`)."""
    live_trial(storage, study, number).set_user_attr("fail_reason", reason)
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def close_stale(storage: optuna.storages.BaseStorage, study: optuna.Study, known: set[int]) -> list[int]:
    """At the end of a search: study trials still RUNNING that no Tune trial ran become FAIL."""
    stale = [t for t in study.trials if t.state == TrialState.RUNNING]
    for frozen in stale:
        why = "no Tune trial ran it" if frozen.number not in known else "Tune ended without a result"
        fail(storage, study, frozen.number, f"left RUNNING by an interrupted search: {why}")
    return [t.number for t in stale]


class StudyStopper(InRunFolder, tune.Stopper):
    """Stops a resumed trial at the epoch where the study already recorded it PRUNED or FAIL.

    After a driver kill, Tune resumes the trials its saved state had RUNNING; the study may already
    hold the end of some of them (ASHA stopped one after Tune's last save). Without this stop, Tune
    would train such a trial on, and the study (PRUNED at epoch e) and Tune (ran to the end) disagree.
    """

    def __init__(self, out: Path, study_name: str):
        self.out, self.study_name = Path(out), study_name
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_study": None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        number = (result.get("config") or {}).get("study_trial")
        if number is None:
            return False
        if self._study is None:
            self._study = load_run_study(self.out, self.study_name)
        frozen = self._study.trials[number]
        if frozen.state in (TrialState.PRUNED, TrialState.FAIL):
            last = max(frozen.intermediate_values, default=0)
            return int(result.get("epoch", 0)) >= last
        return False

    def stop_all(self) -> bool:
        return False
