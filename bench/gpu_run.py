"""The GPU run in one command: the GPU, its throughput, all k folds trained at once on it, OOF
thresholds and the k-fold ensemble's submission, within one time budget and without Ray.

    python -m bench.gpu_run --data .tgs --out $OUT --work /tmp/gpu-run [--budget-s 540]
    python -m bench.gpu_run --smoke --data DIR --out /tmp/gpu-smoke      # the same path on CPU, ~1 min

bench/gpu_run.sh is the device machine's wrapper (the carried wheels, then this). Stages, each timed:
1. gpu: nvidia-smi, torch, CUDA, cuDNN, the device's properties;
2. data: the tiles (with --limit-train/--limit-test, the first N of them copied into WORK/data);
3. bench: bench/gpu_bench.py's settings in this process (eager), then the torch.compile ones in a child
   process stopped at the bench's share of the budget (a compilation cannot be cut short in process);
4. plan: the epochs that the measured img/s fit into the training window, the recipe scaled to them
   (bench/gpu_plan.py), saved as WORK/config.json;
5. train: k processes at once, `python -m bench.gpu_fold` (salt_model.train) per fold, sharing the GPU;
   a fold still running when the window closes is stopped and joins from its last checkpoint;
6. cv: salt_model.training.variants over every fold's members: each variant's OOF, thresholds chosen on it;
7. submit: the chosen variant's members, latest first in rounds over the folds (so a cut keeps every
   fold), predict the test tiles with flip TTA (bench/quality.write_submission).
OUT gets figures.json (rewritten after every stage), submission.csv and gpu_run.log; WORK the folds'
checkpoints and members (GBs at width 1.0: keep it off the device machine's $OUT).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import torch

from bench import gpu_bench, gpu_plan
from bench.machine import cpu_model
from bench.quality import write_submission
from bench.throughput import _jsonable
from salt_model import run_folder
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.data.folds import load_folds
from salt_model.data.loading import has_test, load_split, resolve_data
from salt_model.device import pick_device
from salt_model.evaluation.metric import image_scores
from salt_model.evaluation.thresholds import binarize, default_thresholds
from salt_model.io import atomic_write_text
from salt_model.model import build_model
from salt_model.training.checkpoint import load_checkpoint
from salt_model.training.fold_loop import evaluate, fold_split
from salt_model.training.members import Member, cpu_copy, member_from_payload
from salt_model.training.variants import cross_validate

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["model.width=0.125", "train.batch_size=8", "data.folds=2"]  # before the user's --set
BENCH_SHARE = 0.18  # of the budget: eager settings, then compiled ones until it is spent


class Log:
    """Prints and appends to OUT/gpu_run.log, each line stamped with the seconds since the start."""

    def __init__(self, path: Path, start: float):
        self.path, self.start, self.lock = path, start, threading.Lock()

    def __call__(self, text: str) -> None:
        stamp = f"[{time.perf_counter() - self.start:7.1f}s] "
        lines = "\n".join(stamp + line for line in str(text).rstrip("\n").splitlines() or [""])
        with self.lock:
            print(lines, flush=True)
            with open(self.path, "a") as f:
                f.write(lines + "\n")


def main(argv: list[str] | None = None) -> int:
    examples = [
        ("the GPU run", "--data .tgs --out $OUT --work /tmp/gpu-run --budget-s 540"),
        ("the same path on CPU", "--smoke --data DIR --out /tmp/gpu-smoke"),
    ]
    parser = make_parser("python -m bench.gpu_run", __doc__, examples)
    add_config_args(parser, default_config=str(REPO / "configs" / "tgs.yaml"))
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for figures.json, submission.csv and gpu_run.log"
    )
    parser.add_argument(
        "--work",
        default=None,
        metavar="DIR",
        help="folder for the folds' checkpoints and members (default: OUT/work)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        metavar="S",
        help="wall seconds for the whole run, every stage included (default: 540, 300 with --smoke)",
    )
    parser.add_argument(
        "--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument(
        "--limit-train",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N labelled tiles (default: all)",
    )
    parser.add_argument(
        "--limit-test",
        type=int,
        default=None,
        metavar="N",
        help="predict only the first N test tiles (default: all)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 folds, 4 epochs, short bench")
    args = parser.parse_args(argv)
    epochs, args.epochs = args.epochs, None  # the plan scales the recipe to them (fitted when None)
    if args.smoke:
        args.overrides = SMOKE + list(args.overrides)
        epochs = epochs or 4
    budget = args.budget_s or (300.0 if args.smoke else 540.0)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_run.log", start)
    config = config_from_args(args)
    device = pick_device(args.device)
    deadline = start + budget
    figures: dict = {"command": sys.argv if argv is None else argv, "smoke": args.smoke, "budget_s": budget}
    figures["stages"] = {}
    children: list[subprocess.Popen] = []

    def save_figures() -> None:
        atomic_write_text(out / "figures.json", json.dumps(figures, indent=2, default=_jsonable) + "\n")

    @contextlib.contextmanager
    def stage(name: str):
        t = time.perf_counter()
        log(f"== {name} (budget left {deadline - t:.0f}s)")
        try:
            yield
        finally:
            figures["stages"][name] = round(time.perf_counter() - t, 2)
            figures["wall_s"] = round(time.perf_counter() - start, 2)
            save_figures()
            log(f"== {name} done in {figures['stages'][name]:.1f}s")

    try:
        with stage("gpu"):
            figures["gpu"] = gpu_info(device, log)
        with stage("data"):
            root = prepare_data(args.data, config, work, args.limit_train, args.limit_test)
            data = load_split(root, "train")
            n_test = len(load_split(root, "test")) if has_test(root) else 0
            figures["data"] = {"root": str(root), "train_tiles": len(data), "test_tiles": n_test}
            log(f"data {root}: {len(data)} labelled, {n_test} test tiles")
        with stage("bench"):
            bench_end = time.perf_counter() + BENCH_SHARE * budget
            figures["throughput"] = run_bench(
                config, data, root, device, args.smoke, work, bench_end, log, children
            )
        with stage("plan"):
            figures["plan"] = make_plan(config, figures["throughput"], len(data), n_test, deadline, epochs)
            config = config.with_overrides(figures["plan"]["overrides"])
            config.save(work / "config.json")
            figures["config"] = config.to_dict()
            log(json.dumps({k: v for k, v in figures["plan"].items() if k != "overrides"}))
            log(f"recipe: {figures['plan']['overrides']}")
        with stage("train"):
            window_end = time.perf_counter() + figures["plan"]["window_s"]
            figures["train"] = train_folds(config, root, work, device, window_end, log, children)
        with stage("cv"):
            folds, figures["folds"] = collect_folds(config, data, work, device, log)
            cv = cross_validate(folds, data.masks)
            figures["cv"] = cv_figures(cv, data.masks)
            log_cv(figures["cv"], log)
        with stage("submit"):
            if n_test:
                figures["submission"] = submit(cv, folds, config, root, device, out, deadline - 3)
                log(f"submission: {figures['submission']}")
    finally:
        for proc in children:
            stop(proc)
        figures["wall_s"] = round(time.perf_counter() - start, 2)
        save_figures()
    log(summary(figures))
    return 0


def gpu_info(device: torch.device, log: Log) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "device": str(device),
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        run = subprocess.run([smi], capture_output=True, text=True, timeout=60)
        log(run.stdout + run.stderr)
        info["nvidia_smi"] = run.stdout
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            name=p.name,
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(),
        )
    log(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}))
    return info


def prepare_data(spec: str, config, work: Path, n_train: int | None, n_test: int | None) -> Path:
    """The data folder; with limits, a copy of the first n_train labelled and n_test test tiles."""
    root = resolve_data(spec, config.data).resolve()
    if n_train is None and n_test is None:
        return root
    dest = work / "data"
    shutil.rmtree(dest, ignore_errors=True)
    train_ids = sorted(p.stem for p in (root / "train" / "images").glob("*.png"))[:n_train]
    for folder in ("train/images", "train/masks"):
        (dest / folder).mkdir(parents=True)
        for i in train_ids:
            shutil.copyfile(root / folder / f"{i}.png", dest / folder / f"{i}.png")
    test_ids = []
    if has_test(root) and (n_test is None or n_test > 0):
        sample = root / "sample_submission.csv"
        listed = pd.read_csv(sample, dtype=str)["id"] if sample.is_file() else None
        test_ids = list(
            listed if listed is not None else sorted(p.stem for p in (root / "test/images").glob("*.png"))
        )
        test_ids = test_ids[:n_test]
        (dest / "test" / "images").mkdir(parents=True)
        for i in test_ids:
            shutil.copyfile(root / "test" / "images" / f"{i}.png", dest / "test" / "images" / f"{i}.png")
    keep = set(train_ids) | set(test_ids)
    for name in ("train.csv", "depths.csv", "sample_submission.csv"):
        if (root / name).is_file() and (name != "sample_submission.csv" or test_ids):
            frame = pd.read_csv(root / name, dtype={"id": str}, keep_default_na=False)
            frame[frame["id"].isin(keep)].to_csv(dest / name, index=False)
    return dest


def run_bench(
    config, data, root, device, smoke: bool, work: Path, end: float, log: Log, children: list
) -> list:
    """Eager settings here, then the compiled model steps in a child killed at `end`."""
    torch.backends.cudnn.benchmark = True
    figures: list[dict] = []

    def emit(figure: dict) -> None:
        figures.append(figure)
        log(gpu_bench.describe(figure))

    cpus = os.cpu_count() or 1
    sizes = (4, 8) if smoke else (32, 64, 128)
    workers = sorted({fold_workers(config, cpus), min(8, max(0, cpus - 2))})
    steps, seconds, warmup = (2, 0.0, 1) if smoke else (20, 2.0, 5)
    timing = gpu_bench.timing_for(device, steps, seconds, warmup)
    batch = config.train.batch_size
    # the figures the plan needs come first; past `end` the rest are recorded as skipped
    settings = [
        ("model_steps", lambda: gpu_bench.model_steps(config, data, sizes, False, timing, end, emit)),
        ("inference", lambda: gpu_bench.inference(config, data, 8 if smoke else 64, timing, emit)),
        ("score_pass", lambda: gpu_bench.score_pass(data, emit)),
        ("pipelines", lambda: gpu_bench.pipelines(config, data, workers, timing, end, emit)),
        ("augment", lambda: gpu_bench.augment(config, data, 100 if smoke else 2000, emit)),
        ("flops", lambda: gpu_bench.flops_per_image(config, data, device, emit)),
        ("profile", lambda: gpu_bench.profile_step(config, data, batch, 1 if smoke else 5, timing, emit)),
    ]
    for name, measure in settings:
        if time.perf_counter() > end and name != "inference":  # the plan needs an inference figure
            emit({"name": name, "skipped": "time budget"})
            continue
        try:
            measure()
        except Exception as err:  # a figure that fails is recorded; the run goes on without it
            emit({"name": name, "error": f"{type(err).__name__}: {err}"[:500]})
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    config.save(work / "bench_config.json")
    jsonl = work / "compile.jsonl"
    jsonl.unlink(missing_ok=True)
    left = end - time.perf_counter()
    if left < 10:
        return figures + [{"name": f"model_step_b{b}_compiled", "skipped": "time budget"} for b in sizes]
    cmd = [sys.executable, "-m", "bench.gpu_bench", "--data", str(root), "--compile"]
    cmd += ["--config", str(work / "bench_config.json"), "--device", str(device), "--out", str(jsonl)]
    cmd += ["--batch-sizes", ",".join(map(str, sizes)), "--deadline-s", f"{max(left - 15, 0):.0f}"]
    cmd += ["--min-steps", str(steps), "--min-seconds", str(seconds), "--warmup", str(max(warmup, 1))]
    proc = spawn(cmd, "compile | ", log, children)
    status = wait_until(proc, end)
    compiled = gpu_bench.read_jsonl(jsonl)
    names = {f["name"] for f in compiled}
    for b in sizes:
        if f"model_step_b{b}_compiled" not in names:
            compiled.append({"name": f"model_step_b{b}_compiled", "batch": b, "skipped": status})
    figures += compiled
    return figures


def fold_workers(config, cpus: int) -> int:
    """Loader processes per fold: what the CPUs leave beside k fold processes, at most the config's."""
    k = config.data.folds
    return max(0, min(config.train.loader_workers, (cpus - k) // k))


def make_plan(
    config, throughput: list, n_tiles: int, n_test: int, deadline: float, epochs: int | None
) -> dict:
    by_name = {f["name"]: f for f in throughput if "images_per_s" in f or "seconds" in f}
    k, cpus = config.data.folds, os.cpu_count() or 1
    workers = fold_workers(config, cpus)
    steps = [f["images_per_s"] for n, f in by_name.items() if n.startswith("model_step") and "eager" in n]
    best_step = max(steps) if steps else 1.0
    batch = config.train.batch_size
    pipe = by_name.get(f"pipeline_b{batch}_w{workers}", {}).get("images_per_s", best_step)
    infer = next((f["images_per_s"] for n, f in by_name.items() if n.startswith("inference")), best_step)
    score = by_name.get("score_pass", {}).get("seconds", 0.05)
    train_rate = gpu_plan.training_rate(pipe, best_step, k)
    epoch_s = gpu_plan.epoch_seconds(n_tiles, k, train_rate, infer)
    post_s = gpu_plan.post_seconds(config, n_test, score, infer)
    left = deadline - time.perf_counter()
    window = max(left - post_s, 0.5 * left)  # an overestimated post stage never starves the training
    fitted = gpu_plan.fit_epochs(
        window - gpu_plan.STARTUP_S, epoch_s, gpu_plan.cycles_of(config), config.train.epochs
    )
    chosen = epochs or fitted
    overrides = gpu_plan.scaled_recipe(config, chosen)
    overrides["train.loader_workers"] = workers
    overrides["train.threads"] = max(1, cpus // k - workers)
    return {
        "train_img_s_estimate": train_rate,
        "pipeline_img_s_one_fold": pipe,
        "best_model_step_img_s": best_step,
        "eval_tiles_s": infer,
        "epoch_s_estimate": epoch_s,
        "post_s_estimate": post_s,
        "window_s": window,
        "epochs_fitted": fitted,
        "epochs": chosen,
        "overrides": overrides,
    }


def train_folds(config, root: Path, work: Path, device, window_end: float, log: Log, children: list) -> dict:
    """k fold processes at once; those still running at window_end are stopped (their checkpoints stay)."""
    k = config.data.folds
    procs = []
    for fold in range(k):
        cmd = [sys.executable, "-m", "bench.gpu_fold", "--data", str(root), "--fold", str(fold)]
        cmd += ["--config", str(work / "config.json"), "--out", str(work / "folds"), "--device", str(device)]
        cmd += ["--restart"]
        procs.append(spawn(cmd, f"fold {fold} | ", log, children))
    start, util = time.perf_counter(), []
    next_sample = start + 10
    while any(p.poll() is None for p in procs) and time.perf_counter() < window_end:
        time.sleep(0.5)
        if device.type == "cuda" and time.perf_counter() > next_sample:
            next_sample += 10
            util.append(gpu_utilisation(time.perf_counter() - start))
    stopped = [f for f, p in enumerate(procs) if p.poll() is None]
    for fold in stopped:
        log(f"fold {fold}: still training when the window closed: stopped, joins from its last checkpoint")
        stop(procs[fold])
    return {
        "wall_s": time.perf_counter() - start,
        "return_codes": [p.wait() for p in procs],
        "stopped_folds": stopped,
        "gpu_utilisation": util,
    }


def gpu_utilisation(at_s: float) -> dict:
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
    try:
        fields = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split(",")
        return {"t_s": round(at_s, 1), "util_pct": float(fields[0]), "memory_mib": float(fields[1])}
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return {"t_s": round(at_s, 1), "util_pct": None}


def collect_folds(config, data, work: Path, device, log: Log) -> tuple[list, list]:
    """(val_index, members) of every fold with a checkpoint. A fold stopped early contributes its
    last checkpoint's weights as its "last" member, scored on its held-out tiles (never chosen on them)."""
    folder = work / "folds"
    if not (folder / run_folder.FOLDS).is_file():
        raise RuntimeError(f"{folder}: no fold process got as far as writing folds.csv (see the fold lines)")
    folds = load_folds(folder / run_folder.FOLDS, data.ids)
    out, info = [], []
    for fold in range(config.data.folds):
        path = folder / run_folder.STATE / f"fold_{fold}.pt"  # salt_model.train's checkpoint
        if not path.is_file():
            log(f"fold {fold}: no checkpoint, left out of the ensemble")
            info.append({"fold": fold, "status": "missing"})
            continue
        ckpt = load_checkpoint(path)
        members = {m.name: m for m in map(member_from_payload, ckpt["members"])}
        _, val_idx = fold_split(data, fold, config, folds)
        status = "finished"
        if "last" not in members:
            status = "partial"
            model = build_model(config.model)
            model.load_state_dict(ckpt["model"])
            model.to(device)
            metrics, probs, empty = evaluate(model, data.subset(val_idx), ckpt["epoch"] - 1, config, device)
            weights = cpu_copy(model.state_dict())
            members = {n: m for n, m in members.items() if n == "best" or n.startswith("snap")}
            members["last"] = Member("last", ckpt["epoch"], metrics["val_map"], probs, empty, weights)
        info.append(
            {
                "fold": fold,
                "status": status,
                "epochs": ckpt["epoch"],
                "members": {n: {"epoch": m.epoch, "val_map": m.score} for n, m in members.items()},
                "history": ckpt["history"],
            }
        )
        log(f"fold {fold}: {status} after {ckpt['epoch']} epochs, members {sorted(members)}")
        out.append((val_idx, members))
    if not out:
        raise RuntimeError("no fold left a checkpoint: nothing to ensemble (see the fold lines above)")
    return out, info


def cv_figures(cv: dict, masks) -> dict:
    chosen = cv["variants"][cv["chosen"]]
    truth = masks[cv["index"]].astype(bool)
    truly_empty = ~truth.any(axis=(1, 2))

    def scored(th) -> dict:
        pred = binarize(chosen.probs, chosen.empty, th)
        predicted_empty = ~pred.any(axis=(1, 2))
        return {
            "thresholds": th.to_dict(),
            "metric": float(image_scores(truth, pred).mean()),
            "false_empty_rate": float((predicted_empty & ~truly_empty).sum() / max(1, (~truly_empty).sum())),
            "false_salt_rate": float((~predicted_empty & truly_empty).sum() / max(1, truly_empty.sum())),
        }

    return {
        "chosen": chosen.name,
        "thresholds": chosen.thresholds.to_dict(),
        "oof_score": chosen.oof_score,
        "tiles": len(truth),
        "all_empty_baseline": float(truly_empty.mean()),
        "default": scored(default_thresholds(chosen.empty)),
        "at_chosen": scored(chosen.thresholds),
        "variants": {name: v.summary() for name, v in cv["variants"].items()},
    }


def log_cv(cv: dict, log: Log) -> None:
    for name, v in cv["variants"].items():
        log(
            f"{'*' if name == cv['chosen'] else ' '} {name:<14} folds {[round(s, 4) for s in v['fold_scores']]} "
            f"OOF {v['oof_score_default_thresholds']:.4f} default, {v['oof_score']:.4f} at {v['thresholds']}"
        )
    log(f"chosen {cv['chosen']}: false-empty rate {cv['at_chosen']['false_empty_rate']:.3f}")


def submit(cv: dict, folds: list, config, root: Path, device, out: Path, deadline: float) -> dict:
    """The chosen variant's members, latest first, in rounds over the folds, until the deadline."""
    chosen = cv["variants"][cv["chosen"]]
    lists = [
        [members[n] for n in reversed(names)]
        for (_, members), names in zip(folds, chosen.member_names, strict=True)
    ]
    ordered = [m[j] for j in range(max(map(len, lists))) for m in lists if j < len(m)]
    result = write_submission(
        out / "submission.csv", ordered, config, root, chosen.thresholds, device, deadline
    )
    result["members_available"] = len(ordered)
    result["thresholds"] = chosen.thresholds.to_dict()
    return result


def spawn(cmd: list[str], prefix: str, log: Log, children: list) -> subprocess.Popen:
    """A child in its own process group, its output relayed line by line into the log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    children.append(proc)

    def relay() -> None:
        for line in proc.stdout:
            log(prefix + line.rstrip())

    threading.Thread(target=relay, daemon=True).start()
    return proc


def wait_until(proc: subprocess.Popen, end: float) -> str:
    while proc.poll() is None and time.perf_counter() < end:
        time.sleep(0.2)
    if proc.poll() is None:
        stop(proc)
        return "stopped at the bench's time budget"
    return "finished" if proc.returncode == 0 else f"exit code {proc.returncode}"


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL to the child's own process group (it and its loader workers), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def summary(f: dict) -> str:
    lines = ["", "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in f["stages"].items())]
    for fig in f.get("throughput", []):
        if "table" not in fig:
            lines.append("  " + gpu_bench.describe(fig))
    plan = f.get("plan", {})
    if plan:
        lines.append(
            f"plan: {plan['epochs']} epochs (fitted {plan['epochs_fitted']}), estimated "
            f"{plan['epoch_s_estimate']:.1f}s/epoch at {plan['train_img_s_estimate']:.0f} img/s"
        )
    for fold in f.get("folds", []):
        lines.append(f"  fold {fold['fold']}: {fold['status']} {fold.get('epochs', 0)} epochs")
    if "cv" in f:
        cv = f["cv"]
        lines.append(
            f"OOF {cv['chosen']}: {cv['oof_score']:.4f} at {cv['thresholds']} "
            f"(default {cv['default']['metric']:.4f}), false-empty {cv['at_chosen']['false_empty_rate']:.3f}"
        )
    if "submission" in f:
        s = f["submission"]
        lines.append(f"submission: {s['tiles']} rows, {s['members']}/{s['members_available']} members")
    lines.append(f"wall {f['wall_s']:.0f}s of the {f['budget_s']:.0f}s budget")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
