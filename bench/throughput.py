"""Training, augmentation and inference throughput of one fold's model, in images per second.

`python -m bench.throughput [--data synthetic|DIR] [--config F] [--set KEY=VALUE ...] [--device auto]
[--batch-size 16] [--min-steps N] [--min-seconds S] [--warmup N] [--precision P] [--compile]
[--out bench/throughput.json]`

Four figures, each timed after `--warmup` untimed steps/batches, then step by step until at least
`--min-steps` steps AND `--min-seconds` of wall time (a few steps after one warm-up understated the
CPU speed about 3x: the first steps pay for allocator growth and thread-pool start-up). Each figure
reports img/s at the median step time with its spread (img/s at the slowest and fastest 10% of steps)
and the mean over the whole timed window:
- model step: `fold_loop.train_one_epoch` over pre-made batches already on the device (forward, loss,
  backward, optimiser step; no data loading) -- the ceiling the data pipeline has to feed;
- pipeline: `fold_loop.train_one_epoch` over the training DataLoader (SaltDataset + train_transform,
  config.train.loader_workers workers, uint8 -> float on the device), i.e. a real fold's training loop;
- augmentation per core: SaltDataset + train_transform alone in this process with cv2 and torch on
  one thread; the pipeline needs (model step / this) cores of augmentation to keep the model busy;
- inference: `inference.predict_probs` with horizontal-flip TTA (two forward passes per tile).
Precision and memory format follow config.train.precision / channels_last (autocast and channels_last
act on CUDA only, as in training); `--precision` overrides the config. The JSON holds the device, the
torch version, the resolved config, the machine's load average and every figure with its raw seconds.
Other processes on a shared machine depress the wall-clock figures: check `load_avg` in the JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from bench.machine import cpu_model
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.config import PRECISIONS, Config
from salt_model.data.augment import SaltDataset, loader_worker_init, pad_batch, train_transform
from salt_model.data.loading import load_split, resolve_data
from salt_model.device import autocast_dtype, pick_device
from salt_model.evaluation.inference import predict_probs
from salt_model.io import atomic_write_text
from salt_model.model import build_model
from salt_model.training.fold_loop import make_optimizer_and_scaler, train_one_epoch
from salt_model.training.losses import loss_name

# Defaults per device type: a full ResNet34 step takes seconds on a laptop CPU, milliseconds on a GPU.
DEFAULTS = {
    "cpu": {"steps": 10, "seconds": 30.0, "warmup": 3, "aug_tiles": 1000},
    "cuda": {"steps": 50, "seconds": 10.0, "warmup": 10, "aug_tiles": 2000},
}


def main(argv: list[str] | None = None) -> int:
    examples = [
        ("the built-in model on generated tiles", ""),
        ("the competition recipe on a GPU", "--data DIR --config configs/tgs.yaml --device cuda --compile"),
    ]
    parser = make_parser("python -m bench.throughput", __doc__, examples)
    add_config_args(parser, epochs=False)
    parser.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto (cuda if available), cpu, cuda, cuda:1 ..."
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="training batch: overrides train.batch_size (default: the config's)",
    )
    parser.add_argument(
        "--min-steps",
        type=int,
        default=None,
        metavar="N",
        help="timed steps at least, per figure (default: 10 CPU, 50 CUDA)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        metavar="S",
        help="timed wall seconds at least, per figure (default: 30 CPU, 10 CUDA)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="N",
        help="untimed steps before each figure (default: 3 CPU, 10 CUDA)",
    )
    parser.add_argument(
        "--infer-batch-size", type=int, default=64, metavar="B", help="tiles per predict_probs batch"
    )
    parser.add_argument(
        "--aug-tiles",
        type=int,
        default=None,
        metavar="N",
        help="tiles augmented for the per-core figure (default: 1000 CPU, 2000 CUDA)",
    )
    parser.add_argument(
        "--loss",
        choices=("bce", "lovasz"),
        default="bce",
        help="which training stage's loss is timed: bce before train.loss_switch_epoch, lovasz from it on",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="overrides train.precision (default: the config's)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (errors are recorded)"
    )
    parser.add_argument("--out", default="bench/throughput.json", metavar="FILE", help="JSON results file")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.precision is not None:
        overrides.append(f"train.precision={args.precision}")
    args.overrides = overrides
    config = config_from_args(args)
    device = pick_device(None if args.device == "auto" else args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    steps = _positive("--min-steps", args.min_steps, defaults["steps"])
    seconds = defaults["seconds"] if args.min_seconds is None else args.min_seconds
    if seconds < 0:
        raise ValueError(f"--min-seconds={seconds}: expected >= 0")
    warmup = _positive("--warmup", args.warmup, defaults["warmup"], allow_zero=True)
    aug_tiles = _positive("--aug-tiles", args.aug_tiles, defaults["aug_tiles"])
    _positive("--infer-batch-size", args.infer_batch_size, 1)
    if args.compile and warmup == 0:
        raise ValueError("--compile needs --warmup >= 1: compilation happens in the first, untimed steps")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    data = load_split(resolve_data(args.data, config.data), "train")
    epoch = 0 if args.loss == "bce" else config.train.loss_switch_epoch
    load_before = os.getloadavg()
    print(
        f"device {_device_name(device)} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
        f"{config.model.encoder} width {config.model.width} | batch {config.train.batch_size} | "
        f"{_precision(config, device)} | loss {loss_name(epoch, config.train)} | load avg "
        f"{load_before[0]:.1f} on {os.cpu_count()} cpus",
        flush=True,
    )

    model, compiled = _model(config, device, args.compile)
    timing = {"warmup": warmup, "min_steps": steps, "min_seconds": seconds, "device": device}
    step_fig, model, compiled = _train_model_step(model, compiled, data, config, epoch, timing)
    figures = {"model_step": step_fig}
    figures["pipeline"] = _train_pipeline(model, data, config, epoch, timing)
    figures["augment_per_core"] = _augment(data, config, aug_tiles)
    figures["inference_tta"] = _inference(model, data, config, args.infer_batch_size, timing)
    load_after = os.getloadavg()

    _print_table(figures)
    result = {
        "device": _device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": {"before": load_before, "after": load_after},
        "precision": _precision(config, device),
        "channels_last": bool(config.train.channels_last and device.type == "cuda"),
        "loss": loss_name(epoch, config.train),
        "compile": compiled,
        "args": {k: v for k, v in vars(args).items() if k != "overrides"} | {"overrides": args.overrides},
        "config": config.to_dict(),
        "figures": figures,
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2, default=_jsonable) + "\n")
    print(f"wrote {args.out}")
    return 0


def _model(config: Config, device: torch.device, use_compile: bool):
    torch.manual_seed(config.train.seed)
    model = build_model(config.model).to(device)
    if config.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    info = {"requested": use_compile, "ok": None, "error": None, "warmup_s": None}
    if use_compile:
        try:
            model = torch.compile(model)
        except Exception as err:  # compile itself is lazy; most failures come at the first call
            info.update(ok=False, error=_error_text(err))
    return model, info


def _train_model_step(model, compiled, data, config, epoch, timing):
    """train_one_epoch over pre-made device batches (8, cycled): the model's own training speed."""
    device, batch = timing["device"], config.train.batch_size
    index = np.random.default_rng(0).integers(0, len(data), size=8 * batch)
    images = torch.from_numpy(pad_batch(data.images[index], config.data))[:, None].to(device)  # (N, 1, P, P)
    masks = torch.from_numpy(pad_batch(data.masks[index], config.data))[:, None].to(device)
    batches = list(zip(images.split(batch), masks.split(batch), strict=True))
    optimizer, scaler = make_optimizer_and_scaler(model, config, device)

    def step(b):
        _run_epoch(model, [b], optimizer, scaler, epoch, config, device)

    if timing["warmup"] and compiled["requested"]:
        start = time.perf_counter()
        try:
            step(batches[0])
        except Exception as err:
            if compiled["ok"] is False:
                raise
            compiled.update(ok=False, error=_error_text(err))
            print(f"torch.compile failed, measuring the eager model: {compiled['error']}", flush=True)
            model = model._orig_mod
            optimizer, scaler = make_optimizer_and_scaler(model, config, device)
        if compiled["ok"] is None:
            compiled.update(ok=True, warmup_s=time.perf_counter() - start)
    figure = _time_steps(step, itertools.cycle(batches), batch, timing)
    return figure, model, compiled


