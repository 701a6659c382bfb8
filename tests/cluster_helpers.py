"""Real Ray clusters on this machine for the cluster tests: `ray start` heads in their own process
group and a private RAY_TMPDIR under the session's root (so no other Ray on the machine attaches to
them, nor they to it), explicit free ports, and cleanup that stops only the processes the test
started (tests/processes.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.moto_s3 import free_port
from tests.processes import child_env, kill_naming, private_tmpdir, run


def private_env(tmpdir: str, **extra: str) -> dict:
    return child_env(RAY_TMPDIR=tmpdir, **extra)


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, to the process group this test started (and nothing else)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            time.sleep(1)  # the group's other members exit after its leader
        except subprocess.TimeoutExpired:
            pass


def stop_tmpdir_processes(tmpdir: str) -> None:
    """Ray processes whose command line names this test's RAY_TMPDIR (daemonised raylets of fake
    autoscaled nodes leave the `ray start` process group)."""
    kill_naming(tmpdir)


@contextmanager
def ray_head(*args: str, port: int | None = None, env_extra: dict | None = None):
    """`ray start --head --block` with free ports and `env_extra`; yields (address, metrics port, the
    environment for drivers: the private RAY_TMPDIR, none of env_extra)."""
    tmpdir = private_tmpdir()
    port, metrics = port or free_port(), free_port()
    driver_env = private_env(tmpdir)  # without the head's own extras (RAY_AUTH_MODE, fake-cluster switches)
    env = {**driver_env, **(env_extra or {})}
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--port={port}", f"--metrics-export-port={metrics}", f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        *args,
    ]  # fmt: skip
    log = open(Path(tmpdir) / "ray-start.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        marker = Path(tmpdir) / "ray" / "ray_current_cluster"
        deadline = time.time() + 90
        while not (marker.exists() and marker.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"ray start failed: {(Path(tmpdir) / 'ray-start.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield marker.read_text().strip(), metrics, driver_env
    finally:
        stop_group(proc)
        stop_tmpdir_processes(tmpdir)
        log.close()


def run_cli(module: str, args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = run([sys.executable, "-m", module, *args], env, timeout, own_tmpdir=False)  # the head lives on
    if proc.returncode != 0:
        raise AssertionError(
            f"{module} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
