"""Pseudo-label rounds of `orchestrator.train` (config section `pseudo`, salt_model/training/pseudo_labels.py).

Round 0 is the ordinary k-fold run, its outputs in the run folder itself (so a finished run can be
given more rounds later: the same command with `--set pseudo.rounds=1` keeps round 0 and trains round 1).
Round r > 0 lives in `OUT/round_{r}/`:

1. round r-1's ensemble predicts the test tiles (the aggregation step on Ray) into its
   `test_probs.npz`, unless it already did; with `pseudo.teacher: fold` (the default) each fold's own
   members' mean is saved too;
2. the confident tiles, with the masks round r-1 would submit, go to `round_{r}/state/pseudo.npz`: with
   `pseudo.teacher: ensemble` chosen and labelled by the mean of all k folds, the same tiles for every
   fold; with `fold`, fold r's tiles (`round_{r}/state/pseudo_fold_{f}.npz`) by fold r's own members only.
   The ensemble teacher lets fold r learn from models that trained on fold r's held-out tiles, which
   makes round r's OOF optimistic; the fold teacher never does (only the three OOF-chosen thresholds
   saw every fold);
3. all k folds train again on the same split with those tiles added to each fold's training part
   (never to a held-out fold: OOF stays a score on the real labels), from scratch or from round r-1's
   weights (`pseudo.init`), with their own Ray run name and checkpoints, so a killed round resumes
   in the epoch where it stopped;
4. `round_{r}/` gets the usual outputs (cv.json, oof.npz, models/, submission.csv, report/).

A finished round (its cv.json written for the same config) is never trained again. At the end
`OUT/rounds.json` and the `pseudo` entry of `OUT/cv.json` list every round's OOF on the labelled
tiles, the tiles kept and the rule, and which round `OUT/submission.csv` now holds (the best by OOF,
or the last: `pseudo.submit`). Round 0's own submission stays as `OUT/round_0_submission.csv`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from orchestrator.submission import predict_submission
from salt_model import run_folder
from salt_model.config import Config, PseudoConfig, config_changes
from salt_model.data.loading import SaltData
from salt_model.evaluation.inference import read_fold_model
from salt_model.evaluation.thresholds import Thresholds
from salt_model.io import atomic_write, atomic_write_json
from salt_model.training.pseudo_labels import PseudoLabels, select_pseudo_labels

RoundLabels = PseudoLabels | list[PseudoLabels]  # one set for every fold, or fold r's at r

TEST_PROBS = run_folder.TEST_PROBS
# a fold's member whose weights a round started with pseudo.init=previous takes, in this order
INIT_MEMBERS = ("last", "swa")


def round_dir(out: Path, r: int) -> Path:
    return out if r == 0 else out / run_folder.round_folder(r)


def round_config(config: Config, r: int) -> Config:
    """What round r trains with: round 0 uses no pseudo-labels, so its config keeps the section's
    defaults (changing the rule later never invalidates a finished round 0); a later round trains
    `pseudo.epochs` epochs when set, its last (train.epochs - train.loss_switch_epoch) with Lovasz."""
    if r == 0:
        return dataclasses.replace(config, pseudo=PseudoConfig())
    epochs, train = config.pseudo.epochs, config.train
    if not epochs or epochs == train.epochs:
        return config
    lovasz = train.epochs - train.loss_switch_epoch
    try:
        resized = dataclasses.replace(train, epochs=epochs, loss_switch_epoch=max(0, epochs - lovasz))
        return dataclasses.replace(config, train=resized)
    except ValueError as err:
        raise ValueError(
            f"pseudo.epochs={epochs}: a round of {epochs} epochs does not fit the config: {err}"
        ) from None


def finished(folder: Path, config: Config) -> dict | None:
    """The round's cv.json when it finished with this config (and wrote its submission), else None.
    Pseudo rounds always have test tiles (orchestrator.train refuses them otherwise)."""
    cv_path = folder / run_folder.CV
    if not cv_path.exists() or not (folder / run_folder.SUBMISSION).exists():
        return None
    summary = json.loads(cv_path.read_text())
    raw = summary["config"]
    if raw.get("pseudo", {}).get("rounds") and "teacher" not in raw["pseudo"]:
        raw = {**raw, "pseudo": {**raw["pseudo"], "teacher": "ensemble"}}  # before pseudo.teacher existed
    if config_changes(Config.from_dict(raw, source=str(cv_path)), config):
        return None  # trained with another config: run_kfold's resume check says what differs
    return summary


def test_probabilities(
    folder: Path, test: SaltData, summary: dict, per_fold: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Round `folder`'s ensemble probabilities on the test tiles ((N, 101, 101), (N,) or None); with
    `per_fold` each fold's own members' mean instead ((N, k, 101, 101), (N, k) or None). Predicted now
    (and its submission written again, the same rows) when the round has not saved them yet."""
    path = folder / TEST_PROBS
    if path.exists() and per_fold:
        with np.load(path, allow_pickle=False) as saved:
            missing = "fold_probs" not in saved.files
        if missing:  # saved for the ensemble teacher only
            path.unlink()
    if not path.exists():
        print(f"{folder}: predicting the test tiles for the next round's pseudo-labels")
        predict_submission(
            folder,
            test,
            summary["thresholds"],
            folder / run_folder.SUBMISSION,
            probs_out=path,
            per_fold=per_fold,
        )
    with np.load(path, allow_pickle=False) as saved:
        if not np.array_equal(saved["ids"], test.ids):
            raise ValueError(f"{path}: its ids are not the test split's; delete it to predict again")
        if per_fold:
            return saved["fold_probs"], saved.get("fold_empty", None)
        return saved["probs"], saved.get("empty", None)