def _train_pipeline(model, data, config, epoch, timing):
    """train_one_epoch over the real DataLoader, built as fold_loop.train_fold builds it."""
    device, batch = timing["device"], config.train.batch_size
    optimizer, scaler = make_optimizer_and_scaler(model, config, device)
    dataset = SaltDataset(data.images, data.masks, train_transform(config.data), seed=1)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=10**6 * batch, generator=torch.Generator().manual_seed(1)
    )
    workers = config.train.loader_workers
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        worker_init_fn=loader_worker_init,
        pin_memory=device.type == "cuda",
    )

    def step(b):
        _run_epoch(model, [b], optimizer, scaler, epoch, config, device)

    # the batch is fetched inside the timed step: loading and augmentation count
    return _time_steps(step, iter(loader), batch, timing, loader_workers=workers)


def _time_steps(step, batches, batch_images: int, timing: dict, **extra) -> dict:
    """Warm-up steps, then one step at a time until min_steps and min_seconds are both reached.

    Each step's wall time includes fetching its batch from `batches` (an iterator).
    """
    device = timing["device"]
    for _ in range(timing["warmup"]):
        step(next(batches))
    _sync(device)
    times = []
    start = last = time.perf_counter()
    cpu = time.process_time()
    while len(times) < timing["min_steps"] or last - start < timing["min_seconds"]:
        step(next(batches))
        _sync(device)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return _figure(
        len(times) * batch_images,
        last - start,
        time.process_time() - cpu,
        step_s=times,
        batch=batch_images,
        **extra,
    )


