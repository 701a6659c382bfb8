"""What Ray costs: k folds in parallel on Ray Train vs one fold alone, and command start to first step.

`python bench/ray_overhead.py [--folds 2] [--epochs 2] [--set KEY=VALUE ...] [--out bench/ray_overhead.json]`

Same per-fold work in both arms: each fold trains on the same number of tiles with one torch thread,
and the Ray arm gets one CPU per fold (run it with at least k cores free for a fair figure). The time to
the first training step is read from the run's own progress.jsonl: the first report's time minus the
length of that first epoch.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

START = time.time()  # before the heavy imports: "command start"

import torch  # noqa: E402

from salt_model import run_folder  # noqa: E402
from salt_model.cli import add_config_args, config_from_args, make_parser, run_cli  # noqa: E402
from salt_model.data.folds import make_folds  # noqa: E402
from salt_model.data.loading import load_split, resolve_data  # noqa: E402
from salt_model.io import atomic_write_text  # noqa: E402
from salt_model.training.fold_loop import train_fold  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    examples = [("2 folds of 2 epochs, the defaults", "--folds 2 --epochs 2 --out bench/ray_overhead.json")]
    parser = make_parser("python bench/ray_overhead.py", __doc__, examples)
    add_config_args(parser)
    parser.add_argument("--out", default="bench/ray_overhead.json", metavar="FILE", help="JSON results file")
    args = parser.parse_args(argv)
    if args.folds is None:
        args.folds = 2
    if args.epochs is None:
        args.epochs = 2
    args.overrides = ["train.threads=1", *args.overrides]
    config = config_from_args(args)
    k = config.data.folds
    data = load_split(resolve_data(args.data, config.data), "train")
    folds = make_folds(data.masks, k, config.data.fold_seed)

    import ray

    from orchestrator.kfold import run_kfold
    from orchestrator.runtime import FoldResources, init_ray

    init_ray(num_cpus=k)
    with tempfile.TemporaryDirectory() as tmp:
        ray_start = time.time()
        run_kfold(config, data, folds, Path(tmp) / "run", FoldResources(cpus=1, gpus=0, threads=1))
        ray_wall = time.time() - ray_start
        progress = [
            json.loads(line) for line in (Path(tmp) / "run" / run_folder.PROGRESS).read_text().splitlines()
        ]
    first_step = progress[0]["time"] - progress[0]["epoch_s"]
    ray.shutdown()

    torch.set_num_threads(1)
    alone_start = time.time()
    train_fold(config, data, 0, folds=folds, device="cpu")
    alone_wall = time.time() - alone_start

    figures = {
        "folds": k,
        "epochs": config.train.epochs,
        "tiles": len(data),
        "kfold_on_ray_wall_s": round(ray_wall, 1),
        "one_fold_alone_wall_s": round(alone_wall, 1),
        "ray_overhead_s": round(ray_wall - alone_wall, 1),
        "command_start_to_first_step_s": round(first_step - START, 1),
        "run_start_to_first_step_s": round(first_step - ray_start, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) per fold",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    for key, value in figures.items():
        print(f"{key:>32}: {value}")
    atomic_write_text(Path(args.out), json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
