"""All k folds as one Ray Train run: worker rank r trains fold r with salt_model's training loop.

Folds are independent models, so no gradients are synchronised; the process group (gloo, which
works with and without CUDA) is used only to gather the folds' epoch metrics to rank 0, because Ray
keeps only rank 0's metrics in the Result. `ray.train.report` is a barrier: every fold reports every
epoch (an epoch that salt_model.cadence does not evaluate reports its training metrics only, so the
count of reports never depends on the cadence), and each fold writes its own `fold_{r}.pt` into the shared checkpoint (Ray merges the ranks'
files into one folder). A fold worker that dies restarts the group from the latest checkpoint
(FailureConfig), and re-running with the same output folder resumes a run whose driver died.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import torch.distributed as dist
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator import console
from orchestrator.faults import DETERMINISTIC, RunFailed, inject
from orchestrator.placement import DEFAULT_PLACEMENT_TIMEOUT_S, PlacementWatch, bound_placement, fit_placed
from orchestrator.resume import ResumeFailed, pick_resume, read_fold
from orchestrator.runtime import FoldResources, worker_device
from orchestrator.storage import (
    checkpoints_before,
    filesystem,
    get_file,
    is_uri,
    join,
    put_file,
    ray_storage,
)
from orchestrator.tensorboard import FoldCurves
from salt_model.config import Config
from salt_model.cv import cross_validate
from salt_model.data import SaltData
from salt_model.engine import checkpoint_name, load_checkpoint, members_name, strip_resume_state, train_fold
from salt_model.ensemble import member_from_payload
from salt_model.folds import check_folds_trainable
from salt_model.io import atomic_savez, atomic_write_text
from salt_model.predict import save_fold_model
from salt_model.threads import set_cpu_threads

FOLD_KEYS = ("val_map", "val_iou", "val_loss", "train_loss", "best_val_map", "train_tiles")


def merge_fold_metrics(per_fold: list[dict]) -> dict:
    """Folds' epoch metrics -> the mean of each and every fold's own value (`val_map_fold{r}`)."""
    merged = {
        "epoch": per_fold[0]["epoch"],
        "lr": per_fold[0]["lr"],
        "loss": per_fold[0]["loss"],
        "epoch_s": max(m["epoch_s"] for m in per_fold),
    }
    if "resumed_after" in per_fold[0]:  # the epoch each fold's current attempt started after
        merged["resumed_after"] = min(m["resumed_after"] for m in per_fold)
        merged.update({f"resumed_after_fold{m['fold']}": m["resumed_after"] for m in per_fold})
    if any(m.get("rereport") for m in per_fold):
        merged["rereport"] = True  # a finished run's last epoch reported again, not trained again
    for key in FOLD_KEYS + ("val_empty_acc",):
        if key in per_fold[0]:
            values = [m[key] for m in per_fold]
            merged[key] = float(np.mean(values))
            merged.update({f"{key}_fold{m['fold']}": m[key] for m in per_fold})
    merged.update({f"node_fold{m['fold']}": m["node"] for m in per_fold if "node" in m})  # placement
    return merged


def fold_worker(loop_config: dict) -> None:
    """The per-worker training function: rank r trains fold r and reports every epoch.

    A deterministic error in one fold (faults.DETERMINISTIC) is not raised to Ray, which would retry
    it: the fold joins the next epoch barrier with its reason, every fold reports it once and
    returns, and the driver raises faults.RunFailed (see `FatalReason`).
    """
    context = ray.train.get_context()
    fold = context.get_world_rank()
    config = Config.from_dict(loop_config["config"], source="train_loop_config")
    set_cpu_threads(loop_config["threads"])  # torch and OpenCV, sized to this worker's Ray CPU share
    data: SaltData = ray.get(loop_config["data_ref"])  # one copy per node, from the object store
    extra = ray.get(loop_config["pseudo_ref"]) if loop_config.get("pseudo_ref") is not None else None
    if isinstance(extra, list):  # pseudo.teacher=fold: each fold has its own pseudo-labelled tiles
        extra = extra[fold]
    init_states = ray.get(loop_config["init_ref"]) if loop_config.get("init_ref") is not None else None
    folds = np.asarray(loop_config["folds"])

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # the newest kept checkpoint every fold can read (orchestrator.resume)
        candidates = [checkpoint, *checkpoints_before(checkpoint)]
        try:
            resume, chosen, skipped = pick_resume(candidates, lambda c: read_fold(c, fold), all_folds)
        except ResumeFailed as err:  # every fold has the same reason: each reports it once and stops
            print(f"fold {fold}: {err} (deterministic: not retried)", flush=True)
            ray.train.report({"fatal_error": str(err), "epoch": 0})
            return
        if skipped and fold == 0:
            console.worker_say(
                f"unreadable checkpoint skipped: {'; '.join(skipped)}; resuming from {chosen.path}"
            )
    resumed_after = int(resume["epoch"]) if resume is not None else 0
    if resume is not None:
        console.worker_say(f"fold {fold}: worker restarted, resuming after epoch {resumed_after}")

    gauge = ray.util.metrics.Gauge(  # on this node's Prometheus endpoint as ray_fold_val_map
        "fold_val_map", "held-out competition metric of a fold", tag_keys=("run", "trial", "fold")
    )
    tags = {
        "run": loop_config["run_name"],
        "trial": loop_config.get("trial") or loop_config["run_name"],
        "fold": str(fold),
    }
    node = ray.get_runtime_context().get_node_id()

    reports = 0
    fault = inject(loop_config.get("inject_failure"), fold, lambda: resumed_after + reports)

    def gather(payload: dict) -> list[dict]:
        gathered = all_folds(payload)
        fatal = [m["fatal_error"] for m in gathered if "fatal_error" in m]
        if fatal:  # every fold reports the reason once (report is a barrier) and stops
            ray.train.report({"fatal_error": "; ".join(fatal), "epoch": resumed_after + reports})
            raise _Stop
        return gathered

    def report(metrics: dict, save) -> None:
        nonlocal reports
        epoch = metrics["epoch"]
        metrics = fault(epoch, metrics)
        reports += 1
        if "val_map" in metrics:  # an evaluated epoch
            gauge.set(metrics["val_map"], tags=tags)
        # the run's own record of resumes: the epoch each fold's current attempt started after
        merged = merge_fold_metrics(gather({**metrics, "node": node, "resumed_after": resumed_after}))
        if save is not None and (epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs):
            with tempfile.TemporaryDirectory() as directory:
                save(Path(directory))
                ray.train.report(merged, checkpoint=Checkpoint.from_directory(directory))
        else:
            ray.train.report(merged)

    try:
        result = train_fold(
            config,
            data,
            fold,
            report=report,
            folds=folds,
            resume=resume,
            device=worker_device(loop_config.get("gpus", 0.0)),  # refuses GPUs that CUDA cannot start
            threads=loop_config["threads"],  # the worker's Ray share wins over config.train.threads
            extra=extra,  # a pseudo round's tiles, in this fold's training part only
            init_state=None if init_states is None else init_states[fold],
            eval_at=tuple(loop_config.get("eval_at") or ()),  # a search's ASHA rungs
        )
        if reports == 0:
            # The run was already complete in the checkpoint it resumed from (the driver died after the
            # last epoch). Every fold is in the same state, so every fold reports its last epoch again,
            # once, so that a Tune trial still ends with its metric.
            report({**result.history[-1], "rereport": True}, None)
    except _Stop:
        return
    except DETERMINISTIC as err:
        reason = f"fold {fold}: {type(err).__name__}: {err}"
        print(f"{reason} (deterministic: not retried)", flush=True)
        try:
            gather({"fatal_error": reason})
        except _Stop:
            return


def all_folds(payload: dict) -> list[dict]:
    """Every fold's `payload`, in rank order (gloo all-gather; every fold must call it)."""
    gathered: list[dict] = [None] * ray.train.get_context().get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, payload)
    return gathered


