"""The run folder as code: the name of every file and folder a run writes (`--out`), in one place,
grouped by who reads it: what users open, the machine state a resume reads, and diagnostics. Every
writer and reader takes the name from here."""

from __future__ import annotations

# -- what users open
SUBMISSION = "submission.csv"  # the ensemble's masks on the test tiles, in the competition's format
CV = "cv.json"  # per-fold and overall OOF of every ensemble variant, the chosen one, its thresholds
REPORT = "report"  # report/index.html: curves, OOF breakdowns, the worst tiles, the search's pictures
CONFIG = "config.json"  # the resolved config the run trained with
BEST_CONFIG = "best_config.json"  # a search: the best trial's config, to train again with
TRIALS = "trials.csv"  # a search: every trial, its parameters, state and score
ROUNDS = "rounds.json"  # pseudo-label rounds: each round's figures and the round submitted
MODELS = "models"  # ensemble members, models/fold_{F}_{member}.pt: what orchestrator.predict loads

# -- machine state (what a resume reads)
RAY = "ray"  # Ray Train's run state and checkpoints (without --storage)
TUNE = "tune"  # a search's Tune experiment and its trials' checkpoints (without --storage)
STUDY = "optuna.db"  # a search's Optuna study
FOLDS = "folds.csv"  # the fold of every tile, kept so a resume (and predict) splits the same way
FAILURE = "failure.json"  # a deterministic failure's reason (never retried)
FAILURES = "failures"  # a search: one such record per trial
OOF = "oof.npz"  # the chosen variant's out-of-fold probabilities
OOF_TRUTH = "oof_truth.npz"  # the truth masks and tiles the report's OOF pictures need
TEST_PROBS = "test_probs.npz"  # a round's ensemble probabilities on the test tiles (pseudo-labels)
PSEUDO_FROM = "pseudo_from.txt"  # a search's --pseudo-from run, so --resume keeps using it
TRACKING = "mlflow.json"  # which MLflow runs this folder's command logs to

# -- diagnostics
PROGRESS = "progress.jsonl"  # every epoch's fold metrics (the live view and the report read it)
LOGS = "logs"  # Ray's own output: driver.log, workers.log, driver-native.log
TENSORBOARD = "tensorboard"  # per-fold curves as TensorBoard event files


def member_file(fold: int, member: str) -> str:
    """An ensemble member's weights under MODELS (member: last, snap{epoch}, swa, best), the same file
    name for a k-fold run's chosen members and for salt_model.train's one fold."""
    return f"fold_{fold}_{member}.pt"
