"""Search the training recipe with Ray Tune + Optuna: every trial is a full k-fold run scored on the mean
over its folds, weak trials are stopped early, and the best trial's fold models are the ensemble that
writes submission.csv, with no retraining. --resume continues an interrupted search in its --out.

`python -m orchestrator.tune [--data DIR] [--config FILE] [--set KEY=VALUE] [--trials N] [--out DIR] [--resume]`

Each trial launches one Ray Train run whose k workers are the k folds, and is scored on the mean
over folds (`best_val_map`: each fold's best held-out competition metric, averaged). Optuna (TPE,
define-by-run) picks the LR schedule, its parameters, the base lr and the BCE -> Lovasz switch
epoch; ASHA stops weak trials on the epoch, never before the grace period, and they are recorded in
the Optuna study as PRUNED. The best trial's k fold models are the ensemble: no retraining, its
fold models go straight to the aggregation step and submission.csv.

Outputs in --out (default runs/tune-DATE-TIME, printed at the start; docs/outputs.md): at the top
config.json (the base config), trials.csv, best_config.json, and for the best trial models/, cv.json,
report/ and submission.csv; under state/ optuna.db (the study: `optuna-dashboard
sqlite:///OUT/state/optuna.db` or optuna.load_study), tune/ (Ray Tune's experiment state, for --resume),
trials/ (each trial's k-fold checkpoints) and oof.npz; under logs/ progress.jsonl and tensorboard/. With --storage (s3://, gs://, a shared mount) Ray's
state goes there instead (STORAGE/search and STORAGE/trials) and is read back from there.

`--pseudo-from RUN` (a finished orchestrator.train run folder on the same data): every trial also
trains on the test tiles RUN's ensemble is confident about (salt_model/training/pseudo_labels.py), chosen with the
trial's own rule: config.pseudo's, or drawn by Optuna with `--set search.pseudo=true` (confidence and
weight). The trials' OOF stays a score on the labelled tiles.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import ray
from ray import tune

from orchestrator import console
from orchestrator.capacity import cluster_capacity
from orchestrator.collect import collect_folds
from orchestrator.finish import finalize
from orchestrator.packing import GpuPlan
from orchestrator.runtime import init_ray
from orchestrator.search import METRIC, resumed_into
from orchestrator.search_results import best_checkpoint, best_trial
from orchestrator.search_setup import (
    DRIVER_RESOURCE,
    PSEUDO_FROM,
    fetch_run_files,
    keep_run_files,
    new_tuner,
    pseudo_run,
    restore_args,
    share_pseudo_source,
    trial_resources,
    trial_sizes,
)
from orchestrator.search_space import trial_config
from orchestrator.session import add_cluster_args, failure_args, prepare_run
from orchestrator.storage import check_storage_writable, join, storage_root
from orchestrator.storage import exists as storage_exists
from orchestrator.tracking import (
    add_tracking_arg,
    require_mlflow,
    run_artifacts,
    start_tracker,
    tracked,
    tracking_uri,
)
from orchestrator.trial import kfold_trial
from salt_model import run_folder
from salt_model.cli import add_config_args, add_out_arg, config_from_args, dated_out, make_parser, run_cli
from salt_model.config import Config, load_config
from salt_model.data.loading import resolve_data
from salt_model.io import atomic_write_json, atomic_write_text

EXAMPLES = [
    ("the built-in search on generated tiles", ""),
    (
        "the competition recipe's search, 20 trials",
        "--data /data/tgs --config configs/tgs.yaml --trials 20 --out runs/search",
    ),
    ("continue it after an interruption", "--out runs/search --resume"),
    (
        "every trial also trains on runs/cpu's pseudo-labels",
        "--data /data/tgs --pseudo-from runs/cpu --out runs/pseudo",
    ),
]


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as stack:  # holds the MLflow runs' end (FINISHED, FAILED, KILLED)
        return _main(argv, stack)


def _main(argv: list[str] | None, stack: contextlib.ExitStack) -> int:
    args = parse_args(argv)
    if args.mlflow and not args.resume:
        args.overrides.append(f"tracking.mlflow_uri={args.mlflow}")
    failures = failure_args(args)
    out = Path(args.out)
    run_folder.check_layout(out)
    storage = storage_root(args.storage, out / run_folder.TUNE)
    experiment = join(storage, "search")  # Ray Tune's experiment state
    trials_storage = join(storage, "trials") if args.storage else str((out / run_folder.TRIAL_RUNS).resolve())
    run_storage = join(storage, "run") if args.storage else None  # copies of what --resume reads in OUT
    start = time.perf_counter()

    if args.resume:
        config = resumed_config(args, out, experiment, run_storage)
    else:
        config = new_config(args, out, experiment)
    uri = tracking_uri(args.mlflow, config)
    if uri:
        require_mlflow(uri)  # before anything is written
    if args.config is None and args.data != "synthetic" and not args.resume:
        print(
            "note: no --config, so the small built-in default model is used; "
            "for the competition recipe pass --config configs/tgs.yaml"
        )

    root = resolve_data(args.data, config.data)
    pseudo_from, pseudo_summary = pseudo_run(args, out, config, root)
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
    waves, resources = trial_sizes(args, config, capacity)
    print(
        f"data {root}: {len(data)} tiles | {config.search.trials} trials x {config.data.folds} folds x "
        f"{config.train.epochs} epochs | {waves} trial(s) at once, fold workers {resources.as_dict()}"
    )
    if resources.gpus > 0:
        print(GpuPlan(waves, config.data.folds, resources.gpus, capacity.max_total("GPU")).line())
    pseudo_refs = (
        None if pseudo_from is None else share_pseudo_source(pseudo_from, pseudo_summary, root, config)
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
            tuner = new_tuner(trainable, config, out, waves, storage, trials_storage, run_storage, tracker)
        results = tuner.fit()
    console.end_live_view()  # every trial's result came through ProgressTable
    best = best_trial(results, out, config, tracker)

    best_params = best["params"]
    best_config = trial_config(config, best_params)
    atomic_write_json(out / run_folder.BEST_CONFIG, best_config.to_dict())
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


def make_arg_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m orchestrator.tune", __doc__, EXAMPLES)
    add_config_args(parser)
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="trials to run: search.trials (default: the config's)",
    )
    add_out_arg(parser, "tune", "the search's run folder; needed with --resume")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    parser.add_argument(
        "--pseudo-from",
        default=None,
        metavar="DIR",
        help="a finished orchestrator.train run folder: its ensemble pseudo-labels the test tiles each "
        "trial adds to its training folds (with --set search.pseudo=true the rule and weight are searched)",
    )
    add_cluster_args(parser)
    add_tracking_arg(parser)
    console.add_verbose_arg(parser)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = make_arg_parser().parse_args(argv)
    if args.out is None and args.resume:
        raise ValueError("--resume needs --out: the folder of the search to continue")
    dated_out(args, "tune")
    return args


def resumed_config(args: argparse.Namespace, out: Path, experiment: str, run_storage: str | None) -> Config:
    """--resume: the config the search started with, from OUT (or STORAGE/run); other config flags are
    ignored, with a note."""
    if not tune.Tuner.can_restore(**restore_args(experiment)):
        raise ValueError(
            f"--resume: no interrupted search in {out} (no {experiment}; pass the --storage it ran with)"
        )
    fetched = fetch_run_files(out, run_storage)
    if fetched:
        print(f"--resume: {', '.join(fetched)} copied into {out} from {run_storage}")
    if not (out / run_folder.CONFIG).exists():
        raise ValueError(
            f"--resume: no {out / 'config.json'}"
            + (f" and none in {run_storage}" if run_storage else "; pass the --storage the search ran with")
        )
    config = load_config(out / run_folder.CONFIG)  # the search goes on with the config it started with
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
    return config


def new_config(args: argparse.Namespace, out: Path, experiment: str) -> Config:
    """A new search: the config from the flags; an --out that holds a search already is refused."""
    if storage_exists(experiment):
        raise ValueError(f"{out} already holds a search; pass --resume to continue it or choose a new --out")
    if args.trials is not None:
        args.overrides.append(f"search.trials={args.trials}")
    return config_from_args(args)


def cli() -> None:
    """The console script (pyproject.toml): main with the clear-error exit of `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
