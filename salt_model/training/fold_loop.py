"""Training one fold: `train_one_epoch`, `evaluate` and `train_fold`, kept apart as in torchvision's
references/segmentation/train.py.

`train_fold` evaluates on the held-out fold at the epochs salt_model.training.cadence names (every epoch by
default; always the last and the snapshot epochs), collects the fold's ensemble members with their
out-of-fold probabilities (salt_model.training.members: cycle-end snapshots, SWA, the last epoch, and the best
epoch's OOF), and hands every epoch to one `report` hook: the CLI uses it to print and checkpoint, the
Ray orchestrator to gather the folds' metrics and write the shared checkpoint.

A checkpoint is two files per fold (salt_model.training.checkpoint): the resume state and the members.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from salt_model.config import Config
from salt_model.data.augment import SaltDataset, loader_worker_init, train_transform
from salt_model.data.folds import make_folds
from salt_model.data.loading import SaltData
from salt_model.device import autocast, autocast_dtype, pick_device, set_cpu_threads
from salt_model.evaluation.inference import predict_probs
from salt_model.evaluation.metric import image_scores, iou
from salt_model.evaluation.thresholds import binarize, default_thresholds
from salt_model.model import build_model
from salt_model.training.cadence import eval_epochs, eval_tta
from salt_model.training.checkpoint import (  # noqa: F401  (checkpoint_name & co. are part of this API)
    checkpoint_name,
    load_checkpoint,
    members_name,
    restore,
    save,
    strip_resume_state,
)
from salt_model.training.losses import compute_loss, loss_name
from salt_model.training.members import FoldMembers, Member
from salt_model.training.schedules import lr_at, make_optimizer, set_lr

# report(metrics, save): `metrics` is this epoch's dict; `save(directory)` writes this fold's
# checkpoint file into `directory` and returns its path (call it only on epochs you checkpoint).
ReportFn = Callable[[dict, Callable[[Path], Path]], None]


@dataclass
class FoldResult:
    fold: int
    best_score: float  # highest held-out val_map (optimistic: chosen on the same tiles)
    best_epoch: int  # 1-based count of epochs trained when it was seen
    history: list[dict]
    val_index: np.ndarray  # (n_val,) indices into the training data
    members: dict[str, Member] = field(repr=False)  # best (OOF only), last, snap{epoch}, swa

    @property
    def oof_probs(self) -> np.ndarray:
        """(n_val, 101, 101) float32 OOF probabilities of the best epoch."""
        return self.members["best"].probs

    @property
    def oof_empty(self) -> np.ndarray | None:
        return self.members["best"].empty


def fold_split(data: SaltData, fold: int, config: Config, folds: np.ndarray | None = None):
    """(train_index, val_index) of `fold`; folds default to the stratified split of the config."""
    k = config.data.folds
    if not 0 <= fold < k:
        raise ValueError(f"fold={fold} is out of range; expected 0..{k - 1} for data.folds={k}")
    if data.masks is None:
        raise ValueError("training needs masks: the data has none (is this the test split?)")
    if folds is None:
        folds = make_folds(data.masks, k, config.data.fold_seed)
    return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def make_optimizer_and_scaler(
    model, config: Config, device
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """The optimizer of the config, and a GradScaler that is on only for fp16 autocast."""
    optimizer = make_optimizer(model.parameters(), config.train, config.schedule)
    use_scaler = autocast_dtype(config.train.precision, device) == torch.float16
    return optimizer, torch.amp.GradScaler(device.type, enabled=use_scaler)


def train_one_epoch(model, loader, optimizer, scaler, epoch, step, config, device) -> tuple[float, int]:
    """One pass over the loader; returns (mean loss, global step after the pass)."""
    model.train()
    dtype = autocast_dtype(config.train.precision, device)
    fmt = (
        torch.channels_last
        if config.train.channels_last and device.type == "cuda"
        else torch.contiguous_format
    )
    steps_per_epoch = len(loader)
    total, count = 0.0, 0
    for images, masks, *weights in loader:  # (B, 1, P, P) uint8 each[, (B,) loss weights]
        set_lr(optimizer, lr_at(step, steps_per_epoch, config.train.epochs, config.schedule))
        x = images.to(device, non_blocking=True).float().div_(255).contiguous(memory_format=fmt)
        y = masks.to(device, non_blocking=True).float()
        w = weights[0].to(device, non_blocking=True) if weights else None
        with autocast(device, dtype):
            outputs = model(x)
        outputs = tuple(_to_float(o) for o in outputs)
        loss, _ = compute_loss(outputs, y, epoch, config.train, w)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(x)
        count += len(x)
        step += 1
    return total / max(count, 1), step


@torch.no_grad()
def evaluate(
    model, data: SaltData, epoch: int, config: Config, device, tta: bool | None = None
) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Held-out metrics at the default thresholds, plus the probabilities behind them.
    `tta`: flip TTA (None: config.train.eval_tta)."""
    tta = config.train.eval_tta if tta is None else tta
    probs, empty = predict_probs(model, data.images, config, device, tta=tta)
    truth = data.masks.astype(bool)
    pred = binarize(probs, empty, default_thresholds(empty, config.decode.empty_rule))
    metrics = {
        "val_map": float(image_scores(truth, pred).mean()),
        "val_iou": float(iou(truth, pred).mean()),
        "val_loss": _val_loss(probs, empty, data.masks, epoch, config),
    }
    if empty is not None:
        metrics["val_empty_acc"] = float(((empty > 0.5) == ~truth.any(axis=(1, 2))).mean())
    return metrics, probs, empty


