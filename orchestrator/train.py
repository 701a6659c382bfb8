"""K-fold training on Ray, from data to submission in one command.

`python -m orchestrator.train --data DIR --folds K --epochs E --out DIR [--config FILE] [--set KEY=VALUE]`

All k folds train at once, one Ray Train worker each (a GPU each when the cluster has GPUs, a
fraction when that leaves fewer GPUs idle, or --gpus-per-fold). Outputs in --out: config.json, folds.csv, progress.jsonl (one line per
epoch while it runs), ray/ (Ray's run state and checkpoints,
unless --storage puts them elsewhere), models/fold_{r}_{member}.pt (the
chosen ensemble variant's members), oof.npz, cv.json (per-fold and overall OOF of every variant: best
epoch, last epoch, snapshots, SWA; the one the submission uses and its OOF-chosen thresholds; config)
and, when the data has test images, submission.csv. Running the same command again resumes an interrupted run from its last checkpoint.
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
from orchestrator.kfold import KFoldResult, run_kfold, write_cv
from orchestrator.packing import GpuPlan
from orchestrator.placement import DEFAULT_PLACEMENT_TIMEOUT_S, check_placement_timeout
from orchestrator.predict import predict_submission
from orchestrator.report import build as build_report
from orchestrator.report import save_oof_truth
from orchestrator.runtime import fold_resources, init_ray, requested
from orchestrator.storage import check_storage_writable, storage_root
from orchestrator.tracking import (
    add_tracking_arg,
    follow,
    require_mlflow,
    run_artifacts,
    start_tracker,
    tracked,
    tracking_uri,
)
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.config import Config
from salt_model.data import SaltData, has_test, load_split, resolve_data
from salt_model.data_checks import check_data_folder
from salt_model.folds import check_folds_trainable, load_folds, make_folds, save_folds
from salt_model.io import check_writable
from salt_model.postprocess import Thresholds, binarize
from salt_model.visualize import oof_gallery


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local Ray)"
    )
    parser.add_argument(
        "--gpus-per-fold",
        type=float,
        default=None,
        help="GPUs per fold worker (default: with GPUs the share of 1/0.5/0.25 busying the most, else 0)",
    )
    parser.add_argument(
        "--cpus-per-fold",
        type=float,
        default=None,
        help="CPUs per fold worker (default: the cluster's CPUs shared among the fold workers)",
    )
    parser.add_argument("--max-failures", type=int, default=3, help="fold-worker failures to recover from")
    parser.add_argument(
        "--max-preemptions",
        type=int,
        default=-1,
        metavar="N",
        help="restarts after a node preemption (a drained spot node), counted apart from --max-failures "
        "(default -1: any number)",
    )
    parser.add_argument(
        "--placement-timeout",
        type=float,
        default=DEFAULT_PLACEMENT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long the fold workers may wait for the cluster to place them before the run ends "
        f"with an error (default {DEFAULT_PLACEMENT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="where Ray keeps its run state and checkpoints (default OUT/ray, OUT/tune and OUT/trials); "
        "on a multi-node cluster a place every node reaches: s3://bucket/runs, gs://... or a shared mount",
    )
    parser.add_argument(
        "--cluster-config",
        default=None,
        help="the cluster launcher YAML whose node types size the fold workers (default: the autoscaler's "
        "config, ~/ray_bootstrap_config.yaml on a `ray up` head, else the nodes up now)",
    )


def failure_args(args: argparse.Namespace) -> dict:
    """run_kfold's failure budget from the cluster flags (checked: a bad value names the flag)."""
    check_placement_timeout(args.placement_timeout)
    if args.max_failures < -1 or args.max_preemptions < -1:
        raise ValueError(
            f"--max-failures={args.max_failures}, --max-preemptions={args.max_preemptions}: "
            "expected a count >= 0, or -1 for any number"
        )
    return {
        "max_failures": args.max_failures,
        "max_preemptions": args.max_preemptions,
        "placement_timeout_s": args.placement_timeout,
    }


def prepare_run(config: Config, root: Path, out: Path) -> tuple[SaltData, np.ndarray]:
    """Loads the train split, writes config.json and folds.csv (or checks the ones already there)."""
    data = load_split(root, "train")
    check_data_folder(root, data)  # bad input is refused before anything is written
    folds_path = out / "folds.csv"
    if folds_path.exists():  # a resumed run keeps its split
        folds = load_folds(folds_path, data.ids)
        if folds.max() + 1 != config.data.folds:
            raise ValueError(
                f"{folds_path} has {folds.max() + 1} folds but data.folds={config.data.folds}; "
                "use a new --out or the same --folds"
            )
    else:
        folds = make_folds(data.masks, config.data.folds, config.data.fold_seed)
    check_folds_trainable(folds, config.data.folds, config.train.batch_size)
    check_writable(out)
    if not folds_path.exists():
        save_folds(folds_path, data.ids, folds)
    config.save(out / "config.json")
    return data, folds


def finalize(
    result: KFoldResult,
    out: Path,
    config: Config,
    data: SaltData,
    root: Path,
    extra: dict | None = None,
    probs_out: Path | None = None,
    per_fold: bool = False,
) -> dict:
    """cv.json, a score table, oof_gallery.png, and submission.csv when there are test tiles.

    The submission uses the variant collect_folds chose and the thresholds chosen on its own OOF;
    `probs_out` also keeps the ensemble's test probabilities (for the next pseudo-label round), and with
    `per_fold` each fold's own (pseudo.teacher=fold)."""
    truth = data.masks.astype(bool)
    summary = write_cv(out, result, config, extra or {})
    save_oof_truth(out, data.ids, data.images, truth)
    print_cv_table(summary)
    pred = binarize(result.oof_probs, result.oof_empty, Thresholds(**summary["thresholds"]))
    print(
        f"OOF predictions vs truth (worst, random, best tiles): {oof_gallery(out / 'oof_gallery.png', data.images, truth, pred, data.ids)}"
    )
    if has_test(root):
        predict_submission(
            out, load_split(root, "test"), summary["thresholds"], out / "submission.csv",
            probs_out=probs_out, per_fold=per_fold,
        )  # fmt: skip
    write_report(out)
    return summary