def _augment(data, config, n_tiles):
    """SaltDataset + train_transform on one core: cv2 and torch single-threaded for the measurement."""
    dataset = SaltDataset(data.images, data.masks, train_transform(config.data, seed=0))
    order = np.random.default_rng(0).integers(0, len(data), size=n_tiles)
    cv2_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        for i in order[: min(50, n_tiles)]:  # warm-up
            dataset[int(i)]
        wall, cpu = _timed(lambda: [dataset[int(i)] for i in order], torch.device("cpu"))
    finally:
        cv2.setNumThreads(cv2_threads)
        torch.set_num_threads(torch_threads)
    return _figure(n_tiles, wall, cpu)


def _inference(model, data, config, batch_size, timing):
    """predict_probs with flip TTA, one batch of tiles per timed step."""
    device = timing["device"]
    order = np.random.default_rng(0).integers(0, len(data), size=8 * batch_size)
    tiles = [data.images[order[i : i + batch_size]] for i in range(0, len(order), batch_size)]

    def step(images):
        predict_probs(model, images, config, device, batch_size, tta=True)

    return _time_steps(step, itertools.cycle(tiles), batch_size, timing, tta=True)


def _run_epoch(model, batches, optimizer, scaler, epoch, config, device):
    # step 0 each time: the lr does not matter for throughput
    return train_one_epoch(model, batches, optimizer, scaler, epoch, 0, config, device)


def _timed(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn(), with the device synchronised at both ends."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _figure(images: int, wall: float, cpu: float, step_s: list[float] | None = None, **extra) -> dict:
    figure = {
        "images": images,
        "wall_s": wall,
        "cpu_s": cpu,
        "images_per_s_mean": images / wall,
        "images_per_s": images / wall,
        "images_per_cpu_s": images / cpu if cpu > 0 else None,
        **extra,
    }
    if step_s:
        per_step = images / len(step_s)
        p10, p50, p90 = np.percentile(step_s, [10, 50, 90])
        figure.update(
            steps=len(step_s),
            images_per_s=per_step / p50,  # at the median step time
            images_per_s_p10=per_step / p90,  # the slowest 10% of steps
            images_per_s_p90=per_step / p10,  # the fastest 10%
            step_s=[round(t, 5) for t in step_s],
        )
    return figure


def _print_table(figures: dict) -> None:
    print(
        f"{'figure':<18} {'steps':>6} {'images':>7} {'wall s':>8} {'img/s median':>13} "
        f"{'(p10-p90)':>15} {'img/s mean':>11} {'img/cpu-s':>10}"
    )
    for name, f in figures.items():
        per_cpu = f"{f['images_per_cpu_s']:.1f}" if f["images_per_cpu_s"] else "-"
        spread = f"{f['images_per_s_p10']:.1f}-{f['images_per_s_p90']:.1f}" if "steps" in f else "-"
        print(
            f"{name:<18} {f.get('steps', '-'):>6} {f['images']:>7} {f['wall_s']:>8.2f} "
            f"{f['images_per_s']:>13.1f} {spread:>15} {f['images_per_s_mean']:>11.1f} {per_cpu:>10}"
        )


def _precision(config: Config, device: torch.device) -> str:
    dtype = autocast_dtype(config.train.precision, device)
    effective = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    return f"{config.train.precision} -> {effective}"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu_model()}"


def _positive(flag: str, value: int | None, default: int, allow_zero: bool = False) -> int:
    value = default if value is None else value
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{flag}={value}: expected an integer >= {0 if allow_zero else 1}")
    return value


def _error_text(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    run_cli(main)
