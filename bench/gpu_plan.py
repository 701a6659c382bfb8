"""How many epochs of all k folds fit the GPU run's training window, and the recipe scaled to them.

Pure functions of the measured figures (bench/gpu_bench.py) and the config, so the plan is tested on
CPU. The estimate, per epoch of all k folds at once on one GPU:

    k * n_train / R_train  +  k * n_val / R_eval  +  EPOCH_OVERHEAD_S

R_train, the k fold processes' training img/s together, is the smaller of k times one process's
loader-fed rate and the best single-process model-step rate at any batch size: k processes time-share
the GPU, which fills the gaps that launches and the loader leave in one process, but never runs faster
than a batch large enough to saturate it. R_eval is one process's flip-TTA inference rate (the k
evaluations are counted as if one after another). The recipe is scaled as bench/RESULTS.md says:
train.epochs, the loss switch, the cycle length and the SWA window together, the cycle count kept.
"""

from __future__ import annotations

import math

from salt_model.config import Config
from salt_model.training.schedules import cycle_end_epochs

EPOCH_OVERHEAD_S = 2.0  # per epoch: the held-out loss and metric on the CPU, the SWA weight copy
STARTUP_S = 30.0  # a fold process: torch + CUDA start, reading the tiles, cuDNN autotuning
SAFETY = 0.85  # the estimate is for k processes it never measured together
COLLECT_S = 15.0  # reading k members files and the OOF arrays back
SEARCH_SCORES_PER_VARIANT = 84  # choose_thresholds: 2 rounds over 25 pixel + 9 area + 8 empty values


def training_rate(pipeline_img_s: float, best_step_img_s: float, k: int) -> float:
    """The k folds' training img/s together on one GPU (see the module docstring)."""
    return min(k * pipeline_img_s, best_step_img_s)


def epoch_seconds(n_tiles: int, k: int, train_img_s: float, eval_tiles_s: float) -> float:
    """Seconds for one epoch of all k folds (each trains n_tiles - n_tiles // k, holds out n_tiles // k)."""
    n_val = n_tiles // k
    return k * (n_tiles - n_val) / train_img_s + k * n_val / eval_tiles_s + EPOCH_OVERHEAD_S


def cycles_of(config: Config) -> int:
    """The recipe's number of lr cycles (cosine/cyclic), 1 for other schedules."""
    if config.schedule.name not in ("cosine", "cyclic"):
        return 1
    return max(1, round(config.train.epochs / config.schedule.cycle_epochs))


def fit_epochs(window_s: float, epoch_s: float, cycles: int, max_epochs: int) -> int:
    """Epochs that fit `window_s` at `epoch_s` each (one kept spare for SWA and checkpoints), as a
    multiple of `cycles` when at least one full set of cycles fits; at least 1, at most max_epochs."""
    epochs = min(max_epochs, math.floor(window_s * SAFETY / epoch_s) - 1)
    if epochs >= cycles:
        epochs -= epochs % cycles
    return max(1, epochs)


def scaled_recipe(config: Config, epochs: int) -> dict:
    """Overrides that shrink (or keep) the recipe to `epochs`: the loss switch, the lr cycle length, the
    SWA window and the warm-up scale with the epochs; snapshots are kept while their cycles fit."""
    t, s = config.train, config.schedule
    factor = epochs / t.epochs
    cycles = cycles_of(config)
    out = {
        "train.epochs": epochs,
        "train.loss_switch_epoch": min(epochs, round(t.loss_switch_epoch * factor)),
        "train.swa_epochs": min(epochs, round(t.swa_epochs * factor)),
        "train.checkpoint_every": max(1, epochs // 4),
        "schedule.warmup_epochs": min(s.warmup_epochs, epochs / 4),
    }
    if s.name in ("cosine", "cyclic"):
        if epochs >= cycles:
            out["schedule.cycle_epochs"] = epochs / cycles
        else:  # fewer epochs than cycles: one cycle over the whole run
            out["schedule.cycle_epochs"] = float(epochs)
        scaled = config.with_overrides({"train.epochs": epochs, "train.snapshots": 0, **out})
        out["train.snapshots"] = min(t.snapshots, len(cycle_end_epochs(epochs, scaled.schedule)))
    return out


def variants_count(config: Config) -> int:
    """The ensemble variants cross_validate will score: best, last, and snapshots / swa / both."""
    snaps, swa = config.train.snapshots > 0, config.train.swa_epochs > 0
    return 2 + snaps + swa + (snaps and swa)


def members_per_fold(config: Config) -> int:
    """The most members one fold can give the submission (snapshots and SWA)."""
    return max(1, config.train.snapshots + (config.train.swa_epochs > 0))


def post_seconds(config: Config, n_test: int, score_pass_s: float, eval_tiles_s: float) -> float:
    """Collecting the folds, the OOF threshold search of every variant, and the test prediction."""
    k = config.data.folds
    search = variants_count(config) * SEARCH_SCORES_PER_VARIANT * score_pass_s
    predict = k * members_per_fold(config) * n_test / eval_tiles_s
    return COLLECT_S + 1.2 * search + predict
