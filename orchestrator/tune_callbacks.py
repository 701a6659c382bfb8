"""Runs on the driver, in Tune's loop: the search's Tune callbacks, its live view (ProgressTable) and the
pruning of a finished trial's checkpoints (CheckpointPruner).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ray import tune

from orchestrator import console
from orchestrator.collect import prune_run_checkpoints
from orchestrator.search import METRIC, InRunFolder
from orchestrator.search_space import trial_run_name
from orchestrator.storage import join
from orchestrator.tensorboard import FoldCurves
from salt_model import run_folder


class ProgressTable(InRunFolder, tune.Callback):
    """The search's live view: each trial's folds per epoch on the console, in OUT/logs/progress.jsonl (one
    line per trial epoch) and in OUT/logs/tensorboard/trial-ID/fold_{r}; pruned and failed trials in one line."""

    def __init__(self, epochs: int, folds: int, out: Path):
        self.epochs, self.folds, self.out = epochs, folds, Path(out)
        self.best = -math.inf
        self.curves: dict[str, FoldCurves] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial.config
        view = console.view()
        if view is not None:
            view.start(trial.trial_id, f"({cfg['schedule']}, switch {cfg['loss_switch_epoch']}) ")
        console.say(f"trial {trial.trial_id} started: {format_params(cfg)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.best = max(self.best, result.get(METRIC, -math.inf))
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "config"}
        progress = self.out / run_folder.PROGRESS
        progress.parent.mkdir(parents=True, exist_ok=True)
        with open(progress, "a") as f:
            line = {
                "trial_id": trial.trial_id,
                "study_trial": trial.config.get("study_trial"),
                "time": time.time(),
            }
            f.write(json.dumps({**line, **metrics}) + "\n")
        if trial.trial_id not in self.curves:
            self.curves[trial.trial_id] = FoldCurves(
                self.out / run_folder.TENSORBOARD / f"trial-{trial.trial_id}", self.folds
            )
        self.curves[trial.trial_id].add(result)
        view = console.view()
        if view is not None:
            view.update(trial.trial_id, metrics)

    def _end(self, trial, message: str, error: bool = False):
        if trial.trial_id in self.curves:
            self.curves.pop(trial.trial_id).close()
        view = console.view()
        if view is not None:
            view.finish(trial.trial_id)
        console.say(message, error=error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch", 0)
        state = "finished" if epoch >= self.epochs else f"pruned by ASHA after epoch {epoch}/{self.epochs}"
        self._end(
            trial,
            f"trial {trial.trial_id} {state}: {METRIC} {last.get(METRIC, float('nan')):.4f} "
            f"(search best {self.best:.4f})",
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        line = console.error_line(trial)
        reason = f": {line[:300]}" if line else ""
        self._end(
            trial,
            f"error: trial {trial.trial_id} FAILED{reason} (traceback: {console.error_file(trial)})",
            error=True,
        )


def format_params(cfg: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))


class CheckpointPruner(tune.Callback):
    """A stopped or finished trial keeps only its last k-fold checkpoint, without optimizer state:
    all that its ensemble needs (train.keep_checkpoints=0 keeps everything). Errored trials are left
    whole, since --resume retries them. `trials_root` is a local path or a storage URI (s3://...):
    pruned through the same pyarrow filesystem either way (Ray Train's own num_to_keep only bounds
    a run while it trains)."""

    def __init__(self, trials_root: str, k: int):
        self.root, self.k = str(trials_root), k

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_dir = join(self.root, trial_run_name(trial.config["study_trial"]))
        try:
            kept, freed = prune_run_checkpoints(run_dir, self.k)
        except (OSError, ValueError) as err:  # e.g. a checkpoint still being written when ASHA stopped it
            print(f"{trial.trial_id:<14}checkpoints left as they are ({err})", flush=True)
            return
        if kept is not None:
            name = str(kept).rsplit("/", 1)[-1]
            print(f"{trial.trial_id:<14}kept {name} ({freed / 1e6:.0f} MB freed)", flush=True)