def pseudo_labels(out: Path, r: int, config: Config, test: SaltData, previous: dict) -> RoundLabels:
    """Round r's pseudo-labelled tiles (pseudo.teacher=fold: a list, fold f's at f): kept from an
    interrupted attempt, else chosen now."""
    p, k = config.pseudo, config.data.folds
    names = [run_folder.PSEUDO] if p.teacher == "ensemble" else [run_folder.pseudo_fold(f) for f in range(k)]
    paths = [round_dir(out, r) / name for name in names]
    if all(path.exists() for path in paths):
        labels = [PseudoLabels.load(path) for path in paths]
        for path, one in zip(paths, labels, strict=True):
            _check_rule(path, one, p, r)
        return labels[0] if p.teacher == "ensemble" else labels
    thresholds = Thresholds(**previous["thresholds"])
    rule = (p.low, p.high, p.min_fraction)
    if p.teacher == "ensemble":
        probs, empty = test_probabilities(round_dir(out, r - 1), test, previous)
        labels = [select_pseudo_labels(test, probs, empty, thresholds, *rule, teacher="ensemble")]
    else:
        probs, empty = test_probabilities(round_dir(out, r - 1), test, previous, per_fold=True)
        if probs.shape[1] != k:
            raise ValueError(
                f"{round_dir(out, r - 1)}: {probs.shape[1]} folds' test probabilities, expected {k}"
            )
        labels = [
            select_pseudo_labels(
                test, probs[:, f], None if empty is None else empty[:, f], thresholds, *rule, teacher="fold"
            )
            for f in range(k)
        ]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, one in zip(paths, labels, strict=True):
        one.save(path)
    return labels[0] if p.teacher == "ensemble" else labels


def _check_rule(path: Path, labels: PseudoLabels, p: PseudoConfig, r: int) -> None:
    """A pseudo file kept from an interrupted attempt must have been chosen with this config's rule."""
    rule = {k: labels.rule.get(k, "ensemble") for k in ("low", "high", "min_fraction", "teacher")}
    expected = {"low": p.low, "high": p.high, "min_fraction": p.min_fraction, "teacher": p.teacher}
    if rule != expected:
        raise ValueError(
            f"{path} was chosen with {rule}, but the config says {expected}; use a new --out "
            f"(or delete {path.parent} to redo round {r})"
        )


