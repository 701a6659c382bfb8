"""The throughput settings of the GPU run, timed with bench/throughput.py's own functions.

    python -m bench.gpu_bench --data DIR --config configs/tgs.yaml [--compile] [--batch-sizes 32,64,128] \
        [--min-seconds 2] --out FIGURES.jsonl

One JSON line per figure, appended as soon as it is measured, so a process stopped at its time limit
(bench/gpu_run.py runs the `--compile` settings in such a child: a compilation cannot be interrupted in
process) leaves every figure it finished. Settings, each after warm-up steps:
- model_step at each batch size (`throughput._train_model_step`: forward, loss, backward, Adam on device
  batches), in the config's precision and memory format (bf16 autocast and channels_last on CUDA), eager
  or `torch.compile`d;
- pipeline: the same step fed by the real training DataLoader with each of `--workers` loader processes;
- inference_tta: `inference.predict_probs` with flip TTA, `--infer-batch-size` tiles per call;
- augment_per_core: the training transform alone on one core;
- score_s: one `binarize` + `image_scores` pass over the training tiles (what the OOF threshold search
  repeats ~84 times per ensemble variant), so the run can budget its CPU stage.
Past `--deadline-s` (seconds from the start) a setting is recorded as skipped instead of measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench import throughput
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli
from salt_model.config import Config
from salt_model.data.augment import pad_batch
from salt_model.data.loading import SaltData, load_split, resolve_data
from salt_model.device import pick_device
from salt_model.evaluation.metric import image_scores
from salt_model.evaluation.thresholds import Thresholds, binarize
from salt_model.training.fold_loop import make_optimizer_and_scaler

Emit = Callable[[dict], None]


def timing_for(device: torch.device, min_steps: int, min_seconds: float, warmup: int) -> dict:
    return {"warmup": warmup, "min_steps": min_steps, "min_seconds": min_seconds, "device": device}


def model_steps(
    config: Config, data: SaltData, batch_sizes, use_compile: bool, timing: dict, deadline: float, emit: Emit
) -> None:
    """model_step at each batch size; a compiled model is compiled once and re-traced per size."""
    tag = "compiled" if use_compile else "eager"
    model = compiled = None
    for batch in batch_sizes:
        name = f"model_step_b{batch}_{tag}"
        if time.perf_counter() > deadline:
            emit({"name": name, "batch": batch, "skipped": "time budget"})
            continue
        cfg = config.with_overrides({"train.batch_size": batch})
        if model is None:
            model, compiled = throughput._model(cfg, timing["device"], use_compile)
        if use_compile and compiled["ok"] is not False:  # each new size compiles again: time it
            compiled = {**compiled, "ok": None, "warmup_s": None}
        start = time.perf_counter()
        figure, model, compiled = throughput._train_model_step(model, compiled, data, cfg, 0, timing)
        emit(_named(name, figure, batch=batch, compile=dict(compiled), total_s=time.perf_counter() - start))


def pipelines(config: Config, data: SaltData, workers, timing: dict, deadline: float, emit: Emit) -> None:
    """The loader-fed training step at config.train.batch_size with each worker count."""
    model, _ = throughput._model(config, timing["device"], False)
    for n in workers:
        name = f"pipeline_b{config.train.batch_size}_w{n}"
        if time.perf_counter() > deadline:
            emit({"name": name, "skipped": "time budget"})
            continue
        cfg = config.with_overrides({"train.loader_workers": n})
        emit(_named(name, throughput._train_pipeline(model, data, cfg, 0, timing)))


def inference(config: Config, data: SaltData, batch: int, timing: dict, emit: Emit) -> None:
    model, _ = throughput._model(config, timing["device"], False)
    emit(_named(f"inference_tta_b{batch}", throughput._inference(model, data, config, batch, timing)))


def augment(config: Config, data: SaltData, tiles: int, emit: Emit) -> None:
    emit(_named("augment_per_core", throughput._augment(data, config, tiles)))


def score_pass(data: SaltData, emit: Emit) -> None:
    """Seconds of one binarize + image_scores pass over len(data) tiles (the threshold search's unit)."""
    rng = np.random.default_rng(0)
    probs = rng.random(data.images.shape, dtype=np.float32)
    empty = rng.random(len(data), dtype=np.float32)
    truth = data.masks.astype(bool)
    start = time.perf_counter()
    passes = 3
    for _ in range(passes):
        image_scores(truth, binarize(probs, empty, Thresholds(pixel=0.5, min_area=10, empty=0.5)))
    emit({"name": "score_pass", "tiles": len(data), "seconds": (time.perf_counter() - start) / passes})


def flops_per_image(config: Config, data: SaltData, device: torch.device, emit: Emit) -> None:
    """FLOPs of one training step per image (forward + backward, counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2
    model, _ = throughput._model(config, torch.device("cpu"), False)
    images, masks = _device_batch(config, data, batch, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        throughput._run_epoch(
            model, [(images, masks)], *_optim(model, config), 0, config, torch.device("cpu")
        )
    emit({"name": "flops_per_image", "train_step_gflop": counter.get_total_flops() / batch / 1e9})


def profile_step(config: Config, data: SaltData, batch: int, steps: int, timing: dict, emit: Emit) -> None:
    """The kernels that take the most device time over `steps` eager training steps (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    device = timing["device"]
    cfg = config.with_overrides({"train.batch_size": batch})
    model, _ = throughput._model(cfg, device, False)
    images, masks = _device_batch(cfg, data, batch, device)
    optim = _optim(model, cfg)
    step = lambda: throughput._run_epoch(model, [(images, masks)], *optim, 0, cfg, device)  # noqa: E731
    for _ in range(min(3, steps)):
        step()
    throughput._sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        throughput._sync(device)
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=15)
    emit({"name": f"profile_b{batch}", "profiled_steps": steps, "table": table})


def _device_batch(config: Config, data: SaltData, batch: int, device: torch.device):
    index = np.random.default_rng(0).integers(0, len(data), size=batch)
    pad = lambda a: torch.from_numpy(pad_batch(a[index], config.data))[:, None].to(device)  # noqa: E731
    return pad(data.images), pad(data.masks)  # (B, 1, P, P) uint8 each


def _optim(model, config: Config):
    return make_optimizer_and_scaler(model, config, next(model.parameters()).device)


def _named(name: str, figure: dict, **extra) -> dict:
    return {"name": name, **figure, **extra}


def jsonl_writer(path: Path) -> Emit:
    """An emit function appending one JSON line per figure (flushed at once) and printing it."""

    def emit(figure: dict) -> None:
        line = json.dumps(figure, default=throughput._jsonable)
        with open(path, "a") as f:
            f.write(line + "\n")
        print(describe(figure), flush=True)

    return emit


def describe(figure: dict) -> str:
    if "skipped" in figure:
        return f"{figure['name']:<28} skipped ({figure['skipped']})"
    if "error" in figure:
        return f"{figure['name']:<28} failed: {figure['error']}"
    if "table" in figure:
        return f"{figure['name']} (top kernels by device time):\n{figure['table']}"
    if "train_step_gflop" in figure:
        return f"{'flops_per_image':<28} {figure['train_step_gflop']:.1f} GFLOP per image per training step"
    if figure["name"] == "score_pass":
        return f"{'score_pass':<28} {figure['seconds']:.3f} s per pass over {figure['tiles']} tiles"
    spread = (
        f" ({figure['images_per_s_p10']:.0f}-{figure['images_per_s_p90']:.0f})" if "steps" in figure else ""
    )
    steps = f", {figure['steps']} steps" if "steps" in figure else ""
    note = ""
    if figure.get("compile", {}).get("requested"):
        c = figure["compile"]
        note = f" | compile ok={c['ok']} warm-up {c['warmup_s'] or 0:.1f}s" + (
            f" {c['error']}" if c.get("error") else ""
        )
    return f"{figure['name']:<28} {figure['images_per_s']:>9.1f} img/s{spread}{steps}{note}"


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    examples = [
        (
            "eager and compiled settings, one JSON line each",
            "--data DIR --config configs/tgs.yaml --compile --out FIGURES.jsonl",
        )
    ]
    parser = make_parser("python -m bench.gpu_bench", __doc__, examples)
    add_config_args(parser, epochs=False)
    parser.add_argument(
        "--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default: eager)")
    parser.add_argument(
        "--batch-sizes",
        default="32,64,128",
        metavar="B,B,...",
        help="training batch sizes to time, comma-separated",
    )
    parser.add_argument(
        "--min-steps", type=int, default=20, metavar="N", help="timed steps at least, per figure"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, metavar="S", help="timed wall seconds at least, per figure"
    )
    parser.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed steps before each figure")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=1e9,
        metavar="S",
        help="seconds from the start after which a setting is recorded as skipped (default: none)",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="JSON lines file, one line per figure, appended"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = config_from_args(args)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    data = load_split(resolve_data(args.data, config.data), "train")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    timing = timing_for(device, args.min_steps, args.min_seconds, args.warmup)
    emit = jsonl_writer(Path(args.out))
    model_steps(config, data, sizes, args.compile, timing, start + args.deadline_s, emit)
    return 0


if __name__ == "__main__":
    run_cli(main)