def write_report(out: Path) -> None:
    """OUT/report/index.html; a plotting failure is a warning, never the loss of a finished run."""
    try:
        print(f"report: {build_report(out)} (rebuild: python -m orchestrator.report --run {out})")
    except Exception as err:  # noqa: BLE001
        console.say(
            f"warning: the run report failed ({console.cause(err)}); retry: python -m orchestrator.report --run {out}"
        )


def print_cv_table(summary: dict) -> None:
    """One row per ensemble variant: per-fold and overall OOF, thresholds; * marks the submission's."""
    k = len(summary["fold_scores"])
    print(
        f"\n  variant        members | {'folds (default thresholds)':<{max(26, 7 * k)}} | OOF default | OOF chosen"
    )
    for name, v in summary["variants"].items():
        mark = "*" if name == summary["submission_variant"] else ("~" if not v["honest"] else " ")
        folds = " ".join(f"{s:.4f}" for s in v["fold_scores"])
        print(
            f"{mark} {name:<14} {sum(v['members_per_fold']):>7} | {folds:<{max(26, 7 * k)}} | "
            f"{v['oof_score_default_thresholds']:11.4f} | {v['oof_score']:10.4f}"
        )
    th = summary["thresholds"]
    print(
        f"* submission: {summary['submission_variant']} ({summary['submission_members']} members), OOF "
        f"{summary['oof_score']:.4f} with pixel>{th['pixel']}, min_area {th['min_area']}, "
        f"empty-head>{th['empty']}; ~ best epoch, chosen on the held-out fold (optimistic)\n"
    )


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
                cfg.save(folder / "config.json")  # what the round trains with (its report reads it)
                if config.pseudo.init == "previous":
                    init = rounds.previous_weights(rounds.round_dir(out, r - 1), config.data.folds)
            console.restart_live_view(f"round {r} " if r else "", epochs=cfg.train.epochs)
            key = "kfold" if r == 0 else f"round_{r}"
            with follow(tracker, key, f"round {r}", folder / "progress.jsonl"):
                result = run_kfold(
                    cfg, data, folds, folder, resources, storage=storage, **failures,
                    pseudo=None if labels is None else rounds.training_tiles(labels), init_states=init,
                )  # fmt: skip
            console.end_live_view(final_epoch=cfg.train.epochs)
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
    parser = make_parser("python -m orchestrator.train", __doc__)
    add_config_args(parser)
    parser.add_argument("--out", required=True, help="run folder (re-use it to resume)")
    add_cluster_args(parser)
    add_tracking_arg(parser)
    console.add_verbose_arg(parser)
    args = parser.parse_args(argv)
    if args.mlflow:
        args.overrides.append(f"tracking.mlflow_uri={args.mlflow}")
    config = config_from_args(args)
    uri = tracking_uri(args.mlflow, config)
    if uri:
        require_mlflow(uri)  # before anything is written
    failures = failure_args(args)
    out = Path(args.out)
    start = time.perf_counter()

    root = resolve_data(args.data, config.data)
    if config.pseudo.rounds and not has_test(root):
        raise ValueError(
            f"pseudo.rounds={config.pseudo.rounds} needs test tiles to pseudo-label, but {root} has no "
            "test/images; set pseudo.rounds=0"
        )
    for r in range(1, config.pseudo.rounds + 1):
        rounds.round_config(config, r)  # a round that cannot be configured fails now, not after round 0
    data, folds = prepare_run(config, root, out)
    print(f"data {root}: {len(data)} tiles, {config.data.folds} folds, {config.train.epochs} epochs")
    console.setup(out, args.verbose, config.train.epochs, config.data.folds)
    tracker = stack.enter_context(tracked(start_tracker(uri, out, config, "train", root, len(data))))
    attached = init_ray(args.address)
    capacity = cluster_capacity(args.cluster_config, attached)
    gpus, cpus = requested(args, config.cluster)
    resources = fold_resources(config.data.folds, cpus, gpus, capacity=capacity)
    storage = storage_root(args.storage, out / "ray")
    check_storage_writable(storage)
    print(
        f"{config.data.folds} fold workers x {resources.as_dict()} on a cluster with {ray.cluster_resources()} "
        f"(can grow to: {capacity.describe()}); run state in {storage}"
    )
    if resources.gpus > 0:
        print(GpuPlan(1, config.data.folds, resources.gpus, capacity.max_total("GPU"), noun="run").line())
    if config.pseudo.rounds == 0:
        console.view().start("run")  # elapsed counts from here
        with follow(tracker, "kfold", "k-fold", out / "progress.jsonl"):
            result = run_kfold(config, data, folds, out, resources, storage=storage, **failures)
        console.end_live_view(final_epoch=config.train.epochs)
        finalize(result, out, config, data, root)
    else:
        run_rounds(config, data, folds, out, root, resources, failures, storage, tracker)
    if tracker is not None:
        tracker.artifacts(run_artifacts(out))
    print(f"done in {time.perf_counter() - start:.0f}s; outputs in {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
