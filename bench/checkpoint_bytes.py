"""Checkpoint economy: bytes per fold checkpoint and per Tune trial, before and after.

    python -m bench.checkpoint_bytes --out bench/checkpoint_bytes.json
    python -m bench.checkpoint_bytes --s3 [--repo DIR --label before]   # a tiny search on moto S3

(--s3: bench/checkpoint_s3.py, bytes uploaded per trial and objects left in the bucket.)

For each recipe (configs/tgs.yaml: ResNet34 U-Net width 1.0; configs/cpu.yaml: width 0.125) it builds the
real model and a real Adam state (one optimizer step), writes the fold checkpoint files the way the
training loop does, and measures them on disk:

- before: the single-file layout of commit 12af57a (engine._save then): model + best weights + Adam
  state + float32 best-epoch OOF, re-written whole at every checkpoint; Ray kept 2 checkpoints per
  trial and Tune never deleted them.
- after: `checkpoint.save` now: fold_{r}.pt (resume state: model, Adam, SWA running average) and
  fold_{r}_members.pt (members' weights + float32 OOF, each array stored once), for several
  snapshot/SWA settings, at a mid-run checkpoint and at the end; and what a stopped or finished
  trial keeps after `collect.prune_run_checkpoints` (its last checkpoint, `fold_loop.strip_resume_state`).

The held-out fold is 640 tiles (3200 / 5 folds); OOF contents are random (size is what counts).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from salt_model.config import load_config  # noqa: E402
from salt_model.io import atomic_write_text
from salt_model.model import build_model
from salt_model.training.checkpoint import checkpoint_name, members_name, save, strip_resume_state
from salt_model.training.fold_loop import make_optimizer_and_scaler
from salt_model.training.members import FoldMembers, Member, cpu_copy

N_VAL, K = 640, 5
CPU = torch.device("cpu")


def model_with_adam_state(config):
    torch.manual_seed(0)
    model = build_model(config.model)
    optimizer, scaler = make_optimizer_and_scaler(model, config, CPU)
    x = torch.rand(2, 1, config.data.pad, config.data.pad)
    mask_logits = model(x)[0]
    mask_logits.float().mean().backward()
    optimizer.step()  # Adam's exp_avg and exp_avg_sq now exist for every parameter
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, scaler


def oof(rng):
    return rng.random((N_VAL, 101, 101), dtype=np.float32), rng.random(N_VAL, dtype=np.float32)


def history(epochs):
    keys = ("val_map", "val_iou", "val_loss", "train_loss", "lr", "epoch_s", "best_val_map")
    return [{"fold": 0, "epoch": e + 1, "loss": "bce", **dict.fromkeys(keys, 0.5)} for e in range(epochs)]


def before_bytes(directory: Path, config, model, optimizer, scaler, epoch: int) -> int:
    """The single fold file of commit 12af57a (salt_model/engine.py `_save` at that commit)."""
    probs, empty = oof(np.random.default_rng(0))
    payload = {
        "fold": 0,
        "config": config.to_dict(),
        "model": cpu_copy(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": epoch * 80,
        "best_score": 0.8,
        "best_epoch": epoch,
        "history": history(epoch),
        "best_state": cpu_copy(model.state_dict()),
        "best_oof": torch.from_numpy(probs),
        "best_empty": torch.from_numpy(empty),
    }
    path = directory / "before_fold_0.pt"
    torch.save(payload, path)
    return path.stat().st_size


def after_bytes(directory: Path, config, model, optimizer, scaler, epoch: int) -> dict:
    """checkpoint.save after `epoch` epochs (a rising score: the best epoch is the newest one)."""
    members = FoldMembers(config)
    rng = np.random.default_rng(0)
    for e in range(1, epoch + 1):
        probs, empty = oof(rng) if (e == epoch or e in members.snapshot_epochs) else (None, None)
        if probs is None:  # an epoch whose OOF no member keeps: skip making 26 MB of noise
            probs, empty = np.zeros((1, 101, 101), np.float32), np.zeros(1, np.float32)
        members.after_epoch(e, model, 0.5 + e / 1000, probs, empty)
    if epoch == config.train.epochs and members.swa_state is not None:  # finish_swa without the data
        p, em = oof(rng)
        members._put(Member("swa", epoch, 0.9, p, em, cpu_copy(members.swa_state)))
    state = {"epoch": epoch, "step": epoch * 80, "history": history(epoch)}
    run = directory / f"after_{epoch}"
    run.mkdir()
    save(run, 0, model, optimizer, scaler, state, members, config)
    resume, member_file = run / checkpoint_name(0), run / members_name(0)
    out = {
        "resume": resume.stat().st_size,
        "members": member_file.stat().st_size,
        "kept": sorted(members.members),
    }
    strip_resume_state(resume)
    out["stripped_resume"] = resume.stat().st_size
    return out


def measure(name: str, path: str, settings: list[list[str]]) -> dict:
    base = load_config(path)
    model, optimizer, scaler = model_with_adam_state(base)
    weights = sum(t.nbytes for t in model.state_dict().values())
    adam = sum(
        t.nbytes for s in optimizer.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        E = base.train.epochs
        before = before_bytes(tmp, base, model, optimizer, scaler, E)
        for overrides in settings:
            config = base.with_overrides(overrides)
            mid, end = (config.train.epochs * 3) // 5, config.train.epochs
            sub = tmp / "_".join(o.replace("=", "") for o in overrides) if overrides else tmp / "plain"
            sub.mkdir()
            at_mid = after_bytes(sub, config, model, optimizer, scaler, mid)
            at_end = after_bytes(sub, config, model, optimizer, scaler, end)
            rows.append(
                {
                    "overrides": overrides,
                    "mid_epoch": mid,
                    "after_mid": at_mid,
                    "after_end": at_end,
                    "fold_checkpoint_mid": at_mid["resume"] + at_mid["members"],
                    "fold_checkpoint_end": at_end["resume"] + at_end["members"],
                    # Ray keeps keep_checkpoints (2) per run while it trains; then prune_run_checkpoints
                    "running_trial": K
                    * config.train.keep_checkpoints
                    * (at_end["resume"] + at_end["members"]),
                    "finished_trial": K * (at_end["stripped_resume"] + at_end["members"]),
                    "stopped_trial_at_mid": K * (at_mid["stripped_resume"] + at_mid["members"]),
                }
            )
    return {
        "recipe": name,
        "config": path,
        "weights_bytes": weights,
        "adam_state_bytes": adam,
        "oof_bytes_per_fold": N_VAL * 101 * 101 * 4,
        "before_fold_checkpoint": before,
        "before_trial": 2 * K * before,  # num_to_keep=2, never pruned
        "after": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.checkpoint_bytes", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="JSON results file (default: bench/checkpoint_bytes.json; with --s3 bench/checkpoint_s3.json)",
    )
    parser.add_argument(
        "--s3", action="store_true", help="measure a tiny search on a moto S3 server (bench/checkpoint_s3.py)"
    )
    parser.add_argument(
        "--repo",
        default=None,
        metavar="DIR",
        help="--s3: the checkout to run the search from, e.g. an exported older commit (default: this one)",
    )
    parser.add_argument(
        "--label",
        default="after",
        metavar="NAME",
        help="--s3: the name of this measurement in the JSON; an entry of the same name is replaced "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.s3:
        from bench import checkpoint_s3

        out = Path(args.out or "bench/checkpoint_s3.json")
        result = checkpoint_s3.run(Path(args.repo or checkpoint_s3.REPO).resolve(), args.label)
        kept = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r["label"] != args.label]
        atomic_write_text(out, json.dumps([*kept, result], indent=2) + "\n")
        print(f"results in {out}")
        return 0
    args.out = args.out or "bench/checkpoint_bytes.json"
    results = [
        measure(
            "ResNet34 U-Net width 1.0 (configs/tgs.yaml)",
            "configs/tgs.yaml",
            [[], ["train.snapshots=3"], ["train.snapshots=3", "train.swa_epochs=25"]],
        ),
        measure(
            "CPU preset width 0.125 (configs/cpu.yaml)", "configs/cpu.yaml", [[], ["train.swa_epochs=3"]]
        ),
    ]
    mb = 1e6
    for r in results:
        print(
            f"{r['recipe']}: weights {r['weights_bytes'] / mb:.1f} MB, Adam {r['adam_state_bytes'] / mb:.1f} MB, "
            f"OOF {r['oof_bytes_per_fold'] / mb:.1f} MB/fold"
        )
        print(
            f"  before: fold checkpoint {r['before_fold_checkpoint'] / mb:.1f} MB, trial {r['before_trial'] / mb:.0f} MB"
        )
        for row in r["after"]:
            print(
                f"  after {' '.join(row['overrides']) or '(no snapshots/SWA)'}: fold checkpoint "
                f"{row['fold_checkpoint_mid'] / mb:.1f} MB at epoch {row['mid_epoch']} / "
                f"{row['fold_checkpoint_end'] / mb:.1f} MB at the end (resume {row['after_end']['resume'] / mb:.1f} "
                f"+ members {row['after_end']['members'] / mb:.1f}); trial: running {row['running_trial'] / mb:.0f} MB, "
                f"finished {row['finished_trial'] / mb:.0f} MB, stopped {row['stopped_trial_at_mid'] / mb:.0f} MB"
            )
    atomic_write_text(Path(args.out), json.dumps(results, indent=2) + "\n")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