class _Stop(Exception):
    """Unwinds a fold's training loop once any fold has reported a deterministic error."""


class FatalReason(UserCallback):
    """Keeps a deterministic failure's reason: `path` (a JSON file in the run folder) gets it, and
    `copy_uri` (in --storage, if given) a copy, so that a resume into a new run folder still knows it.

    Train's Result holds only checkpointed reports, so the reason travels through this file; the
    driver raises RunFailed from it after fit(), and a Tune trial's searcher records it.
    """

    def __init__(self, path: str, copy_uri: str | None = None):
        self.path, self.copy_uri = path, copy_uri

    def record(self, metrics: dict) -> None:
        atomic_write_text(Path(self.path), json.dumps(metrics) + "\n")
        if self.copy_uri:
            put_file(Path(self.path), self.copy_uri)

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" in metrics[0]:
            self.record(metrics[0])


def fatal_reason(path: Path, copy_uri: str | None = None) -> str | None:
    """The reason recorded by FatalReason in `path` (fetched there from `copy_uri` when only the
    storage has it), if any."""
    if not path.exists() and not (copy_uri and get_file(copy_uri, path)):
        return None
    return json.loads(path.read_text())["fatal_error"]


class FailureNotice(UserCallback):
    """Runs in the Train controller: a failing fold worker becomes one console warning with its cause."""

    def after_exception(self, run_context, worker_exceptions):
        causes = {str(rank): console.cause(e) for rank, e in worker_exceptions.items()}
        console.worker_say({"event": "failure", "folds": causes})


