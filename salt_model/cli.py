"""Command-line plumbing shared by every entry point: the parser and its `--help` layout, the config
flags, the dated default --out and clean error exits."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from salt_model.config import Config, load_config, parse_override
from salt_model.io import OutputError

EXAMPLES = "examples:"


class HelpFormatter(argparse.HelpFormatter):
    """`--help` as torchvision's references read: the description re-wrapped to the terminal, the
    examples epilog kept line for line, and each flag's help ending with its default unless the default
    says nothing (None, False, empty) or the help already names it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # --flag-names whole

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if shows_default(action) and "(default" not in help_text:
            value = action.default
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            help_text += " (default: " + shown.replace("%", "%%") + ")"
        return help_text


def shows_default(action: argparse.Action) -> bool:
    """Whether `--help` shows the flag's default: not for None, False, "" or [] (0 is shown)."""
    value = action.default
    return not (value is None or value is False or value is argparse.SUPPRESS or value in ("", []))


def make_parser(
    prog: str, doc: str | None, examples: Sequence[tuple[str, str]] = ()
) -> argparse.ArgumentParser:
    """An entry point's parser: the first paragraph of its module docstring as the description (the
    rest is for readers of the code) and `examples`, (what it does, the arguments) pairs, as the epilog.
    `prog` (the `python -m` form) gives way to the console script's name when it runs as one
    (salt-train, ...)."""
    script = Path(sys.argv[0]).name
    prog = script if script.startswith("salt-") else prog
    lines = [EXAMPLES]
    for what, arguments in examples:
        lines += [f"  # {what}", f"  {prog} {arguments}".rstrip()]
    return argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").strip().split("\n\n")[0] or None,
        epilog="\n".join(lines) if examples else None,
        formatter_class=HelpFormatter,
    )


def add_out_arg(parser: argparse.ArgumentParser, command: str, what: str) -> None:
    """--out DIR, `what` it is; not given, `dated_out` makes it runs/COMMAND-DATE-TIME."""
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=f"{what} (default: runs/{command}-DATE-TIME, the start time)",
    )


def dated_out(args: argparse.Namespace, command: str) -> Path:
    """--out, or runs/COMMAND-DATE-TIME (local time) when it is not given, said on the console with the
    --out that resumes it."""
    if args.out is None:
        args.out = time.strftime(f"runs/{command}-%Y%m%d-%H%M%S")
        print(f"run folder: {args.out} (no --out given; to resume this run, pass --out {args.out})")
    return Path(args.out)


def add_config_args(
    parser: argparse.ArgumentParser, epochs: bool = True, default_config: str | None = None
) -> None:
    parser.add_argument(
        "--data",
        default="synthetic",
        metavar="DIR",
        help="Kaggle-layout folder (train/images, train/masks, ...), or 'synthetic': tiles generated once "
        "and cached",
    )
    parser.add_argument(
        "--config",
        default=default_config,
        metavar="FILE",
        help=f"YAML or JSON config file (default: {default_config or 'the built-in one'}; presets in configs/)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="the number of folds K the labelled tiles are split into, stratified by salt coverage: "
        "data.folds (default: the config's)",
    )
    if epochs:
        parser.add_argument(
            "--epochs",
            type=int,
            default=None,
            metavar="E",
            help="epochs per fold: train.epochs; the loss switch and the SWA window scale with it unless --set "
            "names them (default: the config's)",
        )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.batch_size=16 (repeatable; every key: "
        "docs/configuration.md)",
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
