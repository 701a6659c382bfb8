"""orchestrator.tune --resume after the driver is killed mid-search.

Its own module: the search runs in subprocesses that start their own local Ray, which must not run
beside the in-process Ray of the other modules (module-scoped fixture, shut down by now).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import tiny_args
from tests.test_tune import SEARCH, check_search_outputs


@pytest.mark.ray
def test_an_interrupted_search_resumes_and_finishes_every_trial(tiny_data_root, tmp_path):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "orchestrator.tune", *tiny_args(tiny_data_root, out, overrides=SEARCH)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    deadline = time.time() + 600
    try:
        for line in proc.stdout:  # kill the driver once the first trial has finished
            if "finished after" in line or "stopped early" in line or time.time() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "trials.csv").exists(), "the search ended before it could be interrupted"

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    check_search_outputs(out, tiny_data_root)
