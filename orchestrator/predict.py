"""Aggregation: all ensemble members of all folds averaged on the test tiles, as submission.csv.

`python -m orchestrator.predict --run DIR --data DIR --out FILE`
`python -m orchestrator.predict --run DIR --segy IN.sgy --out DIR` (whole volumes: orchestrator.volume)

RUN/models holds the members the run chose (cv.json "submission_variant"): k folds x s members
(the last epoch, the cycle-end snapshots and/or SWA; salt_model.training.members). Ray Data streams the test
tiles once through actors that each hold every member (measured here: one actor with every fold ran
2000 tiles in 12.8 s vs 19.6 s for one task per fold). Each actor averages the members'
horizontally-flip-TTA'd probabilities in float32 (float16 flipped masks near the threshold), applies
the thresholds chosen on the OOF of the same member average (salt_model.training.variants), and returns RLE strings,
so only text travels back. Rows come back in any order, so every row carries its id.

For a pseudo-label round the actors can also return the mean probabilities, and with `per_fold` each
fold's own members' mean (pseudo.teacher=fold: fold r's tiles are labelled by fold r's models only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from orchestrator import console
from orchestrator.runtime import init_ray
from orchestrator.submission import load_models, predict_submission
from orchestrator.volume_command import add_volume_args, predict_segy
from salt_model import run_folder
from salt_model.cli import make_parser, run_cli
from salt_model.config import Config
from salt_model.data.loading import DataError, load_split, resolve_data
from salt_model.evaluation.metric import competition_metric
from salt_model.evaluation.thresholds import binarize, choose_thresholds, default_thresholds


def choose_oof_thresholds(oof_probs: np.ndarray, oof_empty: np.ndarray | None, truth: np.ndarray) -> dict:
    """The thresholds that maximise the OOF competition metric, with the scores before and after."""
    default_pred = binarize(oof_probs, oof_empty, default_thresholds(oof_empty))
    default_score = competition_metric(truth, default_pred)
    thresholds, score = choose_thresholds(oof_probs, oof_empty, truth)
    return {
        "thresholds": thresholds.to_dict(),
        "oof_score": score,
        "oof_score_default_thresholds": default_score,
    }


def thresholds_for_run(run: Path, root: Path) -> dict:
    """The run's OOF-chosen thresholds from cv.json, or chosen now from oof.npz and the train masks."""
    cv = run / run_folder.CV
    if cv.exists():
        return json.loads(cv.read_text())["thresholds"]
    oof_path = run / run_folder.OOF
    if not oof_path.exists():
        raise ValueError(f"run folder {run}: neither cv.json nor oof.npz; was it trained to the end?")
    oof = np.load(oof_path, allow_pickle=False)
    train = load_split(root, "train")
    if not np.array_equal(oof["ids"], train.ids):
        raise DataError(
            f"{oof_path}: its ids do not match {root / 'train'}; use the data the run was trained on"
        )
    chosen = choose_oof_thresholds(
        oof["probs"].astype(np.float32), oof.get("empty", None), train.masks.astype(bool)
    )
    print(f"thresholds chosen on OOF: {chosen['thresholds']} (OOF score {chosen['oof_score']:.4f})")
    return chosen["thresholds"]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python -m orchestrator.predict", __doc__)
    parser.add_argument(
        "--run", required=True, help="output folder of orchestrator.train or orchestrator.tune"
    )
    parser.add_argument(
        "--data", default=None, help="Kaggle-layout folder with test/images, or 'synthetic' (or --segy)"
    )
    parser.add_argument(
        "--out", default=None, help="submission file (default: RUN/submission.csv); with --segy a folder"
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--batch-size", type=int, default=64)
    console.add_verbose_arg(parser)
    add_volume_args(parser)
    args = parser.parse_args(argv)
    if args.segy is not None:
        return predict_segy(args)
    if args.data is None:
        raise ValueError("give --data DIR (the test tiles) or --segy IN.sgy (a seismic volume)")
    run = Path(args.run)
    if not run.is_dir():
        raise ValueError(f"--run {run}: no such folder")
    config = (
        Config.from_dict(json.loads((run / run_folder.CONFIG).read_text()))
        if (run / run_folder.CONFIG).exists()
        else Config()
    )
    load_models(run)  # a corrupted or foreign model file is refused before Ray starts
    root = resolve_data(args.data, config.data)
    thresholds = thresholds_for_run(run, root)
    test = load_split(root, "test")
    console.setup(run, args.verbose, config.train.epochs, config.data.folds)
    init_ray(args.address)
    start = time.perf_counter()
    predict_submission(
        run,
        test,
        thresholds,
        Path(args.out) if args.out else run / run_folder.SUBMISSION,
        batch_size=args.batch_size,
    )
    print(f"predicted {len(test)} tiles in {time.perf_counter() - start:.1f}s")
    return 0


def cli() -> None:
    """The console script (pyproject.toml): main with the clear-error exit of `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
