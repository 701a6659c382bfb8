"""A fold's checkpoint: two files, the resume state and the ensemble members, kept apart.

- `fold_{r}.pt`, the resume state: model, optimizer, scaler, step, epoch, history, the SWA running
  average (inside the SWA window), config. The LR schedule is a pure function of the step, so the step
  is its state (as nanoGPT and torchvision's references checkpoint model + optimizer + args together).
  After the last epoch the model is the "last" member and is not stored here a second time.
- `fold_{r}_members.pt`, the members (salt_model.training.members): each member's weights and float32 OOF,
  serialized once per change. Ray copies both into every checkpoint folder; they carry per-fold names
  because Ray merges every worker's files into one folder.

`strip_resume_state` drops what only further training needs (optimizer, scaler, SWA average) from a
stopped or finished run's checkpoint. Files load with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

from salt_model.config import Config, config_changes
from salt_model.io import atomic_torch_save, atomic_write, load_torch_dict
from salt_model.training.members import FoldMembers, cpu_copy


def checkpoint_name(fold: int) -> str:
    """Per-fold file names: Ray merges every worker's checkpoint files into one folder."""
    return f"fold_{fold}.pt"


def members_name(fold: int) -> str:
    return f"fold_{fold}_members.pt"


def load_checkpoint(path: str | Path) -> dict:
    """A fold's resume state with its members file (beside it) under "members"."""
    path = Path(path)
    ckpt = _load(path)
    if "members_file" not in ckpt:
        raise ValueError(f"checkpoint {path}: not a fold checkpoint (it names no members file)")
    members_path = path.parent / ckpt["members_file"]
    if not members_path.is_file():
        raise ValueError(f"checkpoint {path}: its members file {members_path.name} is missing")
    ckpt["members"] = _load(members_path)["members"]
    return ckpt


def strip_resume_state(path: str | Path) -> int:
    """Rewrites a stopped or finished fold checkpoint without optimizer, scaler and SWA state (and
    without the model when the members file holds the last epoch's weights). Returns bytes saved."""
    path = Path(path)
    ckpt = _load(path)
    if not ckpt.get("resumable", False):
        return 0
    finished = ckpt["epoch"] >= Config.from_dict(ckpt["config"], source=f"checkpoint {path}").train.epochs
    drop = ("optimizer", "scaler", "swa", *(("model",) if finished else ()))
    before = path.stat().st_size
    slim = {k: v for k, v in ckpt.items() if k not in drop}
    slim["resumable"] = False
    atomic_torch_save(path, slim)
    return before - path.stat().st_size


def _load(path: Path) -> dict:
    return load_torch_dict(path, "checkpoint", "fold checkpoint")


def save(directory: Path, fold, model, optimizer, scaler, state, members: FoldMembers, config) -> Path:
    directory = Path(directory)
    atomic_write(
        directory / members_name(fold), lambda tmp: tmp.write_bytes(members.serialized(fold, config))
    )
    payload = {
        "fold": fold,
        "config": config.to_dict(),
        "resumable": True,
        "members_file": members_name(fold),
        # after the last epoch the model is the "last" member: stored once, in the members file
        "model": None if "last" in members.members else cpu_copy(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "swa": members.resume_state(),
        **{k: state[k] for k in ("epoch", "step", "history")},
        # None until an epoch is evaluated (train.eval_every > 1 checkpoints unevaluated epochs too)
        "best_score": members.best.score if "best" in members.members else None,
        "best_epoch": members.best.epoch if "best" in members.members else None,
    }
    path = directory / checkpoint_name(fold)
    atomic_torch_save(path, payload)
    return path


def restore(
    resume, model, optimizer, scaler, config: Config, fold: int, members: FoldMembers, allow_changed=()
) -> dict:
    ckpt = resume if isinstance(resume, dict) else load_checkpoint(resume)
    if ckpt.get("fold") != fold:
        raise ValueError(f"checkpoint is for fold {ckpt.get('fold')}, not fold {fold}")
    saved = Config.from_dict(ckpt["config"], source="checkpoint config")
    changes = config_changes(saved, config)
    allowed = {k for k in allow_changed if k.split(".")[0] in ("schedule", "train")}
    refused = [c for c in changes if c.split(" ")[0] not in allowed]
    if refused:
        raise ValueError(
            f"checkpoint of fold {fold} was trained with a different config: {'; '.join(refused)}. "
            "Resuming would silently change the model, the data or the LR curve; use a new output "
            "folder or the checkpoint's config (schedule/train keys can be allowed explicitly, "
            "e.g. allow_changed=('train.epochs',) / --allow-change train.epochs)"
        )
    if ckpt.get("resumable", True):
        weights = ckpt["model"]
        if weights is None:  # a finished run: the last epoch's weights are the "last" member's
            weights = next(m["state_dict"] for m in ckpt["members"] if m["name"] == "last")
        model.load_state_dict(weights)
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        members.restore(ckpt["members"], ckpt["swa"])
    elif ckpt["epoch"] < config.train.epochs:
        raise ValueError(
            f"checkpoint of fold {fold} after epoch {ckpt['epoch']} was stripped of its optimizer state "
            "when its run stopped (train.keep_checkpoints); it cannot train on, only be collected"
        )
    else:
        members.restore(ckpt["members"], {"state": None, "count": 0})
    return {k: ckpt[k] for k in ("epoch", "step", "history")}
