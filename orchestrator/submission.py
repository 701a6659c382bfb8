"""Runs on the driver; the ensemble itself runs in Ray Data actors on the cluster (EnsemblePredictor):
every member of every fold averaged on the test tiles, as submission.csv (`python -m orchestrator.predict
--help` tells how). orchestrator.train, orchestrator.tune, the pseudo-label rounds and orchestrator.predict
use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from orchestrator.capacity import Capacity, cluster_capacity
from orchestrator.faults import RunFailed
from salt_model import run_folder
from salt_model.data.loading import SaltData
from salt_model.data.rle import rle_encode
from salt_model.device import pick_device
from salt_model.evaluation.inference import ensemble_probs, model_from_payload, read_fold_model
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.io import atomic_savez, atomic_write


class EnsemblePredictor:
    """A Ray Data actor holding every member of every fold; batch of tiles in, ids and RLE masks out."""

    def __init__(
        self,
        payloads_ref: list,
        thresholds: dict,
        batch_size: int,
        with_probs: bool = False,
        per_fold: bool = False,
    ):
        import torch

        payloads = ray.get(payloads_ref[0])  # the ref travels inside a list so Ray does not inline it
        self.device = pick_device(None)
        if self.device.type == "cpu":
            torch.set_num_threads(
                max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
            )
        self.models = [model_from_payload(p, self.device) for p in payloads]
        self.folds = [int(p["fold"]) for p in payloads]
        self.thresholds = Thresholds(**thresholds)
        self.batch_size = batch_size
        self.with_probs = with_probs  # also return the mean probabilities (pseudo-label rounds)
        self.per_fold = per_fold  # and each fold's own mean

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.stack(batch["image"]).astype(np.uint8)  # (B, 101, 101)
        folds = self.folds if self.per_fold else None
        probs, empty, *by_fold = ensemble_probs(self.models, images, self.device, self.batch_size, folds)
        masks = binarize(probs, empty, self.thresholds)
        rows = {
            "id": np.asarray(batch["id"]),
            "rle_mask": np.asarray([rle_encode(m) for m in masks], dtype=object),
            "area": masks.sum(axis=(1, 2)),
        }
        if self.with_probs:
            rows["probs"] = probs
            rows["empty"] = np.full(len(probs), np.nan, np.float32) if empty is None else empty
        if by_fold:
            fold_probs, fold_empty = by_fold
            rows["fold_probs"] = fold_probs  # (B, k, 101, 101)
            rows["fold_empty"] = (
                np.full(fold_probs.shape[:2], np.nan, np.float32) if fold_empty is None else fold_empty
            )
        return rows


def load_models(run: Path) -> list[dict]:
    """Every member file in RUN/models; as many as cv.json says the submission uses, when it says."""
    paths = sorted((run / run_folder.MODELS).glob("fold_*.pt"))
    if not paths:
        raise ValueError(
            f"run folder {run}: no fold models in {run / 'models'}; train first "
            "(python -m orchestrator.train ... --out RUN)"
        )
    cv = run / run_folder.CV
    expected = json.loads(cv.read_text()).get("submission_members") if cv.exists() else None
    if expected is not None and expected != len(paths):
        raise ValueError(
            f"run folder {run}: {len(paths)} member files in {run / 'models'} but cv.json's "
            f"submission uses {expected}; rerun the training command to rewrite them"
        )
    return [read_fold_model(p) for p in paths]


def actor_resources(concurrency: int | None, capacity: Capacity | None = None) -> tuple[float, float, int]:
    """(GPUs, CPUs, count) of the ensemble actors. On a cluster that can have GPU nodes (even with none
    up now: the autoscaler adds one) each actor takes a GPU, one per GPU up now (at least one);
    else the CPUs are shared among actors. A request no node can hold is an error here."""
    capacity = capacity or cluster_capacity()
    up = ray.cluster_resources()
    if capacity.node_type_with("GPU") is not None and capacity.max_per_node("GPU") >= 1:
        count = concurrency or max(1, int(up.get("GPU", 0)))
        return 1.0, 1.0, count
    cpus = max(capacity.max_per_node("CPU"), 1.0)
    count = concurrency or max(1, int(up.get("CPU", cpus)) // 2)
    per_actor = max(1.0, float(int(up.get("CPU", cpus)) // count))
    if per_actor > capacity.max_per_node("CPU"):
        raise ValueError(
            f"prediction actors need {per_actor:g} CPUs each but no node has that many: {capacity.describe()}"
        )
    return 0.0, per_actor, count


def predict_submission(
    run: Path,
    test: SaltData,
    thresholds: dict,
    out: Path,
    batch_size: int = 64,
    concurrency: int | None = None,
    probs_out: Path | None = None,
    per_fold: bool = False,
) -> pd.DataFrame:
    """Runs the ensemble over the test tiles on Ray and writes `out` (id,rle_mask) atomically.

    `probs_out`: also an .npz of the ensemble's float32 test probabilities (ids, probs, empty), in the
    test split's order (what a pseudo-label round chooses its tiles from); with `per_fold` also each
    fold's own members' mean (fold_probs (N, k, 101, 101), fold_empty (N, k))."""
    payloads = load_models(run)
    gpus, cpus_per_actor, concurrency = actor_resources(concurrency)
    items = [{"id": i, "image": img} for i, img in zip(test.ids.tolist(), test.images, strict=True)]
    ds = ray.data.from_items(items).map_batches(
        EnsemblePredictor,
        fn_constructor_args=([ray.put(payloads)], thresholds, batch_size, probs_out is not None, per_fold),
        batch_size=max(batch_size, 256),
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=gpus,
        num_cpus=cpus_per_actor,
    )
    rows = pd.DataFrame(ds.take_all())
    got = set(rows["id"])
    missing = [i for i in test.ids if i not in got]
    if missing or len(rows) != len(test):
        raise RunFailed(
            f"prediction returned {len(rows)} rows for {len(test)} test tiles (missing {missing[:5]}); "
            "the Ray workers' lines are in the output folder's logs/workers.log"
        )
    rows = rows.set_index("id").loc[test.ids].reset_index()  # the test split's id order
    submission = rows[["id", "rle_mask"]]
    if probs_out is not None:
        empty_probs = rows["empty"].to_numpy(np.float32)
        arrays = {"ids": test.ids, "probs": np.stack(rows["probs"].to_list()).astype(np.float32)}
        if not np.isnan(empty_probs).all():
            arrays["empty"] = empty_probs
        if per_fold:
            arrays["fold_probs"] = np.stack(rows["fold_probs"].to_list()).astype(np.float32)
            fold_empty = np.stack(rows["fold_empty"].to_list()).astype(np.float32)
            if not np.isnan(fold_empty).all():
                arrays["fold_empty"] = fold_empty
        atomic_savez(probs_out, **arrays)
    atomic_write(out, lambda tmp: submission.to_csv(tmp, index=False))
    empty = int((rows["area"] == 0).sum())
    folds = len({p["fold"] for p in payloads})
    print(
        f"submission {out}: {len(submission)} rows from {len(payloads)} members ({folds} folds x "
        f"{len(payloads) / folds:g}), {empty} empty masks ({empty / len(submission):.0%})"
    )
    return submission