def train_fold(
    config: Config,
    data: SaltData,
    fold: int,
    report: ReportFn | None = None,
    folds: np.ndarray | None = None,
    resume: str | Path | dict | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    allow_changed: tuple[str, ...] = (),
    extra: SaltData | None = None,
    init_state: dict | None = None,
    eval_at: tuple[int, ...] = (),
) -> FoldResult:
    """Trains `fold` of the k-fold split to config.train.epochs and returns its result.

    `resume` is a checkpoint (path or loaded dict) written by this function's `save`; training goes
    on from the epoch after it. `report(metrics, save)` is called once per trained epoch, and never
    when a resumed run has no epoch left. A resume refuses a config that differs from the checkpoint's
    in anything that shapes the training (model, data, schedule, train keys other than config.RUNTIME_KEYS),
    unless the dotted key is listed in `allow_changed` (schedule and train keys only; e.g.
    ("train.epochs",) to extend a run, knowing the LR curve then bends). `threads` sizes torch's and OpenCV's CPU thread pools; an
    orchestrator passes its worker's CPU share here, which wins over config.train.threads (None: use
    config.train.threads, where 0 leaves the libraries' defaults).

    `extra`: pseudo-labelled tiles (salt_model.training.pseudo_labels) added to this fold's training part only, each
    weighing config.pseudo.weight in the loss; the held-out fold stays real labels. `init_state`: model
    weights to start from (a pseudo round with pseudo.init=previous), ignored when resuming.
    `eval_at`: 1-based epochs evaluated besides salt_model.training.cadence's (a search passes ASHA's rungs).
    An epoch that is not evaluated reports its training metrics only (no val_* keys; best_val_map
    once some epoch was evaluated).
    """
    device = pick_device(device)
    set_cpu_threads(config.train.threads if threads is None else threads)
    train_idx, val_idx = fold_split(data, fold, config, folds)
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    weights = None
    if extra is not None and len(extra):
        weights = np.concatenate([np.ones(len(train_set)), np.full(len(extra), config.pseudo.weight)])
        train_set = SaltData(
            np.concatenate([train_set.ids, extra.ids]),
            np.concatenate([train_set.images, extra.images]),
            np.concatenate([train_set.masks, extra.masks.astype(train_set.masks.dtype)]),
        )
    if len(train_idx) < config.train.batch_size:
        raise ValueError(
            f"fold {fold} has {len(train_idx)} training tiles, fewer than "
            f"train.batch_size={config.train.batch_size}; lower the batch size"
        )

    torch.manual_seed(config.train.seed * 1000 + fold)
    model = build_model(config.model)
    if init_state is not None and resume is None:
        model.load_state_dict(init_state)
    model = model.to(device)
    if config.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer, scaler = make_optimizer_and_scaler(model, config, device)
    loader = DataLoader(
        SaltDataset(train_set.images, train_set.masks, train_transform(config.data), weights=weights),
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,  # BatchNorm cannot train on a batch of one
        num_workers=config.train.loader_workers,
        persistent_workers=config.train.loader_workers > 0,
        worker_init_fn=loader_worker_init,
        pin_memory=device.type == "cuda",
    )

    members = FoldMembers(config)
    state = {"epoch": 0, "step": 0, "history": []}
    if resume is not None:
        state = restore(resume, model, optimizer, scaler, config, fold, members, allow_changed)

    evaluated = eval_epochs(config, eval_at)
    for epoch in range(state["epoch"], config.train.epochs):
        start = time.perf_counter()
        # The same epoch after a resume: torch's shuffling and every tile's augmentation (seeded from
        # the epoch seed and the tile index, in whichever worker process draws it).
        epoch_seed = config.train.seed * 1000 + fold * 100 + epoch
        torch.manual_seed(epoch_seed)
        loader.dataset.set_epoch(epoch_seed)
        train_loss, state["step"] = train_one_epoch(
            model, loader, optimizer, scaler, epoch, state["step"], config, device
        )
        state["epoch"] = epoch + 1
        if epoch + 1 in evaluated:
            tta = eval_tta(config, epoch + 1)
            metrics, probs, empty = evaluate(model, val_set, epoch, config, device, tta=tta)
            members.after_epoch(epoch + 1, model, metrics["val_map"], probs, empty)  # float32 OOF
        else:
            metrics = {}
            members.after_epoch(epoch + 1, model, None, None, None)  # the SWA average only
        if epoch + 1 == config.train.epochs and members.swa_state is not None:  # the SWA member
            evaluate_swa = lambda m, epoch=epoch: evaluate(m, val_set, epoch, config, device)  # noqa: E731
            metrics["swa_val_map"] = members.finish_swa(model, train_set.images, evaluate_swa, config, device)
        metrics.update(
            fold=fold,
            epoch=epoch + 1,
            threads=torch.get_num_threads(),
            train_loss=train_loss,
            loss=loss_name(epoch, config.train),
            lr=optimizer.param_groups[0]["lr"],
            train_tiles=len(train_set),  # the fold's training part, pseudo-labelled tiles included
            epoch_s=time.perf_counter() - start,
        )
        if "best" in members.members:
            metrics["best_val_map"] = members.best.score
        state["history"].append(metrics)
        if report is not None:
            report(
                dict(metrics),
                lambda directory: save(directory, fold, model, optimizer, scaler, state, members, config),
            )

    return FoldResult(
        fold=fold,
        best_score=members.best.score,
        best_epoch=members.best.epoch,
        history=state["history"],
        val_index=val_idx,
        members=dict(members.members),
    )


def _val_loss(probs, empty, masks, epoch, config) -> float:
    """The training loss on the held-out tiles, from the (unpadded) probabilities' logits."""
    eps = 1e-6
    logits = torch.logit(torch.from_numpy(probs).clamp(eps, 1 - eps))[:, None]  # (N, 1, 101, 101)
    empty_logits = None if empty is None else torch.logit(torch.from_numpy(empty).clamp(eps, 1 - eps))
    loss, _ = compute_loss(
        (logits, empty_logits), torch.from_numpy(masks)[:, None].float(), epoch, config.train
    )
    return float(loss)


def _to_float(output):
    if output is None:
        return None
    if isinstance(output, list):
        return [o.float() for o in output]
    return output.float()
