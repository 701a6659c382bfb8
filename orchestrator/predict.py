"""Aggregation: a finished run's ensemble (every member of every fold, averaged) predicts the test tiles
into a submission, with the thresholds the run chose on its out-of-fold predictions; with --segy it
predicts a whole SEG-Y volume instead.

`python -m orchestrator.predict --run DIR [--data DIR] [--out FILE]`
`python -m orchestrator.predict --run DIR --segy IN.sgy [--out DIR]` (whole volumes: orchestrator.volume)

--data defaults to the data the run was trained on, as its cv.json records it (`data`). RUN/models holds the members the run chose (cv.json "submission_variant"): k folds x s members
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

import argparse
import json
import time
from pathlib import Path

import numpy as np

from orchestrator import console
from orchestrator.runtime import add_address_arg, init_ray
from orchestrator.submission import load_models, predict_submission
from orchestrator.volume_command import add_volume_args, predict_segy
from salt_model import run_folder
from salt_model.cli import make_parser, run_cli
from salt_model.config import Config
from salt_model.data.loading import DataError, load_split, resolve_data
from salt_model.evaluation.thresholds import choose_thresholds
from salt_model.training.members import Member, mean_probs

EXAMPLES = [
    ("RUN/submission.csv again, from the data the run was trained on", "--run runs/cpu"),
    ("other test tiles", "--run runs/cpu --data /data/tgs-new --out runs/cpu/new.csv"),
    ("a whole SEG-Y volume (docs/volumes.md)", "--run runs/cpu --segy survey.sgy --out runs/survey"),
    ("a generated cube with salt; prints the IoU against its truth", "--run runs/cpu --segy synthetic"),
]


def thresholds_for_run(run: Path, root: Path, rule: str = "gate") -> dict:
    """The run's OOF-chosen thresholds from cv.json, or chosen now on the train masks: from a k-fold
    run's state/oof.npz, or from the folds a salt_model.train folder holds (fold_members_oof), for the
    run's decode.empty_rule `rule`."""
    cv = run / run_folder.CV
    if cv.exists():
        return json.loads(cv.read_text())["thresholds"]
    oof_path = run / run_folder.OOF
    if oof_path.exists():
        oof = np.load(oof_path, allow_pickle=False)
        ids, probs, empty = oof["ids"], oof["probs"].astype(np.float32), oof.get("empty", None)
        where = f"{oof_path}"
    else:
        ids, probs, empty, folds = fold_members_oof(run)
        where = f"the held-out tiles of fold(s) {', '.join(map(str, folds))}"
    train = load_split(root, "train")
    index = {tile: i for i, tile in enumerate(train.ids)}
    missing = [tile for tile in ids if tile not in index]
    if missing:
        raise DataError(
            f"run folder {run}: {len(missing)} OOF tiles (e.g. {missing[0]}) are not in {root / 'train'}; "
            "use the data the run was trained on"
        )
    truth = train.masks[[index[tile] for tile in ids]].astype(bool)
    thresholds, score = choose_thresholds(probs, empty, truth, rule=rule)
    print(f"thresholds chosen on the OOF of {where}: {thresholds.to_dict()} (OOF score {score:.4f})")
    return thresholds.to_dict()


def fold_members_oof(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[int]]:
    """A salt_model.train folder (one or more folds trained into one --out): each fold's OOF of the
    members in RUN/models, averaged as the ensemble averages them, over the folds present.
    Returns (ids, probs, empty or None, folds)."""
    by_fold: dict[int, list[str]] = {}
    for path in sorted((run / run_folder.MODELS).glob("fold_*.pt")):
        fold, member = run_folder.parse_member_file(path.name)
        by_fold.setdefault(fold, []).append(member)
    if not by_fold:
        raise ValueError(f"run folder {run}: neither cv.json nor models/; was it trained to the end?")
    ids, probs, empty = [], [], []
    for fold, names in sorted(by_fold.items()):
        path = run / run_folder.fold_oof(fold)
        if not path.exists():
            raise ValueError(
                f"run folder {run}: models of fold {fold} but no {path}; was it trained to the end?"
            )
        with np.load(path, allow_pickle=False) as oof:
            members = [
                Member(name, 0, 0.0, oof[f"probs_{name}"], oof.get(f"empty_{name}", None)) for name in names
            ]
            ids.append(oof["ids"])
        p, e = mean_probs(members)
        probs.append(p)
        empty.append(e)
    has_empty = all(e is not None for e in empty)
    return (
        np.concatenate(ids),
        np.concatenate(probs),
        np.concatenate(empty) if has_empty else None,
        sorted(by_fold),
    )


def trained_on(run: Path) -> str:
    """--data's default: the data folder RUN was trained on, as its cv.json records it (a
    salt_model.train folder: its result_fold_F.json)."""
    records = [run / run_folder.CV, *sorted(run.glob(run_folder.fold_result("*")))]
    recorded = next((json.loads(p.read_text()).get("data") for p in records if p.exists()), None)
    if recorded is None:
        raise ValueError(
            f"--run {run}: its cv.json does not say which data it was trained on (a run from before it "
            "was recorded, or not finished); pass --data DIR, or --data synthetic for generated tiles"
        )
    if not Path(recorded).is_dir():
        raise ValueError(
            f"--run {run} was trained on {recorded} (its cv.json), which is not on this machine; pass --data "
            "DIR, or --data synthetic for generated tiles"
        )
    print(f"data: {recorded} (what {run} was trained on; --data to choose other test tiles)")
    return recorded


def main(argv: list[str] | None = None) -> int:
    args = make_arg_parser().parse_args(argv)
    if args.segy is not None:
        return predict_segy(args)
    run = Path(args.run)
    if not run.is_dir():
        raise ValueError(f"--run {run}: no such folder")
    config = (
        Config.from_dict(json.loads((run / run_folder.CONFIG).read_text()))
        if (run / run_folder.CONFIG).exists()
        else Config()
    )
    load_models(run)  # a corrupted or foreign model file is refused before Ray starts
    root = resolve_data(args.data if args.data is not None else trained_on(run), config.data)
    thresholds = thresholds_for_run(run, root, config.decode.empty_rule)
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


def make_arg_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m orchestrator.predict", __doc__, EXAMPLES)
    parser.add_argument(
        "--run",
        required=True,
        metavar="DIR",
        help="the run folder (--out) of a finished orchestrator.train or orchestrator.tune, or of "
        "salt_model.train (the folds trained into it)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="Kaggle-layout folder with test/images, or 'synthetic' (default: the data RUN was trained on, "
        "from RUN/cv.json)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="the submission CSV (default: RUN/submission.csv); with --segy the output folder (default: "
        "runs/volume-DATE-TIME, the start time)",
    )
    add_address_arg(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="test tiles per forward pass on each prediction actor",
    )
    console.add_verbose_arg(parser)
    add_volume_args(parser)
    return parser


def cli() -> None:
    """The console script (pyproject.toml): main with the clear-error exit of `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
