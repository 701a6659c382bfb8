"""Runs in a Tune trial's actor (on the head node, beside optuna.db): `kfold_trial`, one search trial as
a k-fold Ray Train run, and what it needs. TrialReport runs in that run's Train controller; the
driver's searcher reads FailureRecords too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.callbacks import FailureNotice, FatalReason, fatal_reason, merge_fold_metrics
from orchestrator.faults import RunFailed, trial_fault
from orchestrator.kfold import fit_folds, make_trainer
from orchestrator.runtime import FoldResources
from orchestrator.search import METRIC, InRunFolder
from orchestrator.search_space import trial_config, trial_run_name
from orchestrator.storage import join
from orchestrator.study import load_run_study
from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.loading import SaltData
from salt_model.evaluation.thresholds import Thresholds
from salt_model.training.cadence import asha_rungs
from salt_model.training.pseudo_labels import PseudoLabels, select_pseudo_labels


class TrialReport(TuneReportCallback):
    """Forwards each evaluated epoch's merged fold metrics (the fold means and each fold's own) to Tune;
    Ray's TuneReportCallback forwards what it is given first, here the merge. Not forwarded: a
    deterministic failure's (FatalReason keeps it) and an epoch without evaluation (train.eval_every):
    Tune requires the metric in every result, and ASHA's rungs are always evaluated (the trial passes
    them to its folds)."""

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" not in metrics[0] and "val_map" in metrics[0]:
            super().after_report(run_context, [merge_fold_metrics(metrics)], checkpoint)


def failure_file(out: Path, number: int) -> Path:
    """Where the k-fold run of Optuna trial `number` records a deterministic failure."""
    return out / run_folder.FAILURES / f"{trial_run_name(number)}.json"


def failure_uri(run_storage: str | None, number: int) -> str | None:
    """The copy of `failure_file` in STORAGE/run (None without --storage)."""
    return join(run_storage, run_folder.FAILURES, f"{trial_run_name(number)}.json") if run_storage else None


@dataclasses.dataclass
class FailureRecords(InRunFolder):
    """The searcher's `failure_reason`: a trial's recorded deterministic failure, from OUT or STORAGE."""

    out: Path
    run_storage: str | None = None

    def __call__(self, number: int) -> str | None:
        return fatal_reason(failure_file(self.out, number), failure_uri(self.run_storage, number))


def pruned_at(out: Path, number: int) -> tuple[int, float] | None:
    """(epoch, value) of the last report before the study recorded trial `number` PRUNED, if it did.

    The study lives in OUT/state/optuna.db beside the trial drivers (they run on the head node)."""
    study = load_run_study(out)
    if number >= len(study.trials):
        return None
    frozen = study.trials[number]
    if frozen.state != optuna.trial.TrialState.PRUNED or not frozen.intermediate_values:
        return None
    epoch = max(frozen.intermediate_values)
    return epoch, frozen.intermediate_values[epoch]


def kfold_trial(
    params: dict,
    base: dict,
    data_refs: list,
    folds: list,
    resources: dict,
    storage: str,
    failures: dict,
    out: str,
    pseudo_refs: list | None = None,
    run_storage: str | None = None,
) -> None:
    """One Tune trial: a k-fold Ray Train run whose rank-0 reports (fold means) go to Tune.

    `pseudo_refs`: [ref of PseudoSource] with --pseudo-from; the trial picks its tiles by its own rule.
    `run_storage`: STORAGE/run with --storage, where a deterministic failure's record is copied.
    `failures`: the k-fold run's failure budget (session.failure_args).

    The run is named after the Optuna trial number, so a trial resumed or adopted after a driver kill
    continues the same k-fold checkpoints. A deterministic failure (faults.RunFailed) is raised at
    once, and again at once if --resume restarts the trial: it is never retrained.
    """
    number = params["study_trial"]
    failed, failed_uri = failure_file(Path(out), number), failure_uri(run_storage, number)
    reason = FailureRecords(Path(out), run_storage)(number)  # also after a resume into a new --out
    if reason is not None:
        raise RunFailed(f"trial {number} failed before: {reason}")
    try:
        config = trial_config(Config.from_dict(base, source="base config"), params)
    except ValueError as err:  # a sampled value the config refuses: deterministic, recorded
        FatalReason(str(failed), failed_uri).record({"fatal_error": f"config: {err}"})
        raise RunFailed(f"trial {number}: config: {err}") from None
    pruned = pruned_at(Path(out), number)
    if pruned is not None:
        # Resumed after a driver kill, but the study already has it PRUNED (ASHA stopped it after
        # Tune's last save): it trains no further and keeps its results. Cutting train.epochs to the
        # pruned epoch instead made the resume check refuse the checkpoint, and the trial FAILED.
        # Its last report goes to Tune again (marked, like a finished run's): Tune refuses a trial that
        # ends without its metric.
        epoch, value = pruned
        tune.report({METRIC: value, "epoch": epoch, "rereport": True})
        return
    run_name = trial_run_name(number)
    trainer = make_trainer(
        config,
        data_refs[0],
        np.asarray(folds),
        FoldResources(**resources),
        storage,
        run_name=run_name,
        **failures,
        callbacks=[TrialReport(), FailureNotice(), FatalReason(str(failed), failed_uri)],
        inject_failure=trial_fault(number),  # test hook (tests/conftest.py, test_faults_driver.py)
        trial=tune.get_context().get_trial_id(),
        eval_at=tuple(asha_rungs(config.search, config.train.epochs)),  # ASHA compares trials there
        pseudo_ref=None if pseudo_refs is None else ray.put(ray.get(pseudo_refs[0]).labels(config).data),
    )
    fit_folds(
        trainer,
        config,
        FoldResources(**resources),
        failures["placement_timeout_s"],
        failed,
        f"trial {number}",
    )


@dataclasses.dataclass
class PseudoSource:
    """A finished run's ensemble on the test tiles, for the trials' pseudo-labels (--pseudo-from)."""

    test: SaltData
    probs: np.ndarray
    empty: np.ndarray | None
    thresholds: dict

    def labels(self, config: Config) -> PseudoLabels:
        p = config.pseudo
        return select_pseudo_labels(
            self.test, self.probs, self.empty, Thresholds(**self.thresholds), p.low, p.high, p.min_fraction
        )
