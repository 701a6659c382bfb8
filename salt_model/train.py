"""Train one fold without Ray, in plain PyTorch: fold F of the K-fold split is held out for validation
and the other K-1 train; the folder (--out) gets the fold's checkpoint, its ensemble members' weights and
their out-of-fold predictions. The same command with the same --out resumes from the checkpoint.

`python -m salt_model.train [--data DIR] [--folds K] [--fold F] [--epochs E] [--out DIR]`

Writes into --out (default runs/fold-DATE-TIME, printed at the start) the layout of a k-fold run's folder
(salt_model/run_folder.py): config.json, result_fold_F.json (scores, members, history), models/fold_F_{member}.pt
(each ensemble member's weights: last, snap{epoch}, swa), and under state/ folds.csv, fold_F.pt and
fold_F_members.pt (the resumable checkpoint, every epoch) and oof_fold_F.npz (float32 OOF probabilities
`probs_{member}` of every member, best epoch included). --restart ignores an existing checkpoint. Folds
trained into one --out make an ensemble that `orchestrator.predict --run` reads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from salt_model import run_folder
from salt_model.cli import add_config_args, add_out_arg, config_from_args, dated_out, make_parser, run_cli
from salt_model.data.checks import check_data_folder
from salt_model.data.folds import check_folds_trainable, make_folds, save_folds
from salt_model.data.loading import load_split, resolve_data
from salt_model.evaluation.inference import save_fold_model
from salt_model.io import atomic_savez, atomic_write_json, check_writable
from salt_model.training.fold_loop import FoldResult, checkpoint_name, train_fold

EXAMPLES = [
    ("generated tiles, a quick look", "--folds 3 --fold 0 --epochs 2"),
    (
        "fold 2 of the CPU preset's 3 folds",
        "--data /data/tgs --config configs/cpu.yaml --fold 2 --out runs/fold2",
    ),
    (
        "fold 0 of the competition recipe on the second GPU",
        "--data /data/tgs --config configs/tgs.yaml --device cuda:1 --out runs/fold0",
    ),
]


def format_epoch(m: dict) -> str:
    head = (
        f"fold {m['fold']} epoch {m['epoch']:>3} | {m['loss']:>6} loss {m['train_loss']:.4f} lr {m['lr']:.2e}"
    )
    if "val_map" not in m:  # not evaluated (train.eval_every)
        return f"{head} | not evaluated | {m['epoch_s']:.1f}s"
    return (
        f"{head} | val_map {m['val_map']:.4f} iou {m['val_iou']:.4f} "
        f"loss {m['val_loss']:.4f} | best {m['best_val_map']:.4f} | {m['epoch_s']:.1f}s"
    )


def save_fold_outputs(out: Path, result: FoldResult, config, ids: np.ndarray, root: Path) -> None:
    """Every member's weights, their out-of-fold probabilities and the history, each written atomically."""
    arrays = {"ids": ids[result.val_index]}
    for name, m in result.members.items():
        if m.state is not None:
            save_fold_model(
                out / run_folder.MODELS / run_folder.member_file(result.fold, name),
                m.state,
                config,
                result.fold,
                m.score,
                m.epoch,
                name,
            )
        arrays[f"probs_{name}"] = m.probs  # float32: thresholds are chosen on these
        if m.empty is not None:
            arrays[f"empty_{name}"] = m.empty
    atomic_savez(out / run_folder.fold_oof(result.fold), **arrays)
    summary = {
        "fold": result.fold,
        "best_val_map": result.best_score,
        "best_epoch": result.best_epoch,
        "members": {name: {"epoch": m.epoch, "val_map": m.score} for name, m in result.members.items()},
        "history": result.history,
        "data": str(Path(root).resolve()),  # orchestrator.predict's default --data
    }
    atomic_write_json(out / run_folder.fold_result(result.fold), summary)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from_args(args)
    out = Path(args.out)
    run_folder.check_layout(out)
    root = resolve_data(args.data, config.data)
    data = load_split(root, "train")
    check_data_folder(root, data)
    folds = make_folds(data.masks, config.data.folds, config.data.fold_seed)
    check_folds_trainable(folds, config.data.folds, config.train.batch_size)
    check_writable(out)  # only once the data is known to be good
    save_folds(out / run_folder.FOLDS, data.ids, folds)
    config.save(out / run_folder.CONFIG)

    state = out / run_folder.STATE
    ckpt = state / checkpoint_name(args.fold)
    resume = ckpt if ckpt.exists() and not args.restart else None
    print(
        f"data {root}: {len(data)} tiles, fold {args.fold} of {config.data.folds} "
        f"({int((folds == args.fold).sum())} held out)" + (f"; resuming from {ckpt}" if resume else "")
    )

    def report(metrics: dict, save) -> None:
        print(format_epoch(metrics), flush=True)
        if metrics["epoch"] % config.train.checkpoint_every == 0 or metrics["epoch"] == config.train.epochs:
            save(state)

    start = time.perf_counter()
    result = train_fold(
        config,
        data,
        args.fold,
        report=report,
        folds=folds,
        resume=resume,
        device=args.device,
        allow_changed=tuple(args.allow_change),
    )
    save_fold_outputs(out, result, config, data.ids, root)
    print(
        f"fold {args.fold}: best val_map {result.best_score:.4f} at epoch {result.best_epoch} "
        f"({time.perf_counter() - start:.0f}s); outputs in {out}"
    )
    return 0


def make_arg_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m salt_model.train", __doc__, EXAMPLES)
    add_config_args(parser)
    parser.add_argument(
        "--fold",
        type=int,
        default=0,
        metavar="F",
        help="the one fold to train: fold F (0..K-1) is held out for validation, the other K-1 train",
    )
    add_out_arg(parser, "fold", "the output folder; pass it again to resume")
    parser.add_argument(
        "--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    parser.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="resume although this schedule/train key differs from the checkpoint's (e.g. train.epochs "
        "to extend a run; the LR curve then bends); repeatable",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = make_arg_parser().parse_args(argv)
    dated_out(args, "fold")
    return args


def cli() -> None:
    """The console script (pyproject.toml): main with the clear-error exit of `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
