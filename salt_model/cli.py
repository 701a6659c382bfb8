"""Command-line plumbing shared by every entry point: config flags and clean error exits."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from salt_model.config import Config, load_config, parse_override
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


# epoch counts that `--epochs E` scales with it unless --set names them: the BCE -> Lovasz switch and
# the SWA window keep their share of the epochs (rounded up, at most E)
SCALED_WITH_EPOCHS = ("train.loss_switch_epoch", "train.swa_epochs")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.folds is not None:
        overrides.append(f"data.folds={args.folds}")
    epochs = getattr(args, "epochs", None)
    if epochs is not None:
        overrides += scaled_with_epochs(load_config(args.config).train, args.overrides, epochs)
        overrides.append(f"train.epochs={epochs}")
    return load_config(args.config, overrides)


def scaled_with_epochs(train, overrides: list[str], epochs: int) -> list[str]:
    """Overrides that keep the config's epoch counts in proportion to `--epochs` (each said on the
    console); the ones --set names are the user's."""
    if epochs < 1 or epochs == train.epochs:
        return []  # a bad --epochs is refused by the config check, naming it
    named = {parse_override(item)[0] for item in overrides}
    scaled = []
    for key in SCALED_WITH_EPOCHS:
        old = getattr(train, key.split(".")[1])
        new = min(epochs, math.ceil(old * epochs / train.epochs))
        if key not in named and new != old:
            print(
                f"--epochs {epochs}: {key} {old} -> {new} (scaled with the epochs; --set {key}=N to choose)"
            )
            scaled.append(f"{key}={new}")
    return scaled


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