class ProgressFile(FailureNotice):
    """Runs in the Train controller: every epoch's merged metrics go to `OUT/progress.jsonl`, the fold
    curves to `OUT/tensorboard/fold_{r}`, and an event to the driver's live view."""

    def __init__(self, out: str, folds: int):
        self.out, self.folds = out, folds
        self.curves = None

    def after_report(self, run_context, metrics, checkpoint):
        if "fatal_error" in metrics[0]:
            return  # FatalReason keeps it
        Path(self.out).mkdir(parents=True, exist_ok=True)
        with open(Path(self.out) / "progress.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **metrics[0]}) + "\n")
        if self.curves is None:
            self.curves = FoldCurves(Path(self.out) / "tensorboard", self.folds)
        self.curves.add(metrics[0])
        console.worker_say({"event": "epoch", **metrics[0]})


@dataclass
class KFoldResult:
    scores: list[float]  # best held-out metric of each fold (optimistic: the epoch was chosen on it)
    best_epochs: list[int]
    cv: dict  # salt_model.cv.cross_validate: every ensemble variant's OOF figures and the chosen one
    oof_probs: np.ndarray  # (N, 101, 101) float32 OOF of the chosen variant, in data order
    oof_empty: np.ndarray | None  # (N,)
    histories: list[list[dict]]
    model_paths: list[Path]  # the chosen variant's members, k x s

    @property
    def chosen(self):
        return self.cv["variants"][self.cv["chosen"]]


def make_trainer(
    config: Config,
    data_ref,
    folds: np.ndarray,
    resources: FoldResources,
    storage: str,
    run_name: str,
    max_failures: int,
    callbacks: list | None = None,
    inject_failure: dict | None = None,
    trial: str | None = None,
    pseudo_ref=None,
    init_ref=None,
    eval_at: tuple[int, ...] = (),
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S,
    max_preemptions: int = -1,
) -> TorchTrainer:
    """One TorchTrainer whose k workers are the k folds (`pseudo_ref`: a pseudo round's tiles, one
    SaltData for every fold or a list of k; `init_ref`: per-fold start weights, both ObjectRefs or
    None; `eval_at`: epochs every fold evaluates besides its config's cadence, e.g. ASHA's rungs).

    Failures (orchestrator/placement.py): `max_failures` worker-group failures, `max_preemptions`
    restarts after a node preemption (-1: any number; they do not count in `max_failures`), and fold
    workers not placed within `placement_timeout_s` end the run."""
    k = config.data.folds
    start_retries = bound_placement(placement_timeout_s)  # sets Ray Train's start timeout in os.environ
    watch = PlacementWatch(k, resources.as_dict(), start_retries, max_preemptions)
    loop_config = {
        "config": config.to_dict(),
        "data_ref": data_ref,
        "folds": folds.tolist(),
        "threads": resources.threads,
        "gpus": resources.gpus,
        "run_name": run_name,
        "trial": trial,
        "inject_failure": inject_failure,
        "pseudo_ref": pseudo_ref,
        "init_ref": init_ref,
        "eval_at": list(eval_at),
    }
    return TorchTrainer(
        fold_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=k, use_gpu=resources.gpus > 0, resources_per_worker=resources.as_dict()
        ),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(
            name=run_name,
            **ray_storage(str(storage)),
            failure_config=FailureConfig(
                max_failures=max_failures,
                controller_failure_limit=start_retries,
                max_preemption_failures=max_preemptions,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints or None),
            callbacks=[*(callbacks or []), watch],
            logging_config=LoggingConfig(log_level="WARNING"),  # progress comes from our own lines
        ),
    )


