"""Search the training recipe with Ray Tune + Optuna; every trial is a full k-fold run.

`python -m orchestrator.tune [--data DIR] [--config FILE] [--set KEY=VALUE] [--trials N] [--out DIR] [--resume]`

Each trial launches one Ray Train run whose k workers are the k folds, and is scored on the mean
over folds (`best_val_map`: each fold's best held-out competition metric, averaged). Optuna (TPE,
define-by-run) picks the LR schedule, its parameters, the base lr and the BCE -> Lovasz switch
epoch; ASHA stops weak trials on the epoch, never before the grace period, and they are recorded in
the Optuna study as PRUNED. The best trial's k fold models are the ensemble: no retraining, its
fold models go straight to the aggregation step and submission.csv.

Outputs in --out: config.json (the base config), optuna.db (the study: `optuna-dashboard
sqlite:///OUT/optuna.db` or optuna.load_study), tune/ (Ray Tune's experiment state, for --resume),
trials/ (each trial's k-fold checkpoints), trials.csv, best_config.json, and for the best trial
models/, oof.npz, cv.json and submission.csv. With --storage (s3://, gs://, a shared mount) Ray's
state goes there instead (STORAGE/search and STORAGE/trials) and is read back from there.

`--pseudo-from RUN` (a finished orchestrator.train run folder on the same data): every trial also
trains on the test tiles RUN's ensemble is confident about (salt_model/pseudo.py), chosen with the
trial's own rule: config.pseudo's, or drawn by Optuna with `--set search.pseudo=true` (confidence and
weight). The trials' OOF stays a score on the labelled tiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import ray
from ray import tune
from ray.train import Checkpoint
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from orchestrator import console, rounds
from orchestrator.capacity import Capacity, cluster_capacity
from orchestrator.faults import RunFailed, trial_fault
from orchestrator.kfold import (
    FailureNotice,
    FatalReason,
    collect_folds,
    fatal_reason,
    make_trainer,
    prune_run_checkpoints,
)
from orchestrator.packing import GpuPlan
from orchestrator.placement import fit_placed
from orchestrator.runtime import FoldResources, default_gpus_per_fold, fold_resources, init_ray, requested
from orchestrator.search import (
    METRIC,
    InRunFolder,
    PruningOptunaSearch,
    StudyStopper,
    close_stale,
    define_space,
    resumed_into,
    trial_config,
    trial_run_name,
)
from orchestrator.storage import (
    check_storage_writable,
    checkpoint_at,
    get_file,
    join,
    latest_checkpoint,
    put_file,
    ray_storage,
    storage_root,
)
from orchestrator.storage import exists as storage_exists
from orchestrator.study import STUDY_NAME, load_run_study, open_run_study
from orchestrator.tensorboard import FoldCurves
from orchestrator.tracking import (
    Tracker,
    add_tracking_arg,
    require_mlflow,
    run_artifacts,
    start_tracker,
    tracked,
    tracking_uri,
)
from orchestrator.train import add_cluster_args, failure_args, finalize, prepare_run
from salt_model.cadence import asha_grace, asha_rungs
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.config import Config, load_config
from salt_model.data import SaltData, has_test, load_split, resolve_data
from salt_model.io import atomic_write, atomic_write_text
from salt_model.postprocess import Thresholds
from salt_model.pseudo import PseudoLabels, select_pseudo_labels

PSEUDO_FROM = "pseudo_from.txt"  # the --pseudo-from run of a search, so --resume keeps using it
RUN_FILES = ("config.json", "folds.csv", PSEUDO_FROM)  # what --resume reads from --out, kept in STORAGE/run
DRIVER_RESOURCE = "tune_driver"  # a trial's driver holds one of these and no CPU
INTERNAL = ["params", "checkpoint_path"]  # trial-table columns kept out of trials.csv


class TrialReport(TuneReportCallback):
    """Forwards rank 0's evaluated epoch reports to Tune. Not forwarded: a deterministic failure's
    (FatalReason keeps it) and an epoch without evaluation (train.eval_every): Tune requires the metric
    in every result, and ASHA's rungs are always evaluated (the trial passes them to its folds)."""

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" not in metrics[0] and "val_map" in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def failure_file(out: Path, number: int) -> Path:
    """Where the k-fold run of Optuna trial `number` records a deterministic failure."""
    return out / "failures" / f"{trial_run_name(number)}.json"


