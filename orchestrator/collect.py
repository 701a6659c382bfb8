"""Runs on the driver after fit(): the final shared checkpoint's folds collected into the run folder
(every ensemble variant's OOF, the chosen members, oof.npz), and a finished run's checkpoints pruned
(a search's CheckpointPruner prunes each trial's as it ends).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
from ray.train import Checkpoint

from orchestrator.storage import filesystem, is_uri, join
from salt_model import run_folder
from salt_model.config import Config
from salt_model.data.loading import SaltData
from salt_model.evaluation.inference import save_fold_model
from salt_model.io import atomic_savez
from salt_model.training.fold_loop import checkpoint_name, load_checkpoint, members_name, strip_resume_state
from salt_model.training.members import member_from_payload
from salt_model.training.variants import cross_validate


@dataclass
class KFoldResult:
    scores: list[float]  # best held-out metric of each fold (optimistic: the epoch was chosen on it)
    best_epochs: list[int]
    cv: dict  # salt_model.training.variants.cross_validate: every ensemble variant's OOF figures and the chosen one
    oof_probs: np.ndarray  # (N, 101, 101) float32 OOF of the chosen variant, in data order
    oof_empty: np.ndarray | None  # (N,)
    histories: list[list[dict]]
    model_paths: list[Path]  # the chosen variant's members, k x s

    @property
    def chosen(self):
        return self.cv["variants"][self.cv["chosen"]]


def collect_folds(
    checkpoint: Checkpoint, out: Path, data: SaltData, folds: np.ndarray, k: int
) -> KFoldResult:
    """The final shared checkpoint -> every variant's OOF figures, the chosen variant's members in
    OUT/models/fold_{r}_{member}.pt (k x s files) and its float32 OOF in OUT/state/oof.npz."""
    per_fold, scores, epochs, histories = [], [], [], []
    with checkpoint.as_directory() as directory:
        for fold in range(k):
            ckpt = load_checkpoint(Path(directory) / checkpoint_name(fold))
            members = {m.name: m for m in map(member_from_payload, ckpt["members"])}
            per_fold.append((np.flatnonzero(folds == fold), members, ckpt))
            scores.append(float(ckpt["best_score"]))
            epochs.append(int(ckpt["best_epoch"]))
            histories.append(ckpt["history"])
    rule = Config.from_dict(per_fold[0][2]["config"], source="checkpoint").decode.empty_rule
    cv = cross_validate([(val, members) for val, members, _ in per_fold], data.masks, rule=rule)
    chosen = cv["variants"][cv["chosen"]]
    models = out / run_folder.MODELS
    for stale in models.glob("fold_*.pt"):  # a rerun may choose another variant
        stale.unlink()
    paths = []
    for fold, (_, members, ckpt) in enumerate(per_fold):
        config = Config.from_dict(ckpt["config"], source="checkpoint")
        for name in chosen.member_names[fold]:
            m = members[name]
            path = models / run_folder.member_file(fold, name)
            save_fold_model(path, m.state, config, fold, m.score, m.epoch, member=name)
            paths.append(path)
    oof_probs = np.zeros(data.images.shape, dtype=np.float32)
    oof_probs[cv["index"]] = chosen.probs
    arrays = {"ids": data.ids, "fold": folds, "probs": oof_probs, "variant": np.asarray(chosen.name)}
    oof_empty = None
    if chosen.empty is not None:
        oof_empty = np.zeros(len(data), dtype=np.float32)
        oof_empty[cv["index"]] = chosen.empty
        arrays["empty"] = oof_empty
    atomic_savez(out / run_folder.OOF, **arrays)
    return KFoldResult(scores, epochs, cv, oof_probs, oof_empty, histories, paths)


def prune_run_checkpoints(run_dir: str | Path, k: int) -> tuple[str | Path | None, int]:
    """A stopped or finished k-fold run keeps only its newest complete checkpoint, stripped of the
    optimizer state (fold_loop.strip_resume_state). `run_dir` is a local path or a storage URI (s3://...),
    pruned through the pyarrow filesystem Ray wrote it with. Returns (the kept checkpoint, bytes freed)."""
    fs, inner = filesystem(str(run_dir))
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    files = {  # checkpoint name -> {file name: bytes}
        name: {
            i.path.rsplit("/", 1)[-1]: i.size
            for i in fs.get_file_info(pafs.FileSelector(f"{inner.rstrip('/')}/{name}", recursive=True))
            if i.type == pafs.FileType.File
        }
        for name in names
    }
    wanted = {n for r in range(k) for n in (checkpoint_name(r), members_name(r))}
    complete = [name for name in names if wanted <= set(files[name])]  # names are timestamps
    if not complete:
        return None, 0
    keep, freed = complete[-1], 0
    for name in names:
        if name != keep:
            freed += sum(files[name].values())
            fs.delete_dir(f"{inner.rstrip('/')}/{name}")
    kept = f"{inner.rstrip('/')}/{keep}"
    for fold in range(k):
        freed += _strip_on(fs, f"{kept}/{checkpoint_name(fold)}")
    return (join(str(run_dir), keep) if is_uri(str(run_dir)) else Path(run_dir) / keep), freed


def _strip_on(fs: pafs.FileSystem, path: str) -> int:
    """strip_resume_state on a file of `fs`: in place on a local disk, else downloaded, stripped and
    uploaded again (only when it shrank)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return strip_resume_state(path)
    with tempfile.TemporaryDirectory(prefix="salt-strip-") as local:
        copy = Path(local) / path.rsplit("/", 1)[-1]
        with fs.open_input_stream(path) as f:
            copy.write_bytes(f.readall())
        saved = strip_resume_state(copy)
        if saved > 0:
            with fs.open_output_stream(path) as f:
                f.write(copy.read_bytes())
    return saved
