"""K-fold training on Ray, from data to submission in one command: all k folds train at once, one Ray
Train worker each, and the run folder (--out) gets the fold models, their out-of-fold scores and, when
the data has test tiles, submission.csv. The same command with the same --out resumes an interrupted run
from its last checkpoint.

`python -m orchestrator.train [--data DIR] [--folds K] [--epochs E] [--out DIR] [--config FILE] [--set KEY=VALUE]`

Each fold worker gets a GPU when the cluster has GPUs, a fraction when that leaves fewer GPUs idle, or
--gpus-per-fold. Outputs in --out (default runs/train-DATE-TIME, printed at the start; docs/outputs.md):
at the top submission.csv (when the data has test images), cv.json (per-fold and overall OOF of every
variant: best epoch, last epoch, snapshots, SWA; the one the submission uses and its OOF-chosen
thresholds; the data; config), report/, config.json and models/fold_{r}_{member}.pt (the chosen
variant's members); under state/ folds.csv, ray/ (Ray's run state and checkpoints, unless --storage puts
them elsewhere) and oof.npz; under logs/ progress.jsonl (one line per epoch while it runs), tensorboard/
and Ray's own output.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import ray

from orchestrator import console, rounds
from orchestrator.capacity import cluster_capacity
from orchestrator.finish import finalize, write_report
from orchestrator.kfold import run_kfold
from orchestrator.packing import GpuPlan
from orchestrator.progress_follower import follow
from orchestrator.runtime import fold_resources, init_ray, requested
from orchestrator.session import add_cluster_args, failure_args, prepare_run
from orchestrator.storage import check_storage_writable, storage_root
from orchestrator.tracking import (
    add_tracking_arg,
    require_mlflow,
    run_artifacts,
    start_tracker,
    tracked,
    tracking_uri,
)
from salt_model import run_folder
from salt_model.cli import add_config_args, add_out_arg, config_from_args, dated_out, make_parser, run_cli
from salt_model.config import Config
from salt_model.data.loading import SaltData, has_test, load_split, resolve_data

EXAMPLES = [
    ("generated tiles, a quick look", "--folds 2 --epochs 1"),
    ("the real data with the CPU preset", "--data /data/tgs --config configs/cpu.yaml --out runs/cpu"),
    (
        "the competition recipe on a GPU cluster",
        "--data /data/tgs --config configs/tgs.yaml --storage s3://BUCKET/salt --out runs/tgs",
    ),
]


def run_rounds(
    config: Config,
    data: SaltData,
    folds: np.ndarray,
    out: Path,
    root: Path,
    resources,
    failures: dict,
    storage: str,
    tracker=None,
) -> dict:
    """Round 0 and config.pseudo.rounds pseudo-label rounds (orchestrator/rounds.py), each resumable;
    with a tracker, each round's epochs go to its own MLflow child run. `failures`: run_kfold's failure
    budget (`failure_args`)."""
    test = load_split(root, "test")
    entries, summary = [], None
    for r in range(config.pseudo.rounds + 1):
        folder, cfg = rounds.round_dir(out, r), rounds.round_config(config, r)
        labels = None
        if r > 0:
            labels = rounds.pseudo_labels(out, r, config, test, summary)
            kept = rounds.labels_summary(labels)
            per_fold = f" (per fold {kept['kept_per_fold']})" if "kept_per_fold" in kept else ""
            print(
                f"round {r}/{config.pseudo.rounds}: {kept['kept']} of {kept['offered']} test tiles{per_fold} "
                f"pseudo-labelled by the {config.pseudo.teacher} teacher "
                f"({kept['kept_fraction']:.0%}, {kept['kept_with_salt']} with salt; "
                f">= {config.pseudo.min_fraction:.0%} of pixels < {config.pseudo.low} or > {config.pseudo.high}), "
                f"weight {config.pseudo.weight}, start: {config.pseudo.init}"
            )
        done = rounds.finished(folder, cfg)
        if done is not None:
            print(f"round {r}: finished earlier, kept (OOF {done['oof_score']:.4f}); outputs in {folder}")
            summary = done
        else:
            init = None
            if r > 0:
                folder.mkdir(parents=True, exist_ok=True)
                cfg.save(folder / run_folder.CONFIG)  # what the round trains with (its report reads it)
                if config.pseudo.init == "previous":
                    init = rounds.previous_weights(rounds.round_dir(out, r - 1), config.data.folds)
            console.restart_live_view(f"round {r} " if r else "", epochs=cfg.train.epochs)
            key = "kfold" if r == 0 else f"round_{r}"
            with follow(tracker, key, f"round {r}", folder / run_folder.PROGRESS):
                result = run_kfold(
                    cfg, data, folds, folder, resources, storage=storage, **failures,
                    pseudo=None if labels is None else rounds.training_tiles(labels), init_states=init,
                )  # fmt: skip
            console.end_live_view()
            more = r < config.pseudo.rounds
            summary = finalize(
                result, folder, cfg, data, root, extra={"round": r},
                probs_out=folder / rounds.TEST_PROBS if more else None,
                per_fold=more and config.pseudo.teacher == "fold",
            )  # fmt: skip
        entries.append(rounds.round_entry(r, summary, labels))
    chosen = rounds.write_rounds(out, entries, config)
    write_report(out)  # with the per-round table
    for e in entries:
        kept = "" if e["pseudo"] is None else f", {e['pseudo']['kept']} pseudo-labelled tiles"
        print(f"  round {e['round']}: OOF {e['oof_score']:.4f} ({e['submission_variant']}{kept})")
    print(
        f"submission.csv: round {chosen['submission_round']} ({chosen['why']}); "
        f"per-round figures in {out / 'rounds.json'}"
    )
    return chosen


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as stack:  # holds the MLflow runs' end (FINISHED, FAILED, KILLED)
        return _main(argv, stack)


def _main(argv: list[str] | None, stack: contextlib.ExitStack) -> int:
    args = parse_args(argv)
    if args.mlflow:
        args.overrides.append(f"tracking.mlflow_uri={args.mlflow}")
    config = config_from_args(args)
    uri = tracking_uri(args.mlflow, config)
    if uri:
        require_mlflow(uri)  # before anything is written
    failures = failure_args(args)
    out = Path(args.out)
    run_folder.check_layout(out)
    start = time.perf_counter()

    root = resolve_data(args.data, config.data)
    if config.pseudo.rounds and not has_test(root):
        raise ValueError(
            f"pseudo.rounds={config.pseudo.rounds} needs test tiles to pseudo-label, but {root} has no "
            "test/images; set pseudo.rounds=0"
        )
    if config.pseudo.rounds:  # every later round trains the same config: one that cannot fails now
        rounds.round_config(config, 1)
    data, folds = prepare_run(config, root, out)
    print(f"data {root}: {len(data)} tiles, {config.data.folds} folds, {config.train.epochs} epochs")
    console.setup(out, args.verbose, config.train.epochs, config.data.folds)
    tracker = stack.enter_context(tracked(start_tracker(uri, out, config, "train", root, len(data))))
    attached = init_ray(args.address)
    capacity = cluster_capacity(args.cluster_config, attached)
    gpus, cpus = requested(args, config.cluster)
    resources = fold_resources(config.data.folds, cpus, gpus, capacity=capacity)
    storage = storage_root(args.storage, out / run_folder.RAY)
    check_storage_writable(storage)
    print(
        f"{config.data.folds} fold workers x {resources.as_dict()} on a cluster with {ray.cluster_resources()} "
        f"(can grow to: {capacity.describe()}); run state in {storage}"
    )
    if resources.gpus > 0:
        print(GpuPlan(1, config.data.folds, resources.gpus, capacity.max_total("GPU"), noun="run").line())
    if config.pseudo.rounds == 0:
        console.view().start("run")  # elapsed counts from here
        with follow(tracker, "kfold", "k-fold", out / run_folder.PROGRESS):
            result = run_kfold(config, data, folds, out, resources, storage=storage, **failures)
        console.end_live_view()
        finalize(result, out, config, data, root)
    else:
        run_rounds(config, data, folds, out, root, resources, failures, storage, tracker)
    if tracker is not None:
        tracker.artifacts(run_artifacts(out))
    print(f"done in {time.perf_counter() - start:.0f}s; outputs in {out}")
    return 0


def make_arg_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m orchestrator.train", __doc__, EXAMPLES)
    add_config_args(parser)
    add_out_arg(parser, "train", "the run folder; pass it again to resume")
    add_cluster_args(parser)
    add_tracking_arg(parser)
    console.add_verbose_arg(parser)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = make_arg_parser().parse_args(argv)
    dated_out(args, "train")
    return args


def cli() -> None:
    """The console script (pyproject.toml): main with the clear-error exit of `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