def failure_uri(run_storage: str | None, number: int) -> str | None:
    """The copy of `failure_file` in STORAGE/run (None without --storage)."""
    return join(run_storage, "failures", f"{trial_run_name(number)}.json") if run_storage else None


@dataclasses.dataclass
class FailureRecords(InRunFolder):
    """The searcher's `failure_reason`: a trial's recorded deterministic failure, from OUT or STORAGE."""

    out: Path
    run_storage: str | None = None

    def __call__(self, number: int) -> str | None:
        return fatal_reason(failure_file(self.out, number), failure_uri(self.run_storage, number))


def pruned_at(out: Path, number: int) -> tuple[int, float] | None:
    """(epoch, value) of the last report before the study recorded trial `number` PRUNED, if it did.

    The study lives in OUT/optuna.db beside the trial drivers (they run on the head node)."""
    study = load_run_study(out)
    if number >= len(study.trials):
        return None
    frozen = study.trials[number]
    if frozen.state != optuna.trial.TrialState.PRUNED or not frozen.intermediate_values:
        return None
    epoch = max(frozen.intermediate_values)
    return epoch, frozen.intermediate_values[epoch]


def kfold_trial(
    params: dict,
    base: dict,
    data_refs: list,
    folds: list,
    resources: dict,
    storage: str,
    failures: dict,
    out: str,
    pseudo_refs: list | None = None,
    run_storage: str | None = None,
) -> None:
    """One Tune trial: a k-fold Ray Train run whose rank-0 reports (fold means) go to Tune.

    `pseudo_refs`: [ref of PseudoSource] with --pseudo-from; the trial picks its tiles by its own rule.
    `run_storage`: STORAGE/run with --storage, where a deterministic failure's record is copied.
    `failures`: the k-fold run's failure budget (train.failure_args).

    The run is named after the Optuna trial number, so a trial resumed or adopted after a driver kill
    continues the same k-fold checkpoints. A deterministic failure (faults.RunFailed) is raised at
    once, and again at once if --resume restarts the trial: it is never retrained.
    """
    number = params["study_trial"]
    failed, failed_uri = failure_file(Path(out), number), failure_uri(run_storage, number)
    reason = FailureRecords(Path(out), run_storage)(number)  # also after a resume into a new --out
    if reason is not None:
        raise RunFailed(f"trial {number} failed before: {reason}")
    try:
        config = trial_config(Config.from_dict(base, source="base config"), params)
    except ValueError as err:  # a sampled value the config refuses: deterministic, recorded
        FatalReason(str(failed), failed_uri).record({"fatal_error": f"config: {err}"})
        raise RunFailed(f"trial {number}: config: {err}") from None
    pruned = pruned_at(Path(out), number)
    if pruned is not None:
        # Resumed after a driver kill, but the study already has it PRUNED (ASHA stopped it after
        # Tune's last save): it trains no further and keeps its results. Cutting train.epochs to the
        # pruned epoch instead made the resume check refuse the checkpoint, and the trial FAILED.
        # Its last report goes to Tune again (marked, like a finished run's): Tune refuses a trial that
        # ends without its metric.
        epoch, value = pruned
        tune.report({METRIC: value, "epoch": epoch, "rereport": True})
        return
    run_name = trial_run_name(number)
    trainer = make_trainer(
        config,
        data_refs[0],
        np.asarray(folds),
        FoldResources(**resources),
        storage,
        run_name=run_name,
        **failures,
        callbacks=[TrialReport(), FailureNotice(), FatalReason(str(failed), failed_uri)],
        inject_failure=trial_fault(number),  # test hook (tests/conftest.py, test_faults_driver.py)
        trial=tune.get_context().get_trial_id(),
        eval_at=tuple(asha_rungs(config.search, config.train.epochs)),  # ASHA compares trials there
        pseudo_ref=None if pseudo_refs is None else ray.put(ray.get(pseudo_refs[0]).labels(config).data),
    )
    result = fit_placed(
        trainer, config.data.folds, FoldResources(**resources).as_dict(), failures["placement_timeout_s"]
    )
    if fatal_reason(failed) is not None:
        raise RunFailed(f"trial {number} stopped without retrying: {fatal_reason(failed)}")
    if result.error is not None:
        raise result.error


