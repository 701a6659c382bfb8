"""The console scripts of pyproject.toml and the `python -m` forms beside them: both reach the same main."""

import importlib
import sys
import tomllib

import pytest

from tests.processes import REPO, start, stop

SCRIPTS = {
    "salt-train": "orchestrator.train:main",
    "salt-tune": "orchestrator.tune:main",
    "salt-predict": "orchestrator.predict:main",
    "salt-report": "orchestrator.report:main",
    "salt-fold": "salt_model.train:main",
}


def test_pyproject_declares_the_scripts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == SCRIPTS


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_target_runs_as_its_script_does(script, monkeypatch, capsys):
    """What pip's generated script does: `sys.exit(main())`, main reading sys.argv."""
    module, _, name = SCRIPTS[script].partition(":")
    main = getattr(importlib.import_module(module), name)
    assert callable(main)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as stopped:
        sys.exit(main())
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


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
