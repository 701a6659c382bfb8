"""The processes a test starts, and how it stops them.

Every command runs in its own process group with a private RAY_TMPDIR under the session's temporary
root (tests/conftest.py makes it and removes it at the end), so no Ray a test starts attaches to any
other Ray on the machine, nor another to it. A test stops what it started, and only that: the
command's process tree and group, and the processes whose command line names its private temp dir
(Ray's daemons). Never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_ENV = "SALT_TEST_TMP"  # the session's temporary root (set by tests/conftest.py)


def private_tmpdir(prefix: str = "r") -> str:
    """A new folder under the session's root; short, since Ray's unix socket paths live below it."""
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get(ROOT_ENV, "/tmp"))


def child_env(**extra: str) -> dict:
    """The environment of a command a test starts: its own RAY_TMPDIR, no cluster address or auth mode
    inherited from the shell, this checkout first on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    path = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(RAY_TMPDIR=private_tmpdir(), PYTHONPATH=path, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited already


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if _alive(p)]


def naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a private temp dir), except this one."""
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid() and _alive(int(p))]


def kill_naming(text: str) -> None:
    """SIGKILLs the live processes whose command line contains `text` (a private temp dir)."""
    for pid in naming(text):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen, tmpdir: str | None = None, timeout: float = 60) -> None:
    """SIGKILLs what `proc` started: its process tree (read before anything dies), its process group
    and, with `tmpdir`, every process naming it; returns once all of them are gone."""
    pids = set(descendants(proc.pid))
    if proc.poll() is None:
        pids.add(proc.pid)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if tmpdir:
        pids.update(naming(tmpdir))
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    deadline = time.time() + timeout
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)


def start(cmd: list[str], env: dict | None = None, merge_stderr: bool = True) -> subprocess.Popen:
    """`cmd` in a new process group, its output piped (stderr into stdout unless merge_stderr=False)."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env if env is not None else child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(
    cmd: list[str], env: dict | None = None, timeout: float = 600, own_tmpdir: bool = True
) -> subprocess.CompletedProcess:
    """Runs `cmd` to its end (or its timeout, a test failure) and stops whatever it left behind:
    with `own_tmpdir`, also every process naming its RAY_TMPDIR (False for a driver that attaches to
    a test's `ray start` head, whose daemons name the same temp dir and must live on)."""
    env = env if env is not None else child_env()
    tmpdir = env.get("RAY_TMPDIR") if own_tmpdir else None
    proc = start(cmd, env, merge_stderr=False)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, tmpdir)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{cmd[:4]} ran past {timeout:.0f}s:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        ) from None
    finally:
        stop(proc, tmpdir)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_entry(module: str, args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """An entry point as a user runs it: `python -m module args`, stdout not a terminal, its own Ray."""
    return run([sys.executable, "-m", module, *args], child_env(**env), timeout)


# Runs each case's `python -m MODULE ARGS...` as that command would (runpy, as __main__), one case after
# another in ONE child process, so torch and Ray are imported once, not once per case. argv[1] is a JSON
# {name: [module, args]}; the last stdout line is {name: [exit code, stdout, stderr]}.
_ONE_PROCESS = """
import contextlib, io, json, runpy, sys, traceback, warnings
seen = {}
for name, (module, args) in json.loads(sys.argv[1]).items():
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [module, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")  # each case shows its own warnings, as its own process would
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    seen[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(seen))
"""


def run_in_one_process(cases: dict[str, tuple[list[str], object]], timeout: float = 300) -> dict[str, tuple]:
    """Commands that end before any long work (--help, refused input), name -> ([python, -m, MODULE,
    *args], what the test expects): every case runs in one child process, one after another.
    Returns name -> (exit code, stdout, stderr)."""
    modules = {}
    for name, (args, _) in cases.items():
        assert args[1] == "-m", f"{name}: not a `python -m MODULE` command: {args}"
        modules[name] = [args[2], args[3:]]
    result = run([sys.executable, "-c", _ONE_PROCESS, json.dumps(modules)], timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: tuple(v) for name, v in json.loads(result.stdout.splitlines()[-1]).items()}
