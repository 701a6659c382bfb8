"""Quality benchmark: train k-fold folds without Ray and score their out-of-fold predictions.

    python bench/quality.py --data ../shared/tgs --config configs/cpu.yaml --folds-to-run 0 \
        --out bench/quality_cpu.json

Trains the chosen folds (default: all k) one after another with `salt_model.training.fold_loop.train_fold`, pure
PyTorch, so it runs the same on a laptop or a GPU box without Ray. Then it scores the held-out tiles of
those folds together with the competition metric (salt_model.evaluation.metric), for every ensemble variant the
folds have (salt_model.training.variants: best epoch, last epoch, cycle-end snapshots, SWA, snapshots+SWA), at the
default thresholds (pixel 0.5, empty head 0.5, as `fold_loop.evaluate` scores every epoch) and at
thresholds chosen on that variant's OOF (`thresholds.choose_thresholds`, as the top TGS solutions
did), and picks the honest variant an orchestrator run would submit. Thresholds chosen on the same
tiles they are scored on are optimistic by a little; the default figure is the unbiased one.

With --submission FILE it also predicts the test tiles with every member of the chosen variant of the
folds run (the mean of their flip-TTA probabilities, float32) and writes id,rle_mask, timing img/s.

The JSON (written atomically) holds the per-fold histories and best scores, both OOF figures, the
empty-image accuracy, the all-empty baseline on the same tiles, wall times, the device, the torch
version, the resolved config and the command line.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # `python bench/quality.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.data.folds import make_folds
from salt_model.data.loading import has_test, load_split, resolve_data
from salt_model.data.rle import rle_encode
from salt_model.device import pick_device
from salt_model.evaluation.error_analysis import emptiness
from salt_model.evaluation.inference import ensemble_probs, model_from_payload
from salt_model.evaluation.metric import image_scores
from salt_model.evaluation.thresholds import Thresholds, binarize, choose_thresholds, default_thresholds
from salt_model.io import atomic_write, atomic_write_text
from salt_model.train import format_epoch
from salt_model.training.fold_loop import train_fold
from salt_model.training.members import Member
from salt_model.training.variants import cross_validate

EXAMPLES = [
    (
        "fold 0 of the CPU preset's 3 folds on the real data",
        "--data ../shared/tgs --config configs/cpu.yaml --folds-to-run 0 --out bench/quality_cpu.json",
    ),
]


def parse_folds(text: str | None, k: int) -> list[int]:
    """'0,2' -> [0, 2]; None -> all k folds. Raises ValueError naming the bad entry."""
    if text is None:
        return list(range(k))
    folds = []
    for item in text.split(","):
        item = item.strip()
        if not item.lstrip("-").isdigit() or not 0 <= int(item) < k:
            raise ValueError(
                f"--folds-to-run: {item!r} is not a fold; expected integers in 0..{k - 1} "
                f"for data.folds={k}, e.g. --folds-to-run 0,1"
            )
        if int(item) in folds:
            raise ValueError(f"--folds-to-run: fold {item} is listed twice")
        folds.append(int(item))
    return folds


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def oof_summary(probs: np.ndarray, empty: np.ndarray | None, truth: np.ndarray, rule: str = "gate") -> dict:
    """Competition metric, empty-image accuracy, the false-empty breakdown and the all-empty baseline
    of OOF probabilities. probs (N, 101, 101) float, empty (N,) or None, truth (N, 101, 101) bool;
    `rule`: decode.empty_rule."""
    default = default_thresholds(empty, rule)  # what fold_loop.evaluate scores val_map with
    chosen, chosen_score = choose_thresholds(probs, empty, truth, rule=rule)
    truly_empty = ~truth.any(axis=(1, 2))  # (N,)

    def scored(th: Thresholds) -> dict:
        pred = binarize(probs, empty, th)
        predicted_empty = ~pred.any(axis=(1, 2))
        return {
            "thresholds": th.to_dict(),
            "metric": float(image_scores(truth, pred).mean()),
            "empty_accuracy": float((predicted_empty == truly_empty).mean()),
            "emptiness": emptiness(truth, pred),  # salt tiles called empty, per coverage class
        }

    out = {
        "tiles": len(truth),
        "truly_empty_fraction": float(truly_empty.mean()),
        "all_empty_baseline": float(image_scores(truth, np.zeros_like(truth)).mean()),
        "default": scored(default),
        "chosen": scored(chosen),
    }
    assert abs(out["chosen"]["metric"] - chosen_score) < 1e-9, "choose_thresholds score mismatch"
    if empty is not None:
        out["empty_head_accuracy"] = float(((empty > 0.5) == truly_empty).mean())
    return out


def write_submission(
    path: Path,
    members: list[Member],
    config,
    root: Path,
    th: Thresholds,
    device,
    deadline: float | None = None,
) -> dict:
    """Mean flip-TTA probabilities of `members` on the test tiles -> id,rle_mask; returns timings.

    With `deadline` (a time.perf_counter() value) the members not started by then are left out, the
    first one always predicted: order `members` so that any prefix is a fair ensemble."""
    import pandas as pd

    test = load_split(root, "test")
    used: list[Member] = []

    def built():
        """Each member's model, built when ensemble_probs reaches it, until the deadline."""
        for m in members:
            if used and deadline is not None and time.perf_counter() > deadline:
                return
            used.append(m)
            yield model_from_payload({"config": config.to_dict(), "state_dict": m.state}, device)

    start = time.perf_counter()
    probs, empty = ensemble_probs(built(), test.images, device)
    seconds = time.perf_counter() - start
    masks = binarize(probs, empty, th)
    frame = pd.DataFrame({"id": test.ids, "rle_mask": [rle_encode(m) for m in masks]})
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    return {
        "file": str(path),
        "tiles": len(test),
        "members": len(used),
        "seconds": seconds,
        "images_per_s": len(test) / seconds,
        "empty_fraction": float((~masks.any(axis=(1, 2))).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python bench/quality.py", __doc__, EXAMPLES)
    add_config_args(parser)
    parser.add_argument(
        "--folds-to-run",
        default=None,
        metavar="F,F,...",
        help="which of the K folds (--folds) to train and score, comma-separated 0-based indices, e.g. 0,2 "
        "(default: all K)",
    )
    parser.add_argument("--out", default="bench/quality.json", metavar="FILE", help="JSON results file")
    parser.add_argument(
        "--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument(
        "--submission", default=None, metavar="FILE", help="also predict the test tiles into this CSV"
    )
    args = parser.parse_args(argv)
    config = config_from_args(args)
    run_folds = parse_folds(args.folds_to_run, config.data.folds)
    device = pick_device(args.device)
    command = (
        shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", parser.prog, *argv])
    )

    root = resolve_data(args.data, config.data)
    data = load_split(root, "train")
    folds = make_folds(data.masks, config.data.folds, config.data.fold_seed)
    load_before = os.getloadavg()
    print(
        f"data {root}: {len(data)} tiles | folds {run_folds} of {config.data.folds} | device "
        f"{device_name(device)} | torch {torch.__version__} | load average {load_before[0]:.2f}",
        flush=True,
    )

    def report(metrics: dict, save) -> None:
        print(format_epoch(metrics), flush=True)

    results, start = [], time.perf_counter()
    for fold in run_folds:
        fold_start = time.perf_counter()
        result = train_fold(config, data, fold, report=report, folds=folds, device=device)
        wall = time.perf_counter() - fold_start
        print(
            f"fold {fold}: best val_map {result.best_score:.4f} at epoch {result.best_epoch} ({wall:.0f}s)",
            flush=True,
        )
        results.append((result, wall))
    total = time.perf_counter() - start

    rule = config.decode.empty_rule
    cv = cross_validate([(r.val_index, r.members) for r, _ in results], data.masks, rule=rule)
    truth = data.masks[cv["index"]].astype(bool)
    chosen = cv["variants"][cv["chosen"]]
    oof = oof_summary(chosen.probs, chosen.empty, truth, rule)
    best = cv["variants"]["best"]
    submission = None
    if args.submission and has_test(root):
        names = chosen.member_names  # per fold
        members = [
            r.members[n] for (r, _), fold_names in zip(results, names, strict=True) for n in fold_names
        ]
        submission = write_submission(Path(args.submission), members, config, root, chosen.thresholds, device)

    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "data": str(root),
        "device": device_name(device),
        "torch": torch.__version__,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "folds_run": run_folds,
        "folds": [
            {
                "fold": r.fold,
                "best_val_map": r.best_score,
                "best_epoch": r.best_epoch,
                "held_out": len(r.val_index),
                "wall_s": wall,
                "history": r.history,
            }
            for r, wall in results
        ],
        "submission_variant": chosen.name,
        "variants": {name: v.summary() for name, v in cv["variants"].items()},
        "oof": oof,  # of the submission variant
        "oof_best_epoch": oof_summary(best.probs, best.empty, truth, rule),  # optimistic
        "submission": submission,
        "wall_s_total": total,
        "config": config.to_dict(),
    }
    out = Path(args.out)
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")

    for name, v in cv["variants"].items():
        print(
            f"{'*' if name == chosen.name else ' '} {name:<14} members/fold {v.members_per_fold} | OOF "
            f"{v.oof_score_default_thresholds:.4f} default, {v.oof_score:.4f} chosen thresholds"
            + ("" if v.honest else " (optimistic: chosen on the held-out fold)")
        )
    d, c = oof["default"], oof["chosen"]
    print(
        f"* {chosen.name}: OOF over {oof['tiles']} tiles of folds {run_folds}: metric {d['metric']:.4f} at default thresholds "
        f"(empty acc {d['empty_accuracy']:.3f}) | {c['metric']:.4f} at chosen {c['thresholds']} "
        f"(empty acc {c['empty_accuracy']:.3f}) | all-empty baseline {oof['all_empty_baseline']:.4f}"
    )
    e = c["emptiness"]
    print(
        f"  at chosen thresholds: {e['salt_pred_empty']} of {e['salt_tiles']} salt tiles predicted empty "
        f"({e['false_empty_rate']:.1%}), {e['empty_pred_salt']} of {e['empty_tiles']} empty tiles given salt "
        f"({e['false_salt_rate']:.1%}); by class: "
        + ", ".join(f"{row['class']} {row['wrong']}/{row['tiles']}" for row in e["by_coverage"])
    )
    if submission:
        print(
            f"submission {submission['file']}: {submission['tiles']} test tiles, {submission['members']} "
            f"members, {submission['images_per_s']:.1f} img/s, {submission['empty_fraction']:.0%} empty"
        )
    print(
        f"wall {total:.0f}s total ({', '.join(f'fold {r.fold} {w:.0f}s' for r, w in results)}); "
        f"results in {out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
