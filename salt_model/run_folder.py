"""The run folder as code: the name of every file and folder a run writes (`--out`), in one place,
grouped by who reads it. What users open sits at the top of the folder; the machine state a resume
reads is under state/, the diagnostics under logs/. Every writer and reader takes the name from here.
"""

from __future__ import annotations

from pathlib import Path

STATE = "state"  # machine state: read by a resume, by predict and by the report, rarely by a person
LOGS = "logs"  # diagnostics: what to read when a run goes wrong or to watch one: logs, curves, progress

# -- what users open
SUBMISSION = "submission.csv"  # the ensemble's masks on the test tiles, in the competition's format
CV = "cv.json"  # per-fold and overall OOF of every ensemble variant, the chosen one, its thresholds
REPORT = "report"  # report/index.html: curves, OOF breakdowns, the worst tiles, the search's pictures
CONFIG = "config.json"  # the resolved config the run trained with
BEST_CONFIG = "best_config.json"  # a search: the best trial's config, to train again with
TRIALS = "trials.csv"  # a search: every trial, its parameters, state and score
ROUNDS = "rounds.json"  # pseudo-label rounds: each round's figures and the round submitted
ROUND_0_SUBMISSION = "round_0_submission.csv"  # pseudo-label rounds: round 0's own submission
MODELS = "models"  # ensemble members, models/fold_{F}_{member}.pt: what orchestrator.predict loads
OOF_GALLERY = "oof_gallery.png"  # OOF predictions vs truth: the worst, random and best tiles

# -- machine state (what a resume reads), under state/
RAY = f"{STATE}/ray"  # Ray Train's run state and checkpoints (without --storage)
TUNE = f"{STATE}/tune"  # a search's Tune experiment (without --storage)
TRIAL_RUNS = f"{STATE}/trials"  # a search's trials' k-fold runs and checkpoints (without --storage)
STUDY = f"{STATE}/optuna.db"  # a search's Optuna study
FOLDS = f"{STATE}/folds.csv"  # the fold of every tile, kept so a resume (and predict) splits the same way
FAILURE = f"{STATE}/failure.json"  # a deterministic failure's reason (never retried)
FAILURES = f"{STATE}/failures"  # a search: one such record per trial
OOF = f"{STATE}/oof.npz"  # the chosen variant's out-of-fold probabilities
OOF_TRUTH = f"{STATE}/oof_truth.npz"  # the truth masks and tiles the report's OOF pictures need
TEST_PROBS = f"{STATE}/test_probs.npz"  # a round's ensemble probabilities on the test tiles (pseudo-labels)
PSEUDO_FROM = f"{STATE}/pseudo_from.txt"  # a search's --pseudo-from run, so --resume keeps using it
TRACKING = f"{STATE}/mlflow.json"  # which MLflow runs this folder's command logs to
PSEUDO = f"{STATE}/pseudo.npz"  # a pseudo round's kept test tiles and masks (teacher: ensemble)

# -- diagnostics, under logs/ (with Ray's own output: driver.log, workers.log, driver-native.log)
PROGRESS = f"{LOGS}/progress.jsonl"  # every epoch's fold metrics (the live view and the report read it)
TENSORBOARD = f"{LOGS}/tensorboard"  # per-fold curves as TensorBoard event files


def fold_result(fold: int) -> str:
    """salt_model.train: one fold's scores, members and epoch history (what users open)."""
    return f"result_fold_{fold}.json"


def fold_oof(fold: int) -> str:
    """salt_model.train: one fold's out-of-fold probabilities of every member (machine state: predict
    chooses a fold folder's thresholds on them). Its resumable checkpoint is STATE/fold_{F}.pt."""
    return f"{STATE}/oof_fold_{fold}.npz"


def round_folder(r: int) -> str:
    """Pseudo-label round r >= 1's own run folder (round 0 is the run folder itself)."""
    return f"round_{r}"


def pseudo_fold(fold: int) -> str:
    """A pseudo round's tiles labelled by fold `fold`'s own members (teacher: fold)."""
    return f"{STATE}/pseudo_fold_{fold}.npz"


def member_file(fold: int, member: str) -> str:
    """An ensemble member's weights under MODELS (member: last, snap{epoch}, swa, best), the same file
    name for a k-fold run's chosen members and for salt_model.train's one fold."""
    return f"fold_{fold}_{member}.pt"


def parse_member_file(name: str) -> tuple[int, str]:
    """member_file's inverse: "fold_2_snap8.pt" -> (2, "snap8")."""
    _, fold, member = name.removesuffix(".pt").split("_", 2)
    return int(fold), member


# what a run folder written before state/ and logs/ existed kept at its top level
_OLD_TOP_LEVEL = (
    "ray",
    "tune",
    "trials",
    "optuna.db",
    "folds.csv",
    "oof.npz",
    "test_probs.npz",
    "progress.jsonl",
)


def check_layout(out: str | Path) -> None:
    """Refuses (ValueError) a run folder in the older flat layout, which this version would neither
    resume nor read, with the moves that bring it up to date."""
    out = Path(out)
    old = [name for name in _OLD_TOP_LEVEL if (out / name).exists()]
    old += sorted(p.name for p in out.glob("fold_*.pt"))  # salt_model.train's checkpoint
    if old:
        raise ValueError(
            f"run folder {out}: {', '.join(old)} at its top level is the older layout; move the machine state "
            f"(ray/ tune/ trials/ optuna.db folds.csv failure.json failures/ oof*.npz test_probs.npz "
            f"pseudo_from.txt mlflow.json fold_*.pt) into {out / STATE}/ and progress.jsonl, tensorboard/ into {out / LOGS}/, "
            "or use a new --out"
        )
