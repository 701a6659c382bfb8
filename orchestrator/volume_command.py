"""The `--segy` mode of orchestrator.predict: checks every input before any model is loaded, then
runs orchestrator.volume. Bad input is one `error:` line and exit 2 (a ValueError through run_cli)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from salt_model import run_folder
from salt_model.cli import dated_out
from salt_model.data.segy import ENDIANS, SegyReader, read_geometry
from salt_model.evaluation.section_inference import BLENDS, fit_scaling
from salt_model.io import OutputError, atomic_write, check_writable

MIN_SAMPLES = 51  # half the 101-sample window: fewer is more mirror padding than data


def add_volume_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("whole volumes (--segy)")
    g.add_argument(
        "--segy",
        default=None,
        metavar="IN.sgy",
        help="SEG-Y file to predict, or 'synthetic' (a generated cube with salt and known truth); --out is "
        "then the output folder",
    )
    g.add_argument(
        "--direction",
        default="inline",
        choices=["inline", "crossline", "both"],
        help="sections to predict along; both averages the two passes (default: inline)",
    )
    g.add_argument(
        "--iline-byte", type=int, default=189, metavar="BYTE", help="inline number byte (default: 189)"
    )
    g.add_argument(
        "--xline-byte", type=int, default=193, metavar="BYTE", help="crossline number byte (default: 193)"
    )
    g.add_argument(
        "--endian",
        default="auto",
        choices=ENDIANS,
        help="byte order of the file (default: auto, from its binary header)",
    )
    g.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="N",
        help="window stride in samples/traces, 1..101 (default: 51, about half a tile)",
    )
    g.add_argument("--blend", default="gaussian", choices=BLENDS, help="window weights")
    g.add_argument(
        "--clip-percentile",
        type=float,
        default=1.0,
        metavar="P",
        help="amplitudes clipped to the P-th and (100-P)-th percentiles (default: 1.0)",
    )
    g.add_argument(
        "--actors",
        type=int,
        default=None,
        metavar="N",
        help="prediction actors (default: one per GPU, else one per 2 CPUs)",
    )
    g.add_argument(
        "--sections-per-batch", type=int, default=4, metavar="N", help="sections per actor call (default: 4)"
    )
    g.add_argument(
        "--synthetic-shape",
        default="64,64,200",
        metavar="IL,XL,NS",
        help="size of the --segy synthetic cube (default: 64,64,200)",
    )
    g.add_argument("--synthetic-seed", type=int, default=0, metavar="S", help="its seed (default: 0)")


def predict_segy(args: argparse.Namespace) -> int:
    """Validates, then predicts; `args` from orchestrator.predict's parser."""
    from orchestrator.runtime import init_ray
    from orchestrator.submission import actor_resources, load_models
    from orchestrator.volume import directions_for, run_volume

    if args.data is not None:
        raise ValueError("--segy predicts a volume and --data the test tiles: give one of them")
    if args.stride is not None and not 1 <= args.stride <= 101:
        raise ValueError(f"--stride {args.stride}: expected 1..101 (the window size)")
    if args.sections_per_batch < 1 or (args.actors is not None and args.actors < 1):
        raise ValueError("--sections-per-batch and --actors: expected at least 1")
    run = Path(args.run)
    if not run.is_dir():
        raise ValueError(f"--run {run}: no such folder")
    if not (run / run_folder.MODELS).is_dir() or not any((run / run_folder.MODELS).glob("fold_*.pt")):
        raise ValueError(f"run folder {run}: no fold models in {run / 'models'}; train first")
    out = dated_out(args, "volume")  # once the input is known to be good
    try:
        check_writable(out)
    except OutputError as err:
        raise ValueError(f"--out {out}: {err}") from None
    truth = None
    source = args.segy
    if source == "synthetic":
        source, truth = write_synthetic(out, args.synthetic_shape, args.synthetic_seed)
    geometry = read_geometry(source, args.iline_byte, args.xline_byte, args.endian, MIN_SAMPLES)
    directions = directions_for(geometry, args.direction)
    with SegyReader(geometry) as reader:
        samples = reader.sample_traces()
    scaling = fit_scaling(samples, args.clip_percentile)
    print(
        f"{geometry.path}: {geometry.kind}, grid {geometry.shape[0]} x {geometry.shape[1]} x "
        f"{geometry.n_samples} samples, {geometry.n_traces} traces ({geometry.missing} missing), "
        f"format {geometry.format}, {geometry.endian}-endian; amplitudes clipped to "
        f"[{scaling.lo:.4g}, {scaling.hi:.4g}] and mapped to 8 bits"
    )
    payloads = load_models(run)  # only now: every input is known to be good
    init_ray(args.address)
    resources = actor_resources(args.actors)
    summary = run_volume(
        geometry,
        payloads,
        scaling,
        out,
        directions,
        resources,
        stride=args.stride,
        blend=args.blend,
        batch_sections=args.sections_per_batch,
        batch_size=args.batch_size,
        truth=truth,
    )
    t = summary["timings"]
    print(
        f"predicted {geometry.n_traces} traces x {len(directions)} direction(s) with {len(payloads)} members "
        f"on {resources[2]} actor(s) in {t['total_s']:.1f}s ({summary['traces_per_s']:.1f} traces/s)"
    )
    if truth is not None:
        print(f"synthetic cube: IoU against its truth (p > 0.5) {summary['truth_iou']:.4f}")
    print(f"outputs in {out}: salt_probability.sgy, salt_probability.npy, volume.json, report.html")
    return 0


def write_synthetic(out: Path, shape_text: str, seed: int) -> tuple[Path, np.ndarray]:
    """OUT/synthetic_input.sgy and OUT/synthetic_truth.npy (uint8, inline x crossline x sample)."""
    from salt_model.data.synthetic_volume import make_cube, write_cube_segy

    try:
        shape = tuple(int(v) for v in shape_text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 2 or shape[2] < MIN_SAMPLES:
        raise ValueError(
            f"--synthetic-shape {shape_text}: expected IL,XL,NS with IL, XL >= 2 and NS >= {MIN_SAMPLES}"
        )
    t0 = time.perf_counter()
    amplitudes, truth = make_cube(shape, seed)
    path = write_cube_segy(out / "synthetic_input.sgy", amplitudes)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, truth)

    atomic_write(out / "synthetic_truth.npy", save)
    print(
        f"synthetic cube {path}: {shape[0]} x {shape[1]} x {shape[2]}, salt {truth.mean():.0%} "
        f"({time.perf_counter() - t0:.1f}s); truth in {out / 'synthetic_truth.npy'}"
    )
    return path, truth
