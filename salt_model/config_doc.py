"""docs/configuration.md, generated from salt_model/config.py so that it cannot drift from the code: one
table per config section with each key's type, default and meaning (the comment beside the field).

config.py documents each field with a comment: on the field's own line, or on the comment lines right
above it (both when there are both). `render()` turns every section into a table of key, type,
default and that comment; `python -m salt_model.config_doc` writes the page, and
tests/test_config_doc.py fails when the committed page and `render()` differ.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import tokenize
from pathlib import Path

from salt_model import config as config_module
from salt_model.cli import make_parser, run_cli
from salt_model.config import SECTIONS
from salt_model.io import atomic_write_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

INTRO = """\
# Configuration

<!-- Generated from salt_model/config.py by `python -m salt_model.config_doc`; edit the field comments
there, not this file. tests/test_config_doc.py checks that it is current. -->

`orchestrator.train`, `orchestrator.tune` and `salt_model.train` take `--config FILE` (YAML or JSON)
and any number of `--set section.key=value` overrides (`--folds K` and `--epochs E` set `data.folds`
and `train.epochs`; `--epochs E` also scales `train.loss_switch_epoch` and `train.swa_epochs` with it,
rounded up, unless `--set` names them, and says so). An unknown key or a bad value is an error naming the key and what is allowed.
Keys a file does not set keep the defaults below; the built-in defaults are the embedded default run
(narrow model, 3 folds, 4 epochs, 4 trials). A config file may start with `extends: OTHER.yaml`
(relative to the file): OTHER is read first and this file's keys replace its keys one by one.
`configs/` holds the presets (see the README). The resolved config is saved as `config.json` in every
run folder.
"""

# where a section's behaviour is described at length
SEE_ALSO = {
    "search": "[The search](search.md)",
    "cluster": "[On a cluster](cluster.md)",
    "pseudo": "[Pseudo-label rounds](pseudo-labels.md)",
    "decode": "[Outputs](outputs.md) (`cv.json`)",
    "tracking": "[Tracking](tracking.md)",
}


def field_comments(source: str, class_name: str) -> dict[str, str]:
    """{field: its comment text} for the dataclass `class_name` in `source`: the comment lines right
    above the field, then the comment on its own line, joined into one line."""
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == class_name)
    found = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        above, row = [], item.lineno - 1
        while row in comments and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, comments[row])
            row -= 1
        own = [comments[item.end_lineno]] if item.end_lineno in comments else []
        found[item.target.id] = " ".join(above + own)
    return found


def format_default(value: object) -> str:
    """A default as it is written in a YAML config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(format_default(v) for v in value) + "]"
    return repr(value)


def format_type(annotation: str) -> str:
    return {"str | None": "str or null", "tuple[str, ...]": "list of str"}.get(annotation, annotation)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(name: str, cls: type, source: str) -> str:
    comments = field_comments(source, cls.__name__)
    rows = [f"## {name}", ""]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # not dataclass's generated one
        rows += [" ".join(cls.__doc__.split()), ""]
    if name in SEE_ALSO:
        rows += [f"See also {SEE_ALSO[name]}.", ""]
    rows += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(
            f"| `{name}.{f.name}` | {cell(format_type(str(f.type)))} | `{cell(format_default(default))}` "
            f"| {cell(comments.get(f.name, ''))} |"
        )
    return "\n".join(rows) + "\n"


def render() -> str:
    """The whole page: the intro, then one table per config section, in SECTIONS order."""
    source = Path(config_module.__file__).read_text()
    return "\n".join([INTRO, *(section_table(name, cls, source) for name, cls in SECTIONS.items())])


EXAMPLES = [
    ("rewrite docs/configuration.md after editing a field comment in config.py", ""),
    ("write it elsewhere, e.g. to compare", "--out /tmp/configuration.md"),
]


def make_arg_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m salt_model.config_doc", __doc__, EXAMPLES)
    parser.add_argument(
        "--out",
        type=Path,
        default=DOC,
        metavar="FILE",
        help="where to write the page (default: docs/configuration.md in this repository)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_arg_parser().parse_args(argv)
    atomic_write_text(args.out, render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
