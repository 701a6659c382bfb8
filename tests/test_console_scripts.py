"""The console scripts of pyproject.toml and the `python -m` forms beside them: both reach the same main."""

import importlib
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
    assert capsys.readouterr().out.startswith(f"usage: {script} ")
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