class ProgressTable(InRunFolder, tune.Callback):
    """The search's live view: each trial's folds per epoch on the console, in OUT/progress.jsonl (one
    line per trial epoch) and in OUT/tensorboard/trial-ID/fold_{r}; pruned and failed trials in one line."""

    def __init__(self, epochs: int, folds: int, out: Path):
        self.epochs, self.folds, self.out = epochs, folds, Path(out)
        self.best = -math.inf
        self.curves: dict[str, FoldCurves] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial.config
        view = console.view()
        if view is not None:
            view.start(trial.trial_id, f"({cfg['schedule']}, switch {cfg['loss_switch_epoch']}) ")
        console.say(f"trial {trial.trial_id} started: {format_params(cfg)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.best = max(self.best, result.get(METRIC, -math.inf))
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "config"}
        with open(self.out / "progress.jsonl", "a") as f:
            line = {
                "trial_id": trial.trial_id,
                "study_trial": trial.config.get("study_trial"),
                "time": time.time(),
            }
            f.write(json.dumps({**line, **metrics}) + "\n")
        if trial.trial_id not in self.curves:
            self.curves[trial.trial_id] = FoldCurves(
                self.out / "tensorboard" / f"trial-{trial.trial_id}", self.folds
            )
        self.curves[trial.trial_id].add(result)
        view = console.view()
        if view is not None:
            view.update(trial.trial_id, metrics)

    def _end(self, trial, message: str, error: bool = False):
        if trial.trial_id in self.curves:
            self.curves.pop(trial.trial_id).close()
        view = console.view()
        if view is not None:
            view.finish(trial.trial_id)
        console.say(message, error=error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch", 0)
        state = "finished" if epoch >= self.epochs else f"pruned by ASHA after epoch {epoch}/{self.epochs}"
        self._end(
            trial,
            f"trial {trial.trial_id} {state}: {METRIC} {last.get(METRIC, float('nan')):.4f} "
            f"(search best {self.best:.4f})",
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        error_file = Path(trial.local_path or "") / "error.txt"
        reason = ""
        if error_file.exists():
            lines = [line for line in error_file.read_text().splitlines() if line.strip()]
            reason = f": {lines[-1].strip()[:300]}" if lines else ""
        self._end(
            trial, f"error: trial {trial.trial_id} FAILED{reason} (traceback: {error_file})", error=True
        )


def format_params(cfg: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))


class CheckpointPruner(tune.Callback):
    """A stopped or finished trial keeps only its last k-fold checkpoint, without optimizer state:
    all that its ensemble needs (train.keep_checkpoints=0 keeps everything). Errored trials are left
    whole, since --resume retries them. `trials_root` is a local path or a storage URI (s3://...):
    pruned through the same pyarrow filesystem either way (Ray Train's own num_to_keep only bounds
    a run while it trains)."""

    def __init__(self, trials_root: str, k: int):
        self.root, self.k = str(trials_root), k

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_dir = join(self.root, trial_run_name(trial.config["study_trial"]))
        try:
            kept, freed = prune_run_checkpoints(run_dir, self.k)
        except (OSError, ValueError) as err:  # e.g. a checkpoint still being written when ASHA stopped it
            print(f"{trial.trial_id:<14}checkpoints left as they are ({err})", flush=True)
            return
        if kept is not None:
            name = str(kept).rsplit("/", 1)[-1]
            print(f"{trial.trial_id:<14}kept {name} ({freed / 1e6:.0f} MB freed)", flush=True)


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


def trial_table(results: tune.ResultGrid, out: Path) -> pd.DataFrame:
    """trials.csv: one row per trial with its params, Optuna state, best fold-mean metric and epochs."""
    study = load_run_study(out)
    by_number = {t.number: t for t in study.trials}
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        best = float(history[METRIC].max()) if history is not None and METRIC in history else float("nan")
        study_trial = by_number.get(result.config.get("study_trial"))
        error = str(result.error).strip().splitlines()[-1] if result.error else ""
        rows.append(
            {
                "trial_id": trial_id,
                "state": study_trial.state.name if study_trial else ("FAIL" if result.error else "RUNNING"),
                METRIC: best,
                "epochs_run": int(metrics.get("epoch", 0)),
                "fail_reason": (study_trial.user_attrs.get("fail_reason") if study_trial else None) or error,
                **{f"param_{k}": v for k, v in sorted(result.config.items())},
                "params": dict(result.config),
                "checkpoint_path": metrics.get("checkpoint_path"),
            }
        )
    table = pd.DataFrame(rows).sort_values(METRIC, ascending=False, na_position="last")
    atomic_write(out / "trials.csv", lambda tmp: table.drop(columns=INTERNAL).to_csv(tmp, index=False))
    return table


@dataclasses.dataclass
class PseudoSource:
    """A finished run's ensemble on the test tiles, for the trials' pseudo-labels (--pseudo-from)."""

    test: SaltData
    probs: np.ndarray
    empty: np.ndarray | None
    thresholds: dict

    def labels(self, config: Config) -> PseudoLabels:
        p = config.pseudo
        return select_pseudo_labels(
            self.test, self.probs, self.empty, Thresholds(**self.thresholds), p.low, p.high, p.min_fraction
        )


def pseudo_run_summary(run: Path) -> dict:
    """RUN's cv.json, checked before anything starts: --pseudo-from needs a finished training run."""
    if not (run / "cv.json").exists() or not (run / "models").is_dir():
        raise ValueError(
            f"--pseudo-from {run}: not a finished orchestrator.train run folder (no cv.json and models/); "
            "train it first: python -m orchestrator.train ... --out RUN"
        )
    return json.loads((run / "cv.json").read_text())


def trial_callbacks(tracker: Tracker | None, config: Config, out: Path, run_storage: str | None) -> list:
    """Ray Tune's MLflowLoggerCallback (orchestrator/trial_runs.py) when tracking is on."""
    if tracker is None:
        return []
    from orchestrator.trial_runs import TrialRuns  # imports mlflow

    return [TrialRuns(tracker, config.train.epochs, FailureRecords(out.resolve(), run_storage))]


def tag_trial_states(tracker: Tracker | None, table: pd.DataFrame) -> None:
    """Each trial's run gets the Optuna study's final state (and its failure's reason) as tags."""
    if tracker is None:
        return
    with tracker.guard() as on:
        if not on:
            return
        for _, row in table.iterrows():
            run_id = tracker.child_id(f"trial_{row['params']['study_trial']}")
            if run_id is not None:
                tracker.client.set_tag(run_id, "state", row["state"])
                if row["fail_reason"]:
                    tracker.client.set_tag(run_id, "fail_reason", str(row["fail_reason"])[:5000])


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as stack:  # holds the MLflow runs' end (FINISHED, FAILED, KILLED)
        return _main(argv, stack)


def _main(argv: list[str] | None, stack: contextlib.ExitStack) -> int:
    parser = make_parser("python -m orchestrator.tune", __doc__)
    add_config_args(parser)
    parser.add_argument("--trials", type=int, default=None, help="number of trials (search.trials)")
    parser.add_argument(
        "--out", default=None, help="run folder (default runs/tune-DATE-TIME; needed with --resume)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    parser.add_argument(
        "--pseudo-from",
        default=None,
        help="a finished orchestrator.train run folder: its ensemble pseudo-labels the test tiles each "
        "trial adds to its training folds (with --set search.pseudo=true the rule and weight are searched)",
    )
    add_cluster_args(parser)
    add_tracking_arg(parser)
    console.add_verbose_arg(parser)
    args = parser.parse_args(argv)
    if args.mlflow and not args.resume:
        args.overrides.append(f"tracking.mlflow_uri={args.mlflow}")
    failures = failure_args(args)
    if args.out is None:
        if args.resume:
            raise ValueError("--resume needs --out: the folder of the search to continue")
        args.out = time.strftime("runs/tune-%Y%m%d-%H%M%S")
    out = Path(args.out)
    storage = storage_root(args.storage, out / "tune")
    experiment = join(storage, "search")  # Ray Tune's experiment state
    trials_storage = join(storage, "trials") if args.storage else str((out / "trials").resolve())
    run_storage = join(storage, "run") if args.storage else None  # copies of what --resume reads in OUT
    start = time.perf_counter()

    if args.resume:
        if not tune.Tuner.can_restore(**restore_args(experiment)):
            raise ValueError(
                f"--resume: no interrupted search in {out} (no {experiment}; pass the --storage it ran with)"
            )
        fetched = fetch_run_files(out, run_storage)
        if fetched:
            print(f"--resume: {', '.join(fetched)} copied into {out} from {run_storage}")
        if not (out / "config.json").exists():
            raise ValueError(
                f"--resume: no {out / 'config.json'}"
                + (
                    f" and none in {run_storage}"
                    if run_storage
                    else "; pass the --storage the search ran with"
                )
            )
        config = load_config(out / "config.json")  # the search goes on with the config it started with
        ignored = [
            flag
            for flag, value in (
                ("--config", args.config),
                ("--set", args.overrides),
                ("--trials", args.trials),
                ("--epochs", args.epochs),
                ("--folds", args.folds),
            )
            if value
        ]
        if ignored:
            print(f"note: --resume continues with {out / 'config.json'}; ignoring {', '.join(ignored)}")
    else:
        if storage_exists(experiment):
            raise ValueError(
                f"{out} already holds a search; pass --resume to continue it or choose a new --out"
            )
        if args.trials is not None:
            args.overrides.append(f"search.trials={args.trials}")
        config = config_from_args(args)
    uri = tracking_uri(args.mlflow, config)
    if uri:
        require_mlflow(uri)  # before anything is written
    if args.config is None and args.data != "synthetic" and not args.resume:
        print(
            "note: no --config, so the small built-in default model is used; "
            "for the competition recipe pass --config configs/tgs.yaml"
        )

    root = resolve_data(args.data, config.data)
    pseudo_from = Path(args.pseudo_from) if args.pseudo_from else None
    if pseudo_from is None and args.resume and (out / PSEUDO_FROM).exists():
        pseudo_from = Path((out / PSEUDO_FROM).read_text().strip())  # what the search started with
    if config.search.pseudo and pseudo_from is None:
        raise ValueError("search.pseudo=true searches pseudo-labels: pass --pseudo-from RUN (a finished run)")
    pseudo_summary = pseudo_run_summary(pseudo_from) if pseudo_from is not None else None
    if pseudo_from is not None and not has_test(root):
        raise ValueError(f"--pseudo-from needs test tiles to pseudo-label, but {root} has no test/images")
    data, folds = prepare_run(config, root, out)
    if pseudo_from is not None:
        atomic_write_text(out / PSEUDO_FROM, f"{pseudo_from.resolve()}\n")
    check_storage_writable(storage)
    keep_run_files(out, run_storage)
    console.setup(out, args.verbose, config.train.epochs, config.data.folds)
    tracker = stack.enter_context(tracked(start_tracker(uri, out, config, "tune", root, len(data))))
    attached = init_ray(args.address, resources={DRIVER_RESOURCE: 64})  # resources only for a new local Ray
    capacity = cluster_capacity(args.cluster_config, attached)
    driver = trial_resources(capacity)
    k = config.data.folds
    gpus, cpus = requested(args, config.cluster)
    if gpus is None:  # the GPU share that keeps the most GPUs busy with the trials at once
        gpus = default_gpus_per_fold(k, config.search.max_concurrent or config.search.trials, capacity, cpus)
    one_run = fold_resources(k, cpus, gpus, capacity=capacity)
    waves = trials_per_wave(config, one_run, capacity)
    resources = fold_resources(k, cpus, one_run.gpus, waves, capacity=capacity)
    print(
        f"data {root}: {len(data)} tiles | {config.search.trials} trials x {config.data.folds} folds x "
        f"{config.train.epochs} epochs | {waves} trial(s) at once, fold workers {resources.as_dict()}"
    )
    if resources.gpus > 0:
        print(GpuPlan(waves, k, resources.gpus, capacity.max_total("GPU")).line())

    pseudo_refs = None
    if pseudo_from is not None:
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

    trainable = tune.with_resources(
        tune.with_parameters(
            kfold_trial,
            base=config.to_dict(),
            data_refs=[ray.put(data)],
            folds=folds.tolist(),
            resources=resources.__dict__,
            storage=trials_storage,
            failures=failures,
            out=str(out.resolve()),
            pseudo_refs=pseudo_refs,
            run_storage=run_storage,
        ),
        driver,
    )
    # On --resume, Tune unpickles the searcher and callbacks (tuner.pkl, in Tuner.restore) and the
    # stopper (its experiment state, in fit): inside `resumed_into` they work in this --out, which
    # may be a new one (the first run folder lost, the study rebuilt from the storage)
    with resumed_into(out) if args.resume else contextlib.nullcontext():
        if args.resume:
            tuner = tune.Tuner.restore(
                **restore_args(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = tune.Tuner(
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
                        [CheckpointPruner(trials_storage, config.data.folds)]
                        if config.train.keep_checkpoints
                        else []
                    ),
                ),
            )
        results = tuner.fit()
    console.end_live_view()  # every trial's result came through ProgressTable
    study, storage = open_run_study(out)
    stale = close_stale(storage, study, {r.config.get("study_trial") for r in results})
    if stale:
        print(f"note: study trial(s) {stale} were left RUNNING by an interrupted search; recorded as FAIL")
    table = trial_table(results, out)
    tag_trial_states(tracker, table)
    finished = table[table["state"] != "FAIL"].dropna(subset=[METRIC])  # a failed trial is no ensemble
    if finished.empty:
        raise RuntimeError(f"no trial reported a result; see the trial logs under {out / 'tune'}")
    complete = finished[finished["epochs_run"] >= config.train.epochs]  # a stopped trial lacks members
    best = (complete if not complete.empty else finished).iloc[0]
    print("\n" + table.drop(columns=INTERNAL).to_string(index=False))

    best_params = best["params"]
    best_config = trial_config(config, best_params)
    atomic_write_text(out / "best_config.json", json.dumps(best_config.to_dict(), indent=2) + "\n")
    print(
        f"\nbest trial {best['trial_id']} ({best['state']}): fold-mean {METRIC} {best[METRIC]:.4f}; "
        f"config in {out / 'best_config.json'}"
    )
    checkpoint = best_checkpoint(best, trials_storage)
    result = collect_folds(checkpoint, out, data, folds, config.data.folds)
    finalize(
        result,
        out,
        best_config,
        data,
        root,
        extra={
            "best_trial": best["trial_id"],
            "best_params": best_params,
            **({"pseudo_from": str(pseudo_from.resolve())} if pseudo_from is not None else {}),
        },
    )
    if tracker is not None:
        tracker.artifacts(run_artifacts(out))
    print(f"search done in {time.perf_counter() - start:.0f}s; outputs in {out}")
    return 0


def restore_args(experiment: str) -> dict:
    """Tuner.restore/can_restore arguments for the experiment folder (a URI or a local path)."""
    args = ray_storage(experiment)
    return {"path": args["storage_path"], "storage_filesystem": args.get("storage_filesystem")}


def best_checkpoint(best: pd.Series, trials_storage: str) -> Checkpoint:
    """The best trial's latest k-fold checkpoint, read from the storage the trial wrote to: the one its
    last report named, else the newest in its run folder."""
    path = best.get("checkpoint_path")
    checkpoint = checkpoint_at(trials_storage, path) if isinstance(path, str) else None
    if checkpoint is None:
        checkpoint = latest_checkpoint(join(trials_storage, trial_run_name(best["params"]["study_trial"])))
    if checkpoint is None:
        raise RuntimeError(f"best trial {best['trial_id']} has no checkpoint under {trials_storage}")
    return checkpoint


if __name__ == "__main__":
    run_cli(main)
