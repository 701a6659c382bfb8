"""The console scripts of pyproject.toml and the `python -m` forms beside them: both reach the same main,
and every entry point's --help reads the same way: one paragraph, a metavar, help and default on every
flag, an examples epilog."""

import argparse
import importlib
import json
import re
import sys
import tomllib

import pytest

from tests.processes import REPO, start, stop

SCRIPTS = {
    "salt-train": "orchestrator.train:cli",
    "salt-tune": "orchestrator.tune:cli",
    "salt-predict": "orchestrator.predict:cli",
    "salt-report": "orchestrator.report:cli",
    "salt-fold": "salt_model.train:cli",
}

BAD_INPUT = {  # each refused before any work starts
    "salt-train": ["--config", "/nonexistent/config.yaml", "--out", "/nonexistent/out"],
    "salt-tune": ["--config", "/nonexistent/config.yaml"],
    "salt-predict": ["--run", "/nonexistent/run"],
    "salt-report": ["--run", "/nonexistent/run"],
    "salt-fold": ["--config", "/nonexistent/config.yaml", "--out", "/nonexistent/out"],
}


def test_pyproject_declares_the_scripts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == SCRIPTS


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_target_runs_as_its_script_does(script, monkeypatch, capsys):
    """What pip's generated script does: `sys.exit(cli())`, cli reading sys.argv; its usage line names
    the script, and a bad input is one `error:` line with exit code 2, as with `python -m`."""
    module, _, name = SCRIPTS[script].partition(":")
    cli = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as stopped:
        sys.exit(cli())
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {script} ") and f"\n  {script} " in shown  # the examples too
    monkeypatch.setattr(sys, "argv", [script, *BAD_INPUT[script]])
    with pytest.raises(SystemExit) as stopped:
        sys.exit(cli())
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err


def test_the_python_m_forms_print_their_help():
    modules = sorted({target.partition(":")[0] for target in SCRIPTS.values()})
    procs = {m: start([sys.executable, "-m", m, "--help"], merge_stderr=False) for m in modules}
    try:
        for module, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, (
                f"python -m {module} --help exited {proc.returncode}: {stderr[-2000:]}"
            )
            assert stdout.startswith("usage: ") and "Traceback" not in stderr, module
    finally:
        for proc in procs.values():
            stop(proc)


# every entry point, each with make_arg_parser(): its parser, built without running main
ENTRY_POINTS = sorted({t.partition(":")[0] for t in SCRIPTS.values()} | {"salt_model.config_doc"})


def parser_of(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).make_arg_parser()


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_flag_has_help_a_metavar_and_its_default(module):
    parser = parser_of(module)
    formatter = parser._get_formatter()
    for action in flags(parser):
        name = action.option_strings[-1]
        assert action.help, f"{module} {name}: no help text"
        if action.nargs != 0:  # takes a value: say what
            assert action.metavar or action.choices, f"{module} {name}: no metavar or choices"
        shown = formatter._get_help_string(action)
        nothing = action.default is None or action.default is False or action.default in ("", [])
        if not nothing:  # 0 is a default worth showing
            assert "(default" in shown, f"{module} {name}: default {action.default!r} not shown"
    text = parser.format_help()
    assert "default: None" not in text and "default: False" not in text, text


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_is_one_paragraph_and_an_examples_epilog(module):
    parser = parser_of(module)
    doc = importlib.import_module(module).__doc__
    assert parser.description and "\n\n" not in parser.description.strip(), parser.description
    assert doc.strip().startswith(parser.description)  # the docstring's first paragraph, the rest kept
    assert parser.epilog, f"{module}: no examples epilog"
    lines = parser.epilog.splitlines()
    assert lines[0] == "examples:", parser.epilog
    prog = parser.prog
    commands = [line for line in map(str.strip, lines) if line == prog or line.startswith(f"{prog} ")]
    assert commands, f"{module}: no example line starts with {parser.prog!r}:\n{parser.epilog}"


@pytest.mark.parametrize(
    ("module", "command"),
    [("orchestrator.train", "train"), ("orchestrator.tune", "tune"), ("salt_model.train", "fold")],
)
def test_out_defaults_to_a_dated_folder_under_runs_said_at_the_start(module, command, capsys):
    args = importlib.import_module(module).parse_args([])
    assert re.fullmatch(rf"runs/{command}-\d{{8}}-\d{{6}}", args.out), args.out
    assert f"--out {args.out}" in capsys.readouterr().out  # how to resume it
    assert importlib.import_module(module).parse_args(["--out", "mine"]).out == "mine"


def test_tune_resume_needs_an_out():
    from orchestrator.tune import parse_args

    with pytest.raises(ValueError, match="--resume needs --out"):
        parse_args(["--resume"])


def test_predict_data_defaults_to_what_the_run_was_trained_on(tmp_path, capsys):
    from orchestrator.predict import trained_on

    data, run = tmp_path / "tiles", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    with pytest.raises(ValueError, match="pass --data DIR"):  # no cv.json: a run not finished
        trained_on(run)
    (run / "cv.json").write_text(json.dumps({"data": str(data)}))
    assert trained_on(run) == str(data) and str(data) in capsys.readouterr().out
    data.rmdir()
    with pytest.raises(ValueError, match="not on this machine; pass --data DIR"):
        trained_on(run)
