"""Which epochs evaluate the held-out fold, and which of those use flip TTA.

Evaluating every epoch with flip TTA costs about a third of a CPU epoch at k = 3 (two forwards over
the held-out third of the data). `train.eval_every` N evaluates epochs N, 2N, ... and always the ones
whose score something depends on: the last epoch (the "last" and SWA members), each snapshot epoch
(its member's OOF) and, in a search, each ASHA rung (the scheduler compares trials there). With
`train.tta_members_only` flip TTA runs only where a member is scored; the other evaluations (the
best-epoch watch and the rungs) run one forward pass. Evaluation never changes the weights: training
is the same at any cadence.
"""

from __future__ import annotations

from salt_model.config import Config, SearchConfig
from salt_model.training.schedules import cycle_end_epochs


def snapshot_epochs(config: Config) -> list[int]:
    """1-based epochs whose weights are kept as snapshot members: the last train.snapshots cycle ends."""
    t = config.train
    ends = cycle_end_epochs(t.epochs, config.schedule)
    return ends[len(ends) - t.snapshots :] if t.snapshots else []


def member_epochs(config: Config) -> set[int]:
    """1-based epochs whose evaluation scores an ensemble member: the snapshots and the last epoch."""
    return {*snapshot_epochs(config), config.train.epochs}


def eval_epochs(config: Config, extra: tuple[int, ...] | list[int] = ()) -> set[int]:
    """1-based epochs evaluated: every train.eval_every-th, the member epochs, and `extra` (e.g. the
    ASHA rungs of a search) within 1..train.epochs."""
    epochs, every = config.train.epochs, config.train.eval_every
    regular = set(range(every, epochs + 1, every))
    return regular | member_epochs(config) | {e for e in extra if 1 <= e <= epochs}


def eval_tta(config: Config, epoch: int) -> bool:
    """Whether the evaluation after `epoch` (1-based) uses flip TTA."""
    if not config.train.eval_tta:
        return False
    return not config.train.tta_members_only or epoch in member_epochs(config)


def asha_rungs(search: SearchConfig, epochs: int) -> list[int]:
    """The epochs at which orchestrator.tune's ASHA compares trials: grace x reduction_factor^i below
    `epochs` (ray.tune's _Bracket rungs; the last epoch is evaluated anyway). [] without early stopping."""
    if not search.early_stopping or epochs < 3:
        return []
    rungs, rung = [], asha_grace(search, epochs)
    while rung < epochs:
        rungs.append(int(rung))
        rung *= search.reduction_factor
    return rungs


def asha_grace(search: SearchConfig, epochs: int) -> int:
    """ASHA's grace period: search.grace_epochs, else switch_low + 2 (the Lovasz switch pays off first)."""
    return max(1, min(search.grace_epochs or search.switch_low + 2, epochs - 1))