def labels_summary(labels: RoundLabels) -> dict:
    """What rounds.json says about a round's pseudo-labels; with the fold teacher the per-fold counts
    and their means (`kept`, `kept_with_salt`, `kept_fraction`)."""
    if isinstance(labels, PseudoLabels):
        return labels.summary()
    per_fold = [one.summary() for one in labels]
    return {
        **per_fold[0],
        "kept": round(float(np.mean([s["kept"] for s in per_fold]))),
        "kept_fraction": float(np.mean([s["kept_fraction"] for s in per_fold])),
        "kept_with_salt": round(float(np.mean([s["kept_with_salt"] for s in per_fold]))),
        "kept_per_fold": [s["kept"] for s in per_fold],
        "kept_with_salt_per_fold": [s["kept_with_salt"] for s in per_fold],
    }


def training_tiles(labels: RoundLabels) -> SaltData | list[SaltData]:
    """What run_kfold adds to the folds' training parts: one SaltData, or fold r's at r."""
    return labels.data if isinstance(labels, PseudoLabels) else [one.data for one in labels]


def previous_weights(folder: Path, k: int) -> list[dict]:
    """Each fold's start weights for pseudo.init=previous: its last-epoch (or SWA) member of `folder`."""
    states = []
    for fold in range(k):
        paths = [folder / run_folder.MODELS / f"fold_{fold}_{m}.pt" for m in INIT_MEMBERS]
        paths += sorted((folder / run_folder.MODELS).glob(f"fold_{fold}_*.pt"))
        path = next((p for p in paths if p.exists()), None)
        if path is None:
            raise ValueError(f"{folder / 'models'}: no model of fold {fold} to start round from")
        states.append(read_fold_model(path)["state_dict"])
    return states


def round_entry(r: int, summary: dict, labels: RoundLabels | None) -> dict:
    return {
        "round": r,
        "folder": "." if r == 0 else run_folder.round_folder(r),
        "oof_score": summary["oof_score"],  # on the labelled tiles only
        "oof_score_default_thresholds": summary["oof_score_default_thresholds"],
        "submission_variant": summary["submission_variant"],
        "thresholds": summary["thresholds"],
        "pseudo": None if labels is None else labels_summary(labels),
    }


def choose_round(entries: list[dict], rule: str) -> int:
    """The round whose submission the run keeps: the best OOF on labelled tiles, or the last."""
    if rule == "last":
        return entries[-1]["round"]
    return max(entries, key=lambda e: (e["oof_score"], -e["round"]))["round"]


def write_rounds(out: Path, entries: list[dict], config: Config) -> dict:
    """OUT/rounds.json, the `pseudo` entry of OUT/cv.json, and OUT/submission.csv from the chosen round."""
    chosen = choose_round(entries, config.pseudo.submit)
    summary = {
        "rounds": entries,
        "submission_round": chosen,
        "submission_rule": config.pseudo.submit,
        "why": (
            "best OOF competition metric on the labelled tiles"
            if config.pseudo.submit == "best"
            else "the last round (pseudo.submit=last)"
        ),
    }
    atomic_write_json(out / run_folder.ROUNDS, summary)
    cv_path = out / run_folder.CV
    cv = json.loads(cv_path.read_text())
    cv["pseudo"] = summary
    atomic_write_json(cv_path, cv)
    keep = out / run_folder.ROUND_0_SUBMISSION
    if not keep.exists():
        atomic_write(keep, lambda tmp: shutil.copyfile(out / run_folder.SUBMISSION, tmp))
    source = keep if chosen == 0 else round_dir(out, chosen) / run_folder.SUBMISSION
    atomic_write(out / run_folder.SUBMISSION, lambda tmp: shutil.copyfile(source, tmp))
    return summary
