"""Training one fold: `train_one_epoch`, `evaluate` and `train_fold`, kept apart as in torchvision's
references/segmentation/train.py.

`train_fold` evaluates on the held-out fold every epoch, keeps a deep copy of the best weights (by the
competition metric) and their out-of-fold probabilities, and hands every epoch to one `report` hook:
the CLI uses it to print and checkpoint, the Ray orchestrator to gather the folds' metrics and write the
shared checkpoint. A checkpoint holds everything a resume needs (model, optimizer, step, epoch, best
weights, history, config); the LR schedule is a pure function of the step, so the step is its state.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from salt_model.augment import SaltDataset, train_transform
from salt_model.config import Config
from salt_model.data import SaltData
from salt_model.folds import make_folds
from salt_model.io import atomic_torch_save
from salt_model.losses import compute_loss, loss_name
from salt_model.metric import image_scores, iou
from salt_model.model import build_model
from salt_model.postprocess import binarize, default_thresholds
from salt_model.predict import autocast, autocast_dtype, pick_device, predict_probs
from salt_model.schedules import lr_at, make_optimizer, set_lr

# report(metrics, save): `metrics` is this epoch's dict; `save(directory)` writes this fold's
# checkpoint file into `directory` and returns its path (call it only on epochs you checkpoint).
ReportFn = Callable[[dict, Callable[[Path], Path]], None]


@dataclass
class FoldResult:
    fold: int
    best_score: float
    best_epoch: int  # 1-based count of epochs trained when the best weights were seen
    history: list[dict]
    val_index: np.ndarray  # (n_val,) indices into the training data
    oof_probs: np.ndarray  # (n_val, 101, 101) float32 probabilities of the best weights
    oof_empty: np.ndarray | None  # (n_val,) empty-head probabilities of the best weights
    best_state: dict = field(repr=False)  # the best weights (CPU tensors)


def checkpoint_name(fold: int) -> str:
    """Per-fold file names: Ray merges every worker's checkpoint files into one folder."""
    return f"fold_{fold}.pt"


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
    for images, masks in loader:  # (B, 1, P, P) uint8 each
        set_lr(optimizer, lr_at(step, steps_per_epoch, config.train.epochs, config.schedule))
        x = images.to(device, non_blocking=True).float().div_(255).contiguous(memory_format=fmt)
        y = masks.to(device, non_blocking=True).float()
        with autocast(device, dtype):
            outputs = model(x)
        outputs = tuple(_to_float(o) for o in outputs)
        loss, _ = compute_loss(outputs, y, epoch, config.train)
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
    model, data: SaltData, epoch: int, config: Config, device
) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Held-out metrics at the default thresholds, plus the probabilities behind them."""
    probs, empty = predict_probs(model, data.images, config, device, tta=config.train.eval_tta)
    truth = data.masks.astype(bool)
    pred = binarize(probs, empty, default_thresholds(empty))
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
) -> FoldResult:
    """Trains `fold` of the k-fold split to config.train.epochs and returns its result.

    `resume` is a checkpoint (path or loaded dict) written by this function's `save`; training goes
    on from the epoch after it. `report(metrics, save)` is called once per trained epoch, and never
    when a resumed run has no epoch left.
    """
    device = pick_device(device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    train_idx, val_idx = fold_split(data, fold, config, folds)
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    if len(train_idx) < config.train.batch_size:
        raise ValueError(
            f"fold {fold} has {len(train_idx)} training tiles, fewer than "
            f"train.batch_size={config.train.batch_size}; lower the batch size"
        )

    torch.manual_seed(config.train.seed * 1000 + fold)
    model = build_model(config.model).to(device)
    if config.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer, scaler = make_optimizer_and_scaler(model, config, device)
    loader = DataLoader(
        SaltDataset(train_set.images, train_set.masks, train_transform(config.data)),
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,  # BatchNorm cannot train on a batch of one
        num_workers=config.train.loader_workers,
        persistent_workers=config.train.loader_workers > 0,
        pin_memory=device.type == "cuda",
    )

    state = {
        "epoch": 0,
        "step": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "history": [],
        "best_state": None,
        "best_oof": None,
        "best_empty": None,
    }
    if resume is not None:
        state = _restore(resume, model, optimizer, scaler, config, fold)

    for epoch in range(state["epoch"], config.train.epochs):
        start = time.perf_counter()
        # The same epoch after a resume: torch's shuffling and albumentations' own generator (exact
        # with loader_workers=0; worker processes keep their own augmentation streams).
        epoch_seed = config.train.seed * 1000 + fold * 100 + epoch
        torch.manual_seed(epoch_seed)
        loader.dataset.transform.set_random_seed(epoch_seed)
        train_loss, state["step"] = train_one_epoch(
            model, loader, optimizer, scaler, epoch, state["step"], config, device
        )
        metrics, probs, empty = evaluate(model, val_set, epoch, config, device)
        state["epoch"] = epoch + 1
        if metrics["val_map"] > state["best_score"]:
            state.update(
                best_score=metrics["val_map"],
                best_epoch=epoch + 1,
                best_state=_cpu_copy(model.state_dict()),
                best_oof=probs,  # float32: float16 flips pixels that sit at a threshold
                best_empty=empty,
            )
        metrics.update(
            fold=fold,
            epoch=epoch + 1,
            train_loss=train_loss,
            loss=loss_name(epoch, config.train),
            lr=optimizer.param_groups[0]["lr"],
            best_val_map=state["best_score"],
            epoch_s=time.perf_counter() - start,
        )
        state["history"].append(metrics)
        if report is not None:
            report(
                dict(metrics),
                lambda directory: _save(directory, fold, model, optimizer, scaler, state, config),
            )

    return FoldResult(
        fold=fold,
        best_score=state["best_score"],
        best_epoch=state["best_epoch"],
        history=state["history"],
        val_index=val_idx,
        oof_probs=state["best_oof"],
        oof_empty=state["best_empty"],
        best_state=state["best_state"],
    )


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path}: not a readable fold checkpoint ({err})") from None


def _save(directory: Path, fold, model, optimizer, scaler, state, config) -> Path:
    payload = {
        "fold": fold,
        "config": config.to_dict(),
        "model": _cpu_copy(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **{k: state[k] for k in ("epoch", "step", "best_score", "best_epoch", "history", "best_state")},
        "best_oof": torch.from_numpy(state["best_oof"]),
        "best_empty": None if state["best_empty"] is None else torch.from_numpy(state["best_empty"]),
    }
    path = Path(directory) / checkpoint_name(fold)
    atomic_torch_save(path, payload)
    return path


def _restore(resume, model, optimizer, scaler, config: Config, fold: int) -> dict:
    ckpt = resume if isinstance(resume, dict) else load_checkpoint(resume)
    if ckpt.get("fold") != fold:
        raise ValueError(f"checkpoint is for fold {ckpt.get('fold')}, not fold {fold}")
    saved = Config.from_dict(ckpt["config"], source="checkpoint config")
    for section in ("model", "data"):
        if getattr(saved, section) != getattr(config, section):
            raise ValueError(
                f"checkpoint was trained with a different '{section}' config: "
                f"{getattr(saved, section)} vs now {getattr(config, section)}; "
                "use a new output folder or the same config"
            )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    state = {k: ckpt[k] for k in ("epoch", "step", "best_score", "best_epoch", "history", "best_state")}
    state["best_oof"] = ckpt["best_oof"].numpy()
    state["best_empty"] = None if ckpt["best_empty"] is None else ckpt["best_empty"].numpy()
    return state


def _val_loss(probs, empty, masks, epoch, config) -> float:
    """The training loss on the held-out tiles, from the (unpadded) probabilities' logits."""
    eps = 1e-6
    logits = torch.logit(torch.from_numpy(probs).clamp(eps, 1 - eps))[:, None]  # (N, 1, 101, 101)
    empty_logits = None if empty is None else torch.logit(torch.from_numpy(empty).clamp(eps, 1 - eps))
    loss, _ = compute_loss(
        (logits, empty_logits), torch.from_numpy(masks)[:, None].float(), epoch, config.train
    )
    return float(loss)


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(state_dict).items()}


def _to_float(output):
    if output is None:
        return None
    if isinstance(output, list):
        return [o.float() for o in output]
    return output.float()
