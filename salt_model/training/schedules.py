"""Learning-rate schedules as pure functions of the step, and the optimiser.

- cosine: cosine annealing with warm restarts from lr down to min_lr every cycle_epochs (SGDR,
  Loshchilov & Hutter, ICLR 2017); each cycle end is a snapshot for snapshot ensembling (Huang et al.,
  ICLR 2017), the schedule of the 4th-place TGS solution (50 epochs per cycle).
- cyclic: triangular2 between min_lr and max_lr, full cycle cycle_epochs, amplitude halved every cycle
  (Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017).
- onecycle: linear rise from min_lr to lr over pct_start of the run, then cosine down to min_lr
  (Smith, "A disciplined approach to neural network hyper-parameters", 2018).
- step: lr * gamma ** floor(epoch / step_epochs); constant: lr.
Any schedule can start with a linear warm-up from min_lr over warmup_epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from salt_model.config import (
    SCHEDULES,
    ScheduleConfig,
    TrainConfig,
    cycle_end_epochs,  # noqa: F401  (defined beside ScheduleConfig: the snapshot check needs it)
)


def lr_at(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig) -> float:
    """Learning rate at optimiser step `step` (0-based) of a run of `epochs` x `steps_per_epoch` steps."""
    if steps_per_epoch < 1 or epochs < 1 or step < 0:
        raise ValueError(
            f"lr_at: need step >= 0, steps_per_epoch >= 1 and epochs >= 1, got step={step}, "
            f"steps_per_epoch={steps_per_epoch}, epochs={epochs}"
        )
    epoch = step / steps_per_epoch  # fractional epoch
    lr = _schedule(epoch, epochs, cfg)
    if epoch < cfg.warmup_epochs:
        lr = cfg.min_lr + (lr - cfg.min_lr) * epoch / cfg.warmup_epochs
    return lr


def _schedule(epoch: float, epochs: int, cfg: ScheduleConfig) -> float:
    if cfg.name == "constant":
        return cfg.lr
    if cfg.name == "step":
        return cfg.lr * cfg.gamma ** math.floor(epoch / cfg.step_epochs)
    if cfg.name == "cosine":
        t = (epoch % cfg.cycle_epochs) / cfg.cycle_epochs  # position in the cycle, [0, 1)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.name == "cyclic":
        cycle, t = divmod(epoch / cfg.cycle_epochs, 1.0)
        triangle = 1.0 - abs(2.0 * t - 1.0)  # 0 -> 1 at mid-cycle -> 0
        return cfg.min_lr + (cfg.max_lr - cfg.min_lr) * triangle / 2.0**cycle
    if cfg.name == "onecycle":
        rise = cfg.pct_start * epochs
        if epoch < rise:
            return cfg.min_lr + (cfg.lr - cfg.min_lr) * epoch / rise
        t = min((epoch - rise) / (epochs - rise), 1.0)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"schedule.name={cfg.name!r} is not allowed; choose one of {list(SCHEDULES)}")


def make_optimizer(
    params: Iterable[torch.nn.Parameter], train_cfg: TrainConfig, schedule_cfg: ScheduleConfig
) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum, at schedule_cfg.lr (call set_lr every step).

    Weight decay applies to conv/linear weights (ndim >= 2) only, not to biases or BatchNorm, as in nanoGPT.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("make_optimizer: no trainable parameters")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": train_cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if train_cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=schedule_cfg.lr)
    if train_cfg.optimizer == "sgd":
        m = train_cfg.momentum
        return torch.optim.SGD(groups, lr=schedule_cfg.lr, momentum=m, nesterov=m > 0)
    raise ValueError(f"train.optimizer={train_cfg.optimizer!r} is not allowed; choose one of ['adam', 'sgd']")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
