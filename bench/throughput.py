"""Training, augmentation and inference throughput of one fold's model, in images per second.

`python -m bench.throughput [--data synthetic|DIR] [--config F] [--set KEY=VALUE ...] [--device auto]
[--batch-size 16] [--steps N] [--warmup N] [--precision P] [--compile] [--out bench/throughput.json]`

Four figures, each timed after `--warmup` untimed steps/batches:
- model step: `engine.train_one_epoch` over pre-made batches already on the device (forward, loss,
  backward, optimiser step; no data loading) -- the ceiling the data pipeline has to feed;
- pipeline: `engine.train_one_epoch` over the training DataLoader (SaltDataset + train_transform,
  config.train.loader_workers workers, uint8 -> float on the device), i.e. a real fold's training loop;
- augmentation per core: SaltDataset + train_transform alone in this process with cv2 and torch on
  one thread; the pipeline needs (model step / this) cores of augmentation to keep the model busy;
- inference: `predict.predict_probs` with horizontal-flip TTA (two forward passes per tile).
Precision and memory format follow config.train.precision / channels_last (autocast and channels_last
act on CUDA only, as in training); `--precision` overrides the config. The JSON holds the device, the
torch version, the resolved config, the machine's load average and every figure with its raw seconds.
Other processes on a shared machine depress the wall-clock figures: check `load_avg` in the JSON.
"""

from __future__ import annotations

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
from salt_model.augment import SaltDataset, pad_batch, train_transform
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.config import PRECISIONS, Config
from salt_model.data import load_split, resolve_data
from salt_model.engine import make_optimizer_and_scaler, train_one_epoch
from salt_model.io import atomic_write_text
from salt_model.losses import loss_name
from salt_model.model import build_model
from salt_model.predict import autocast_dtype, pick_device, predict_probs

# Defaults per device type: a full ResNet34 step takes seconds on a laptop CPU, milliseconds on a GPU.
DEFAULTS = {
    "cpu": {"steps": 3, "warmup": 1, "infer_tiles": 32, "aug_tiles": 1000},
    "cuda": {"steps": 50, "warmup": 10, "infer_tiles": 2048, "aug_tiles": 2000},
}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python -m bench.throughput", __doc__)
    add_config_args(parser, epochs=False)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: train.batch_size)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed training steps (default: 3 CPU, 50 CUDA)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 10 CUDA)"
    )
    parser.add_argument(
        "--infer-tiles", type=int, default=None, help="tiles predicted (default: 32 CPU, 2048 CUDA)"
    )
    parser.add_argument("--infer-batch-size", type=int, default=64, help="predict_probs batch size")
    parser.add_argument("--aug-tiles", type=int, default=None, help="tiles augmented (default: 1000 CPU)")
    parser.add_argument(
        "--loss", choices=("bce", "lovasz"), default="bce", help="which training stage's loss"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="overrides train.precision")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (errors are recorded)"
    )
    parser.add_argument("--out", default="bench/throughput.json", help="JSON results file")
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
    steps = _positive("--steps", args.steps, defaults["steps"])
    warmup = _positive("--warmup", args.warmup, defaults["warmup"], allow_zero=True)
    infer_tiles = _positive("--infer-tiles", args.infer_tiles, defaults["infer_tiles"])
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
    step_fig, model, compiled = _train_model_step(model, compiled, data, config, device, epoch, steps, warmup)
    figures = {"model_step": step_fig}
    figures["pipeline"] = _train_pipeline(model, data, config, device, epoch, steps, warmup)
    figures["augment_per_core"] = _augment(data, config, aug_tiles)
    figures["inference_tta"] = _inference(model, data, config, device, infer_tiles, args.infer_batch_size)
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


def _train_model_step(model, compiled, data, config, device, epoch, steps, warmup):
    """train_one_epoch over pre-made device batches: the model's own training speed."""
    batch = config.train.batch_size
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(data), size=(warmup + steps) * batch)
    images = torch.from_numpy(pad_batch(data.images[index], config.data))[:, None].to(device)  # (N, 1, P, P)
    masks = torch.from_numpy(pad_batch(data.masks[index], config.data))[:, None].to(device)
    batches = list(zip(images.split(batch), masks.split(batch), strict=True))
    optimizer, scaler = make_optimizer_and_scaler(model, config, device)

    if warmup:
        start = time.perf_counter()
        try:
            _run_epoch(model, batches[:warmup], optimizer, scaler, epoch, config, device)
        except Exception as err:
            if not compiled["requested"] or compiled["ok"] is False:
                raise
            compiled.update(ok=False, error=_error_text(err))
            print(f"torch.compile failed, measuring the eager model: {compiled['error']}", flush=True)
            model = model._orig_mod
            optimizer, scaler = make_optimizer_and_scaler(model, config, device)
            _run_epoch(model, batches[:warmup], optimizer, scaler, epoch, config, device)
        if compiled["requested"] and compiled["ok"] is None:
            compiled.update(ok=True, warmup_s=time.perf_counter() - start)
    wall, cpu = _timed(
        lambda: _run_epoch(model, batches[warmup:], optimizer, scaler, epoch, config, device), device
    )
    return _figure(steps * batch, wall, cpu, batch=batch, steps=steps), model, compiled


def _train_pipeline(model, data, config, device, epoch, steps, warmup):
    """train_one_epoch over the real DataLoader, built as engine.train_fold builds it."""
    batch = config.train.batch_size
    optimizer, scaler = make_optimizer_and_scaler(model, config, device)

    def loader(n_batches: int, seed: int) -> DataLoader:
        dataset = SaltDataset(data.images, data.masks, train_transform(config.data, seed=seed))
        sampler = RandomSampler(
            dataset,
            replacement=True,
            num_samples=n_batches * batch,
            generator=torch.Generator().manual_seed(seed),
        )
        workers = config.train.loader_workers
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )

    if warmup:
        _run_epoch(model, loader(warmup, 1), optimizer, scaler, epoch, config, device)
    wall, cpu = _timed(
        lambda: _run_epoch(model, loader(steps, 2), optimizer, scaler, epoch, config, device), device
    )
    return _figure(
        steps * batch, wall, cpu, batch=batch, steps=steps, loader_workers=config.train.loader_workers
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


def _inference(model, data, config, device, n_tiles, batch_size):
    images = data.images[np.arange(n_tiles) % len(data)]
    predict_probs(model, images[: min(batch_size, n_tiles)], config, device, batch_size, tta=True)  # warm-up
    wall, cpu = _timed(lambda: predict_probs(model, images, config, device, batch_size, tta=True), device)
    return _figure(n_tiles, wall, cpu, batch=batch_size, tta=True)


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


def _figure(images: int, wall: float, cpu: float, **extra) -> dict:
    return {
        "images": images,
        "wall_s": wall,
        "cpu_s": cpu,
        "images_per_s": images / wall,
        "images_per_cpu_s": images / cpu if cpu > 0 else None,
        **extra,
    }


def _print_table(figures: dict) -> None:
    print(f"{'figure':<18} {'images':>7} {'wall s':>8} {'img/s':>9} {'img/cpu-s':>10}")
    for name, f in figures.items():
        per_cpu = f"{f['images_per_cpu_s']:.1f}" if f["images_per_cpu_s"] else "-"
        print(f"{name:<18} {f['images']:>7} {f['wall_s']:>8.2f} {f['images_per_s']:>9.1f} {per_cpu:>10}")


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
