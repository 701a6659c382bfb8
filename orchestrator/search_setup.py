"""Runs on the driver before the search starts: how many trials at once, their fold workers and where
their drivers run; the Tuner (searcher, scheduler, callbacks) or Tune's restore arguments; the run
files --resume reads from STORAGE/run; the --pseudo-from run, checked and put in the object store.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from orchestrator import rounds
from orchestrator.capacity import Capacity
from orchestrator.runtime import FoldResources, default_gpus_per_fold, fold_resources, requested
from orchestrator.search import METRIC, PruningOptunaSearch, StudyStopper
from orchestrator.search_space import define_space
from orchestrator.storage import get_file, join, put_file, ray_storage
from orchestrator.study import STUDY_NAME
from orchestrator.tracker import Tracker
from orchestrator.trial import FailureRecords, PseudoSource
from orchestrator.tune_callbacks import CheckpointPruner, ProgressTable
from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.loading import has_test, load_split
from salt_model.training.cadence import asha_grace

PSEUDO_FROM = run_folder.PSEUDO_FROM  # the --pseudo-from run of a search, so --resume keeps using it
RUN_FILES = (
    run_folder.CONFIG,
    run_folder.FOLDS,
    PSEUDO_FROM,
)  # what --resume reads from --out, kept in STORAGE/run
DRIVER_RESOURCE = "tune_driver"  # a trial's driver holds one of these and no CPU


def trials_per_wave(config: Config, one_run: FoldResources, capacity: Capacity) -> int:
    """As many trials at once as the largest possible cluster has room for k fold workers."""
    if config.search.max_concurrent:
        return config.search.max_concurrent
    k = config.data.folds
    if one_run.gpus > 0:
        room = capacity.max_total("GPU") / (k * one_run.gpus)
    else:
        room = capacity.max_total("CPU") / (k * one_run.cpus)
    return max(1, min(config.search.trials, int(room) if math.isfinite(room) else config.search.trials))


def trial_resources(capacity: Capacity) -> dict:
    """A trial driver holds one `tune_driver` and no CPU. Only the head has that resource (cluster.yaml's
    head type; a local Ray declares it itself): the drivers share the head's disk, where optuna.db is."""
    if capacity.max_total(DRIVER_RESOURCE) >= 1:
        return {DRIVER_RESOURCE: 1}
    raise ValueError(
        f"the Ray cluster ({capacity.source}) has no '{DRIVER_RESOURCE}' resource, which pins the trial "
        f"drivers to the head node beside the Optuna study: give the head node type "
        f"`resources: {{{DRIVER_RESOURCE}: 8}}` (as cluster.yaml does), or start the head with "
        f"`ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 8}}'`"
    )


def make_searcher(config: Config, out: Path, run_storage: str | None) -> PruningOptunaSearch:
    return PruningOptunaSearch(
        functools.partial(define_space, search=config.search, epochs=config.train.epochs),
        metric=METRIC,
        mode="max",
        out=out.resolve(),
        study_name=STUDY_NAME,
        seed=config.search.seed,
        epochs=config.train.epochs,
        failure_reason=FailureRecords(out.resolve(), run_storage),
    )


def keep_run_files(out: Path, run_storage: str | None) -> None:
    """Copies RUN_FILES that exist in `out` to STORAGE/run (with --storage): --resume needs them."""
    for name in RUN_FILES if run_storage else ():
        if (out / name).exists():
            put_file(out / name, join(run_storage, name))


def fetch_run_files(out: Path, run_storage: str | None) -> list[str]:
    """On --resume: RUN_FILES missing from `out` (a new --out) are copied back from STORAGE/run."""
    fetched = []
    for name in RUN_FILES if run_storage else ():
        if not (out / name).exists() and get_file(join(run_storage, name), out / name):
            fetched.append(name)
    return fetched


def make_scheduler(config: Config) -> ASHAScheduler | None:
    search, epochs = config.search, config.train.epochs
    if not search.early_stopping or epochs < 3:
        return None
    return ASHAScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=asha_grace(search, epochs),  # let the Lovasz switch pay off first
        reduction_factor=search.reduction_factor,
    )


def pseudo_run_summary(run: Path) -> dict:
    """RUN's cv.json, checked before anything starts: --pseudo-from needs a finished training run."""
    run_folder.check_layout(run)
    if not (run / run_folder.CV).exists() or not (run / run_folder.MODELS).is_dir():
        raise ValueError(
            f"--pseudo-from {run}: not a finished orchestrator.train run folder (no cv.json and models/); "
            "train it first: python -m orchestrator.train ... --out RUN"
        )
    return json.loads((run / run_folder.CV).read_text())


