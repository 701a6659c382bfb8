"""Experiment tracking in MLflow, from the driver: one parent run per command, one child run per k-fold
run (a search trial, or orchestrator.train's run and each pseudo-label round). Here: the --mlflow flag
and a command's tracker; the Tracker itself is in orchestrator/tracker.py.

The parent run holds the resolved config as params, the data set's name and size and the git commit
as tags, and at the end the files users open (cv.json, report/, submission.csv, trials.csv,
best_config.json). A child run holds its searched params, per-epoch metrics with step = epoch (the
fold mean and every fold: `val_map`, `val_map_fold{r}`, `train_loss_fold{r}`, `lr`, ...) and its final
state as the tag `state` (COMPLETE / PRUNED / FAIL, with `fail_reason`). A search's trials are
logged by Ray Tune's own MLflowLoggerCallback (orchestrator/trial_runs.py); orchestrator.train has
no Tune, so a thread on the driver follows the run's progress.jsonl (orchestrator/progress_follower.py).

The run ids live in OUT/state/mlflow.json, so a resumed command (`--resume`, or the same train command
again) continues the same runs. A command that raises ends its runs FAILED, Ctrl-C ends them KILLED;
a killed driver leaves them RUNNING until the resume takes them over.

The tracker never stops a run: the first error talking to the server is one warning line and the
tracker is off for the rest of the command. mlflow is imported only when tracking is configured.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from orchestrator.tracker import Tracker
from salt_model import run_folder

INSTALL = 'pip install -e ".[tracking]"'


def add_tracking_arg(parser) -> None:
    parser.add_argument(
        "--mlflow",
        default=None,
        metavar="URI",
        help="log the run to this MLflow tracking server or store (default: tracking.mlflow_uri, "
        f"else off; needs {INSTALL})",
    )


def tracking_uri(flag: str | None, config) -> str | None:
    """--mlflow wins over config.tracking.mlflow_uri; None when tracking is off."""
    return flag or config.tracking.mlflow_uri or None


def require_mlflow(uri: str) -> None:
    """A tracking URI without the extra installed: one line that says how to install it."""
    try:
        found = importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        found = False
    if not found:
        raise ValueError(f"--mlflow {uri}: mlflow is not installed; install the extra: {INSTALL}")


def start_tracker(uri: str | None, out: Path, config, command: str, data_root: Path, data_size: int):
    """A started Tracker, or None when no tracking is configured (then mlflow is never imported)."""
    if not uri:
        return None
    require_mlflow(uri)
    tracker = Tracker(uri, out, config.tracking.experiment)
    tracker.start(command, config.to_dict(), data_root, data_size)
    return tracker


def run_artifacts(out: Path) -> list[Path]:
    """What a user opens from a finished run folder, for the parent run."""
    names = [
        run_folder.CV,
        run_folder.REPORT,
        run_folder.SUBMISSION,
        run_folder.TRIALS,
        run_folder.BEST_CONFIG,
        run_folder.ROUNDS,
    ]
    return [Path(out) / name for name in names + [run_folder.CONFIG]]


@contextlib.contextmanager
def tracked(tracker: Tracker | None):
    """tracker.command() when tracking is on, else nothing."""
    if tracker is None:
        yield None
        return
    with tracker.command():
        yield tracker
