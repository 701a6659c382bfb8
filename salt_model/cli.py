"""Command-line plumbing shared by every entry point: config flags and clean error exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from salt_model.config import Config, load_config
from salt_model.io import OutputError


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An entry point's parser, with its module docstring as the help text; `prog` (the `python -m`
    form) gives way to the console script's name when it runs as one (salt-train, ...)."""
    script = Path(sys.argv[0]).name
    return argparse.ArgumentParser(
        prog=script if script.startswith("salt-") else prog,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_config_args(parser: argparse.ArgumentParser, epochs: bool = True) -> None:
    parser.add_argument(
        "--data",
        default="synthetic",
        help="Kaggle-layout folder (train/images, train/masks, ...) or 'synthetic' (default)",
    )
    parser.add_argument("--config", default=None, help="YAML or JSON config file (see configs/)")
    parser.add_argument("--folds", type=int, default=None, help="k of the stratified k-fold split")
    if epochs:
        parser.add_argument("--epochs", type=int, default=None, help="epochs per fold")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.batch_size=16 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.folds is not None:
        overrides.append(f"data.folds={args.folds}")
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"train.epochs={args.epochs}")
    return load_config(args.config, overrides)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Runs main; a ValueError (bad input, bad config) becomes one clear line and exit code 2."""
    try:
        code = main(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OutputError as err:  # not writable, disk full: the message names the file
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            "interrupted: finished epochs are checkpointed; run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    sys.exit(code or 0)
