"""The run report: RUN/report/index.html, one static page with PNGs beside it (no server, no notebook),
(re)built from the run folder alone, finished or still running.

`python -m orchestrator.report --run DIR` reads progress.jsonl (every epoch of every fold, per trial in a
search), config.json, and once the folds are collected cv.json, oof.npz and oof_truth.npz (truth masks and
tiles); for a search also trials.csv and optuna.db. Sections follow the TGS case studies' pictures:
training curves per fold with the loss switch (and snapshot epochs when the config has them), the OOF
threshold curve, the worst OOF tiles coloured TP/FP/FN, the OOF metric by coverage class and score bucket,
the empty-image confusion, and for a search the trials table, Optuna's history and importances and the
pruning picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.run_report import build
from salt_model.cli import make_parser, run_cli

EXAMPLES = [
    ("(re)build runs/cpu/report/index.html", "--run runs/cpu"),
]


def main(argv: list[str] | None = None) -> int:
    args = make_arg_parser().parse_args(argv)
    print(f"report: {build(Path(args.run))}")
    return 0


def make_arg_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m orchestrator.report", __doc__, EXAMPLES)
    parser.add_argument(
        "--run", required=True, metavar="DIR", help="the run folder (--out) of orchestrator.train or .tune"
    )
    return parser


def cli() -> None:
    """The console script (pyproject.toml): main with the clear-error exit of `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
