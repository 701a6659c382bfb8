"""Runs on the driver: what every k-fold command (orchestrator.train, orchestrator.tune) sets up before
Ray starts: the cluster flags and their failure budget, the train split and its folds in the run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from orchestrator.placement import DEFAULT_PLACEMENT_TIMEOUT_S, check_placement_timeout
from orchestrator.runtime import add_address_arg
from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.checks import check_data_folder
from salt_model.data.folds import check_folds_trainable, load_folds, make_folds, save_folds
from salt_model.data.loading import SaltData, load_split
from salt_model.io import check_writable


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    add_address_arg(parser)
    parser.add_argument(
        "--gpus-per-fold",
        type=float,
        default=None,
        metavar="GPUS",
        help="GPUs per fold worker, a fraction shares one (default: with GPUs the share of 1/0.5/0.25 "
        "busying the most, else 0)",
    )
    parser.add_argument(
        "--cpus-per-fold",
        type=float,
        default=None,
        metavar="CPUS",
        help="CPUs per fold worker (default: the cluster's CPUs shared among the fold workers)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=3,
        metavar="N",
        help="fold-worker failures the run recovers from, each by restarting the k workers from the last "
        "checkpoint; -1: any number",
    )
    parser.add_argument(
        "--max-preemptions",
        type=int,
        default=-1,
        metavar="N",
        help="restarts after a node preemption (a drained spot node), counted apart from --max-failures "
        "(default: -1, any number)",
    )
    parser.add_argument(
        "--placement-timeout",
        type=float,
        default=DEFAULT_PLACEMENT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long the fold workers may wait for the cluster to place them before the run ends "
        "with an error",
    )
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URI",
        help="where Ray keeps its run state and checkpoints: s3://bucket/runs, gs://... or a folder; on a "
        "multi-node cluster a place every node reaches (default: OUT/ray, OUT/tune and OUT/trials)",
    )
    parser.add_argument(
        "--cluster-config",
        default=None,
        metavar="FILE",
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
    folds_path = out / run_folder.FOLDS
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
    config.save(out / run_folder.CONFIG)
    return data, folds