def collect_folds(
    checkpoint: Checkpoint, out: Path, data: SaltData, folds: np.ndarray, k: int
) -> KFoldResult:
    """The final shared checkpoint -> every variant's OOF figures, the chosen variant's members in
    OUT/models/fold_{r}_{member}.pt (k x s files) and its float32 OOF in OUT/oof.npz."""
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
    models = out / "models"
    for stale in models.glob("fold_*.pt"):  # a rerun may choose another variant
        stale.unlink()
    paths = []
    for fold, (_, members, ckpt) in enumerate(per_fold):
        config = Config.from_dict(ckpt["config"], source="checkpoint")
        for name in chosen.member_names[fold]:
            m = members[name]
            path = models / f"fold_{fold}_{name}.pt"
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
    atomic_savez(out / "oof.npz", **arrays)
    return KFoldResult(scores, epochs, cv, oof_probs, oof_empty, histories, paths)


def prune_run_checkpoints(run_dir: str | Path, k: int) -> tuple[str | Path | None, int]:
    """A stopped or finished k-fold run keeps only its newest complete checkpoint, stripped of the
    optimizer state (engine.strip_resume_state). `run_dir` is a local path or a storage URI (s3://...),
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


def run_name_for(out: Path) -> str:
    """A Ray run name unique to the output folder, stable across re-runs (so they resume)."""
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]
    return f"kfold-{out.resolve().name}-{digest}"


def run_kfold(
    config: Config,
    data: SaltData,
    folds: np.ndarray,
    out: Path,
    resources: FoldResources,
    max_failures: int = 3,
    inject_failure: dict | None = None,
    run_name: str | None = None,
    storage: str | None = None,
    pseudo: SaltData | list[SaltData] | None = None,
    init_states: list[dict] | None = None,
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S,
    max_preemptions: int = -1,
) -> KFoldResult:
    """Trains all k folds in parallel on Ray (resuming a previous run in `out`) and collects them.

    `storage` is where Ray keeps checkpoints (default OUT/ray); on a multi-node cluster it must be
    reachable from every node (s3://bucket/path or a shared mount). `pseudo`: pseudo-labelled tiles
    every fold adds to its training part (a list: fold r's own tiles at r); `init_states`: each fold's start weights (a pseudo round).
    """
    check_folds_trainable(folds, config.data.folds, config.train.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    failure_file = out / "failure.json"
    failure_file.unlink(missing_ok=True)  # a new attempt (e.g. after fixing the config)
    data_ref = ray.put(data)
    storage = storage or str(out.resolve() / "ray")
    run_name = run_name or run_name_for(out)
    trainer = make_trainer(
        config,
        data_ref,
        folds,
        resources,
        storage,
        run_name,
        max_failures,
        callbacks=[
            ProgressFile(str(out.resolve()), config.data.folds),
            FatalReason(str(failure_file.resolve())),
        ],
        inject_failure=inject_failure,
        pseudo_ref=None if pseudo is None else ray.put(pseudo),
        init_ref=None if init_states is None else ray.put(init_states),
        placement_timeout_s=placement_timeout_s,
        max_preemptions=max_preemptions,
    )
    result = fit_placed(trainer, config.data.folds, resources.as_dict(), placement_timeout_s)
    reason = fatal_reason(failure_file)
    if reason is not None:
        raise RunFailed(f"the run stopped without retrying: {reason}")
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"the run in {out} finished without a checkpoint")
    return collect_folds(result.checkpoint, out, data, folds, config.data.folds)


def write_cv(out: Path, result: KFoldResult, config: Config, extra: dict) -> dict:
    """cv.json: every variant's per-fold and overall OOF, the one the submission uses, its thresholds."""
    chosen = result.chosen
    summary = {
        "submission_variant": chosen.name,
        "submission_members": len(result.model_paths),
        "fold_scores": chosen.fold_scores,
        "mean_fold_score": float(np.mean(chosen.fold_scores)),
        "oof_score": chosen.oof_score,
        "oof_score_default_thresholds": chosen.oof_score_default_thresholds,
        "thresholds": chosen.thresholds.to_dict(),
        # salt tiles predicted empty and empty tiles given salt, per coverage class (salt_model.oof_stats)
        "emptiness": chosen.extra.get("emptiness"),
        "best_epoch_fold_scores": result.scores,  # optimistic: each chosen on its own held-out fold
        "best_epochs": result.best_epochs,
        "variants": {name: v.summary() for name, v in result.cv["variants"].items()},
        **extra,
        "config": config.to_dict(),
    }
    atomic_write_text(out / "cv.json", json.dumps(summary, indent=2) + "\n")
    return summary
