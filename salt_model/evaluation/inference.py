"""Inference: padded uint8 tiles in, unpadded float32 probabilities out, with horizontal-flip TTA.

Sigmoid happens here and only here; the model returns logits. Fold models are saved as small files
holding the resolved config and the best weights, so an ensemble rebuilds exactly the trained models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from salt_model.config import Config
from salt_model.data.augment import pad_batch, unpad
from salt_model.device import autocast, autocast_dtype, pick_device
from salt_model.io import atomic_torch_save, load_torch_dict
from salt_model.model import build_model


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    images: np.ndarray,
    config: Config,
    device: torch.device,
    batch_size: int = 64,
    tta: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 101, 101) uint8 tiles -> mask probabilities (N, 101, 101) float32 and empty probs (N,).

    With `tta` the horizontally flipped tile is predicted too and its prediction flipped back and
    averaged. The flip happens before padding, as in training: 101 -> 128 pads 13 px on one side and
    14 on the other, so flipping the padded tile would shift the view by a pixel.
    """
    model.eval()
    views = [images, images[:, :, ::-1]] if tta else [images]
    probs = np.zeros(images.shape, dtype=np.float32)
    empty = np.zeros(len(images), dtype=np.float32)
    has_empty_head = True
    for i, view in enumerate(views):
        p, e = _predict_view(
            model, pad_batch(np.ascontiguousarray(view), config.data), config, device, batch_size
        )
        probs += p[:, :, ::-1] if i == 1 else p
        if e is None:
            has_empty_head = False
        else:
            empty += e
    probs /= len(views)
    return probs, (empty / len(views) if has_empty_head else None)


def ensemble_probs(
    models: Iterable[tuple[torch.nn.Module, Config]],
    images: np.ndarray,
    device,
    batch_size: int = 64,
    folds: list[int] | None = None,
):
    """(N, 101, 101) uint8 tiles -> the mean over all members (k folds x s) of the flip-TTA
    probabilities, in float32.

    `models` is any iterable of (model, config) pairs, read once: a generator can build each member
    as it is reached. With `folds` (each member's fold) also each fold's own mean: (B, k, 101, 101)
    and (B, k) or None, fold r at index r. The overall mean is summed in member order either way
    (the same floats)."""
    probs_sum = np.zeros(images.shape, dtype=np.float32)
    empty_sum = None
    fold_sums: dict[int, list] = {}
    n = 0
    for i, (model, config) in enumerate(models):
        n = i + 1
        probs, empty = predict_probs(model, images, config, device, batch_size=batch_size, tta=True)
        probs_sum += probs
        if empty is not None:
            empty_sum = empty if empty_sum is None else empty_sum + empty
        if folds is not None:
            entry = fold_sums.setdefault(folds[i], [np.zeros_like(probs_sum), None, 0])
            entry[0] += probs
            entry[1] = None if empty is None else (empty if entry[1] is None else entry[1] + empty)
            entry[2] += 1
    if n == 0:
        raise ValueError("ensemble_probs: no members to average; pass at least one (model, config) pair")
    mean = (probs_sum / n, None if empty_sum is None else empty_sum / n)
    if folds is None:
        return mean
    order = sorted(fold_sums)
    fold_probs = np.stack([fold_sums[f][0] / fold_sums[f][2] for f in order], axis=1)
    has_empty = all(fold_sums[f][1] is not None for f in order)
    fold_empty = np.stack([fold_sums[f][1] / fold_sums[f][2] for f in order], axis=1) if has_empty else None
    return (*mean, fold_probs, fold_empty)


def _predict_view(model, padded: np.ndarray, config: Config, device: torch.device, batch_size: int):
    """(N, P, P) padded uint8 -> unpadded (N, 101, 101) probabilities and (N,) empty probs or None."""
    dtype = autocast_dtype(config.train.precision, device)
    memory_format = _memory_format(config, device)
    probs, empty = [], []
    for start in range(0, len(padded), batch_size):
        x = torch.from_numpy(padded[start : start + batch_size]).to(device, non_blocking=True)
        x = x[:, None].float().div_(255).contiguous(memory_format=memory_format)  # (B, 1, P, P)
        with autocast(device, dtype):
            mask_logits, empty_logits = model(x)[:2]
        probs.append(unpad(torch.sigmoid(mask_logits.float())[:, 0]).cpu().numpy())  # (B, 101, 101)
        if empty_logits is not None:
            empty.append(torch.sigmoid(empty_logits.float()).cpu().numpy())
    return np.concatenate(probs), (np.concatenate(empty) if empty else None)


def save_fold_model(
    path: Path, model_state: dict, config: Config, fold: int, score: float, epoch: int, member: str = "last"
):
    """Writes one ensemble member's weights with the config that rebuilds the model (atomically)."""
    payload = {
        "config": config.to_dict(),
        "fold": fold,
        "member": member,  # salt_model.training.members: last | snap{epoch} | swa
        "score": score,
        "epoch": epoch,
        "state_dict": model_state,
    }
    atomic_torch_save(Path(path), payload)


def read_fold_model(path: str | Path) -> dict:
    """The payload of a fold model file: {'config', 'fold', 'member', 'score', 'epoch', 'state_dict'}."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fold model {path}: not found")
    payload = load_torch_dict(
        path, "fold model", "salt-orchestrator model file"
    )  # a truncated or foreign file: ValueError
    if "state_dict" not in payload or "config" not in payload:
        raise ValueError(f"fold model {path}: expected a dict with 'config' and 'state_dict'")
    return payload


def model_from_payload(payload: dict, device: torch.device | None = None) -> tuple[torch.nn.Module, Config]:
    """Rebuilds a fold model (eval mode, on `device`) from a read_fold_model payload."""
    raw = dict(payload["config"])
    raw["model"] = {**raw["model"], "encoder_weights": None}  # the weights are in the payload itself
    config = Config.from_dict(raw, source=f"fold model {payload.get('fold')}")
    device = pick_device(device)
    model = build_model(config.model)
    model.load_state_dict(payload["state_dict"])
    model.to(device, memory_format=_memory_format(config, device)).eval()
    return model, config


def _memory_format(config: Config, device: torch.device) -> torch.memory_format:
    use = config.train.channels_last and device.type == "cuda"
    return torch.channels_last if use else torch.contiguous_format
