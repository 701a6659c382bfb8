"""Runs on the driver once the folds are collected: cv.json, the score table, the OOF gallery, the
submission (orchestrator/submission.py) and the run report (orchestrator/run_report.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator import console
from orchestrator.collect import KFoldResult
from orchestrator.run_report import build as build_report
from orchestrator.run_report import save_oof_truth
from orchestrator.submission import predict_submission
from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.loading import SaltData, has_test, load_split
from salt_model.evaluation.pictures import oof_gallery
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.io import atomic_write_json


def write_cv(out: Path, result: KFoldResult, config: Config, extra: dict) -> dict:
    """cv.json: every variant's per-fold and overall OOF, the one the submission uses, its thresholds."""
    chosen = result.chosen
    summary = {
        "submission_variant": chosen.name,
        "submission_members": len(result.model_paths),
        "fold_scores": chosen.fold_scores,
        "mean_fold_score": float(np.mean(chosen.fold_scores)),
        "oof_score": chosen.oof_score,
        "oof_score_default_thresholds": chosen.oof_score_default_thresholds,
        "thresholds": chosen.thresholds.to_dict(),
        # salt tiles predicted empty and empty tiles given salt, per coverage class (salt_model.evaluation.error_analysis)
        "emptiness": chosen.extra.get("emptiness"),
        "best_epoch_fold_scores": result.scores,  # optimistic: each chosen on its own held-out fold
        "best_epochs": result.best_epochs,
        "variants": {name: v.summary() for name, v in result.cv["variants"].items()},
        **extra,
        "config": config.to_dict(),
    }
    atomic_write_json(out / run_folder.CV, summary)
    return summary


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
    """cv.json (with the data folder `root`), a score table, oof_gallery.png, and submission.csv when
    there are test tiles.

    The submission uses the variant collect_folds chose and the thresholds chosen on its own OOF;
    `probs_out` also keeps the ensemble's test probabilities (for the next pseudo-label round), and with
    `per_fold` each fold's own (pseudo.teacher=fold)."""
    truth = data.masks.astype(bool)
    # the data folder, absolute: orchestrator.predict's default --data
    summary = write_cv(out, result, config, {"data": str(Path(root).resolve()), **(extra or {})})
    save_oof_truth(out, data.ids, data.images, truth)
    print_cv_table(summary)
    pred = binarize(result.oof_probs, result.oof_empty, Thresholds(**summary["thresholds"]))
    print(
        f"OOF predictions vs truth (worst, random, best tiles): {oof_gallery(out / run_folder.OOF_GALLERY, data.images, truth, pred, data.ids)}"
    )
    if has_test(root):
        predict_submission(
            out, load_split(root, "test"), summary["thresholds"], out / run_folder.SUBMISSION,
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