def trial_callbacks(tracker: Tracker | None, config: Config, out: Path, run_storage: str | None) -> list:
    """Ray Tune's MLflowLoggerCallback (orchestrator/trial_runs.py) when tracking is on."""
    if tracker is None:
        return []
    from orchestrator.trial_runs import TrialRuns  # imports mlflow

    return [TrialRuns(tracker, config.train.epochs, FailureRecords(out.resolve(), run_storage))]


def restore_args(experiment: str) -> dict:
    """Tuner.restore/can_restore arguments for the experiment folder (a URI or a local path)."""
    args = ray_storage(experiment)
    return {"path": args["storage_path"], "storage_filesystem": args.get("storage_filesystem")}


def pseudo_run(
    args: argparse.Namespace, out: Path, config: Config, root: Path
) -> tuple[Path | None, dict | None]:
    """The --pseudo-from run (on --resume, the one the search started with) and its cv.json, checked."""
    pseudo_from = Path(args.pseudo_from) if args.pseudo_from else None
    if pseudo_from is None and args.resume and (out / PSEUDO_FROM).exists():
        pseudo_from = Path((out / PSEUDO_FROM).read_text().strip())  # what the search started with
    if config.search.pseudo and pseudo_from is None:
        raise ValueError("search.pseudo=true searches pseudo-labels: pass --pseudo-from RUN (a finished run)")
    pseudo_summary = pseudo_run_summary(pseudo_from) if pseudo_from is not None else None
    if pseudo_from is not None and not has_test(root):
        raise ValueError(f"--pseudo-from needs test tiles to pseudo-label, but {root} has no test/images")
    return pseudo_from, pseudo_summary


def trial_sizes(args: argparse.Namespace, config: Config, capacity: Capacity) -> tuple[int, FoldResources]:
    """(trials at once, each fold worker's resources)."""
    k = config.data.folds
    gpus, cpus = requested(args, config.cluster)
    if gpus is None:  # the GPU share that keeps the most GPUs busy with the trials at once
        gpus = default_gpus_per_fold(k, config.search.max_concurrent or config.search.trials, capacity, cpus)
    one_run = fold_resources(k, cpus, gpus, capacity=capacity)
    waves = trials_per_wave(config, one_run, capacity)
    resources = fold_resources(k, cpus, one_run.gpus, waves, capacity=capacity)
    return waves, resources


def share_pseudo_source(pseudo_from: Path, pseudo_summary: dict, root: Path, config: Config) -> list:
    """[ref of PseudoSource]: RUN's ensemble on the test tiles, in the object store for the trials."""
    test = load_split(root, "test")
    probs, empty = rounds.test_probabilities(pseudo_from, test, pseudo_summary)
    source = PseudoSource(test, probs, empty, pseudo_summary["thresholds"])
    pseudo_refs = [ray.put(source)]
    print(f"pseudo-labels: the test tiles {pseudo_from}'s ensemble is confident about, per trial's rule")
    if config.pseudo.teacher == "fold":
        print(
            "note: pseudo.teacher=fold applies to orchestrator.train's rounds; a search labels every "
            "fold's tiles with RUN's ensemble (pseudo.teacher=ensemble)"
        )
    return pseudo_refs


def new_tuner(
    trainable,
    config: Config,
    out: Path,
    waves: int,
    storage: str,
    trials_storage: str,
    run_storage: str | None,
    tracker: Tracker | None,
) -> tune.Tuner:
    """A new search's Tuner: the Optuna searcher, ASHA, the study stopper and the callbacks."""
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(config, out, run_storage),
            scheduler=make_scheduler(config),
            num_samples=config.search.trials,
            max_concurrent_trials=waves,
            metric=METRIC,
            mode="max",
        ),
        run_config=tune.RunConfig(
            name="search",
            **ray_storage(storage),
            verbose=0,
            stop=StudyStopper(out.resolve(), STUDY_NAME),
            callbacks=[ProgressTable(config.train.epochs, config.data.folds, out.resolve())]
            + trial_callbacks(tracker, config, out, run_storage)
            + (
                [CheckpointPruner(trials_storage, config.data.folds)] if config.train.keep_checkpoints else []
            ),
        ),
    )
