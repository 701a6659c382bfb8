"""Ensemble members of one fold: cycle-end snapshots, SWA, and the last and best epochs, with OOF.

- Snapshot ensembling (Huang et al., "Snapshot Ensembles: Train 1, get M for free", ICLR 2017): the
  weights at the end of each cosine/cyclic cycle (`schedules.cycle_end_epochs`), where the lr is at its
  floor, are ensemble members; the 4th-place TGS solution averaged its cycle snapshots. `train.snapshots`
  keeps the last N cycle ends.
- SWA (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018):
  an equal-weight running average of the weights at the end of each of the last `train.swa_epochs`
  epochs; the averaged weights' BatchNorm statistics are then re-estimated with one pass over the fold's
  (un-augmented) training tiles, as torch.optim.swa_utils.update_bn does.
- "last" is the final epoch; "best" is the epoch with the highest held-out val_map. Choosing the best
  epoch looks at the held-out labels, so its OOF score is optimistic: only its OOF probabilities are
  kept (for cv.json), never its weights.

Every member carries its float32 OOF probabilities on the fold's held-out tiles. A checkpoint keeps the
members in their own file (`members_payload`), serialized once per change, apart from the resume state.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from salt_model.config import Config
from salt_model.data.augment import pad_batch
from salt_model.device import autocast, autocast_dtype
from salt_model.training.cadence import snapshot_epochs

HONEST = ("last", "snapshots", "swa", "snapshots+swa")  # chosen without the held-out labels


@dataclass
class Member:
    name: str  # best | last | snap{epoch} | swa
    epoch: int  # epochs trained when taken (SWA: the last epoch of its window)
    score: float  # held-out val_map at the default thresholds
    probs: np.ndarray = field(repr=False)  # (n_val, 101, 101) float32 OOF probabilities
    empty: np.ndarray | None = field(repr=False)  # (n_val,) empty-head probabilities, or None
    state: dict | None = field(default=None, repr=False)  # CPU weights; None for "best"


def cpu_copy(state_dict: dict) -> dict:
    """A deep CPU copy of a state_dict: never an alias of the live weights."""
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(state_dict).items()}


class FoldMembers:
    """The members one fold collects while it trains, the SWA running average, and their file."""

    def __init__(self, config: Config):
        t = config.train
        self.epochs = t.epochs
        self.snapshot_epochs = snapshot_epochs(config)
        self.swa_first = t.epochs - t.swa_epochs + 1 if t.swa_epochs else None  # 1-based epoch
        self.members: dict[str, Member] = {}
        self.swa_state: dict | None = None  # running average of the weights in the SWA window
        self.swa_count = 0
        self._version = 0  # bumped on every member change
        self._cache: tuple[int, bytes] | None = None

    @property
    def best(self) -> Member:
        return self.members["best"]

    def after_epoch(self, epoch: int, model: torch.nn.Module, score: float | None, probs, empty) -> None:
        """Takes the members of `epoch` (1-based count of epochs trained) after its evaluation.
        An epoch that was not evaluated (score None) only joins the SWA average; it cannot be a
        snapshot or the last epoch (salt_model.training.cadence always evaluates those)."""
        if score is None:
            assert epoch not in self.snapshot_epochs and epoch != self.epochs, f"epoch {epoch} unscored"
        elif "best" not in self.members or score > self.best.score:
            self._put(Member("best", epoch, score, probs, empty))
        weights = None
        if score is not None and (epoch in self.snapshot_epochs or epoch == self.epochs):
            weights = cpu_copy(model.state_dict())  # one copy shared by a snapshot and "last"
        if epoch in self.snapshot_epochs:
            self._put(Member(f"snap{epoch}", epoch, score, probs, empty, weights))
        if epoch == self.epochs:
            self._put(Member("last", epoch, score, probs, empty, weights))
        if self.swa_first is not None and epoch >= self.swa_first:
            self._accumulate(model.state_dict())

    def finish_swa(
        self,
        model: torch.nn.Module,
        train_images: np.ndarray,
        evaluate: Callable[[torch.nn.Module], tuple[dict, np.ndarray, np.ndarray | None]],
        config: Config,
        device: torch.device,
    ) -> float:
        """Makes the SWA member: averaged weights, BatchNorm re-estimated on `train_images`, then
        evaluated on the held-out tiles with `evaluate` (fold_loop.evaluate). Returns its val_map."""
        if self.swa_state is None:
            raise RuntimeError("finish_swa: no epoch of the SWA window was averaged")
        swa_model = copy.deepcopy(model)
        swa_model.load_state_dict(self.swa_state)
        recompute_bn(swa_model, train_images, config, device)
        metrics, probs, empty = evaluate(swa_model)
        score = metrics["val_map"]
        self._put(Member("swa", self.epochs, score, probs, empty, cpu_copy(swa_model.state_dict())))
        return score

    def resume_state(self) -> dict:
        """What a resume needs besides the members file: the SWA running average, until the SWA
        member exists (then the average is that member's, and stored there)."""
        done = "swa" in self.members
        return {"state": None if done else self.swa_state, "count": self.swa_count}

    def restore(self, members: list[dict], swa: dict) -> None:
        self.members = {m.name: m for m in (member_from_payload(p) for p in members)}
        self.swa_state, self.swa_count = swa["state"], swa["count"]
        self._version += 1

    def serialized(self, fold: int, config: Config) -> bytes:
        """The members file's bytes, serialized once per change (every checkpoint copies them)."""
        if self._cache is None or self._cache[0] != self._version:
            buffer = io.BytesIO()
            torch.save(members_payload(list(self.members.values()), fold, config), buffer)
            self._cache = (self._version, buffer.getvalue())
        return self._cache[1]

    def _put(self, member: Member) -> None:
        self.members[member.name] = member
        self._version += 1

    def _accumulate(self, state_dict: dict) -> None:
        if self.swa_state is None:
            self.swa_state = cpu_copy(state_dict)
        else:
            for name, value in state_dict.items():
                avg = self.swa_state[name]
                if avg.is_floating_point():  # equal weights: avg += (w - avg) / (n + 1)
                    avg += (value.detach().to("cpu", avg.dtype) - avg) / (self.swa_count + 1)
                else:  # BatchNorm's num_batches_tracked
                    avg.copy_(value)
        self.swa_count += 1


@torch.no_grad()
def recompute_bn(model: torch.nn.Module, images: np.ndarray, config: Config, device: torch.device) -> int:
    """Re-estimates every BatchNorm's running mean/var as the plain average over one pass of `images`.

    (N, 101, 101) uint8 tiles, padded as in evaluation, no augmentation. Only the BatchNorm layers run
    in training mode (dropout stays off). Returns the number of tiles seen.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    dtype = autocast_dtype(config.train.precision, device)
    batch = config.train.batch_size
    for start in range(0, len(images), batch):
        x = torch.from_numpy(pad_batch(images[start : start + batch], config.data)).to(device)
        with autocast(device, dtype):
            model(x[:, None].float().div_(255))  # (B, 1, P, P)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(images)


def members_payload(members: list[Member], fold: int, config: Config) -> dict:
    """A members file: each member's weights (or None) and float32 OOF; shared arrays stored once."""
    tensors: dict[int, torch.Tensor] = {}

    def tensor(array):
        if array is None:
            return None
        if id(array) not in tensors:  # the same array in two members -> one tensor -> one storage
            tensors[id(array)] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return tensors[id(array)]

    return {
        "kind": "members",
        "fold": fold,
        "config": config.to_dict(),
        "members": [
            {
                "name": m.name,
                "epoch": m.epoch,
                "score": m.score,
                "probs": tensor(m.probs),
                "empty": tensor(m.empty),
                "state_dict": m.state,
            }
            for m in members
        ],
    }


def member_from_payload(p: dict) -> Member:
    empty = None if p["empty"] is None else p["empty"].numpy()
    return Member(p["name"], int(p["epoch"]), float(p["score"]), p["probs"].numpy(), empty, p["state_dict"])


def fold_variants(members: dict[str, Member]) -> dict[str, list[Member]]:
    """The ways to use one fold's members: best, last, snapshots, swa, snapshots+swa (those present)."""
    snaps = sorted((m for n, m in members.items() if n.startswith("snap")), key=lambda m: m.epoch)
    variants = {name: [members[name]] for name in ("best", "last") if name in members}
    if snaps:
        variants["snapshots"] = snaps
    if "swa" in members:
        variants["swa"] = [members["swa"]]
        if snaps:
            variants["snapshots+swa"] = [*snaps, members["swa"]]
    return variants


def mean_probs(members: list[Member]) -> tuple[np.ndarray, np.ndarray | None]:
    """The members' mean OOF probabilities in float32 (as the aggregation averages them)."""
    probs = np.mean([m.probs for m in members], axis=0, dtype=np.float32)
    has_empty = all(m.empty is not None for m in members)
    empty = np.mean([m.empty for m in members], axis=0, dtype=np.float32) if has_empty else None
    return probs, empty
