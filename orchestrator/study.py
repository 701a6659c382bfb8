"""Where a search keeps its Optuna study: one SQLite file in the run folder, one study name. No Ray
here (orchestrator.report reads the study of a finished run without it)."""

from __future__ import annotations

from pathlib import Path

from salt_model import run_folder

STUDY_FILE = run_folder.STUDY  # the Optuna study in the run folder
STUDY_NAME = "salt-orchestrator"  # orchestrator.tune's study


def study_url(out: Path) -> str:
    """The Optuna study's SQLite storage in the run folder `out`."""
    return f"sqlite:///{(Path(out) / STUDY_FILE).resolve()}"


def load_run_study(out: Path, study_name: str = STUDY_NAME):
    """The study of the search in run folder `out` (optuna.Study)."""
    return open_run_study(out, study_name)[0]


def open_run_study(out: Path, study_name: str = STUDY_NAME):
    """(study, its storage): the storage object is what looks a trial's id up by its number."""
    import optuna

    storage = run_storage(out)
    return optuna.load_study(study_name=study_name, storage=storage), storage


def run_storage(out: Path):
    """The Optuna storage (RDBStorage) on the run folder's study file (its state/ made if missing)."""
    import optuna

    (Path(out) / STUDY_FILE).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(study_url(out))
