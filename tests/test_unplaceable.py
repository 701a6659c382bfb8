"""Fold workers the cluster never places end the run within --placement-timeout, with one console line
per failed placement attempt (orchestrator/placement.py), instead of Ray Train retrying for ever.

The Ray test: a `ray start` head with 2 CPUs, both held by a placement group that another driver (a
process the test starts) creates. `orchestrator.train --cpus-per-fold 1` with 2 folds passes the
capacity check (the head has 2 CPUs) and then cannot be placed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from orchestrator.placement import start_attempts
from orchestrator.session import add_cluster_args, failure_args
from tests.cluster_helpers import ray_head, stop_group
from tests.conftest import TINY, tiny_args
from tests.processes import run

TWO_FOLDS = [o for o in TINY if not o.startswith("data.folds")] + ["data.folds=2"]

HOLD_CPUS = """
import sys, time, ray
from orchestrator.runtime import use_token_auth_for
use_token_auth_for(sys.argv[1])
ray.init(address=sys.argv[1])
pg = ray.util.placement_group([{"CPU": 2}])
ray.get(pg.ready(), timeout=60)
print("held", flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize(
    ("timeout", "attempt", "retries"),
    [(20, 10, 1), (25, 12.5, 1), (120, 60, 1), (900, 60, 14), (130, 60, 2)],
)
def test_the_timeout_is_split_into_attempts_of_at_most_a_minute(timeout, attempt, retries):
    assert start_attempts(timeout) == (attempt, retries)
    assert attempt * (retries + 1) >= timeout


def test_bad_failure_flags_name_the_flag():
    import argparse

    parser = argparse.ArgumentParser()
    add_cluster_args(parser)
    with pytest.raises(ValueError, match=r"--placement-timeout=3.0: expected at least 10 seconds"):
        failure_args(parser.parse_args(["--placement-timeout", "3"]))
    with pytest.raises(ValueError, match=r"--max-preemptions=-2: expected a count >= 0, or -1"):
        failure_args(parser.parse_args(["--max-preemptions", "-2"]))
    assert failure_args(parser.parse_args([])) == {
        "max_failures": 3,
        "max_preemptions": -1,
        "placement_timeout_s": 900.0,
    }


@pytest.fixture
def held_head(tmp_path):
    """A head whose 2 CPUs a placement group of another driver holds."""
    with ray_head("--num-cpus=2") as (address, _, env):
        log = tmp_path / "holder.log"
        with open(log, "w") as sink:
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLD_CPUS, address],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.time() + 120
            while "held" not in log.read_text():
                assert holder.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            yield address, env
        finally:
            stop_group(holder, grace=5)


@pytest.mark.ray
@pytest.mark.cluster
@pytest.mark.slow
def test_unplaceable_folds_end_the_run_with_the_pending_resources(held_head, tiny_data_root, tmp_path):
    address, env = held_head
    args = tiny_args(
        tiny_data_root,
        tmp_path / "run",
        *("--address", address, "--cpus-per-fold", "1", "--placement-timeout", "20"),
        overrides=TWO_FOLDS,
    )
    start = time.perf_counter()
    proc = run([sys.executable, "-m", "orchestrator.train", *args], env, timeout=240, own_tmpdir=False)
    wall = time.perf_counter() - start
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, proc.stderr[-3000:]
    assert error[0].startswith("error: the fold workers were not placed within --placement-timeout 20s: ")
    assert "pending 2 fold workers x CPU: 1" in error[0]
    assert "free now: " in error[0] and "CPU: " not in error[0].split("free now: ")[1].split(";")[0]
    assert "autoscaler: " in error[0]
    # One console line per failed attempt: 2 attempts of 10 s.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("fold workers not placed after")]
    assert len(lines) == 2, proc.stdout[-3000:]
    assert "(attempt 1 of 2, retrying): pending 2 fold workers x CPU: 1" in lines[0]
    assert "(attempt 2 of 2, giving up)" in lines[1]
    print(f"\nunplaceable run: exit 2 after {wall:.0f}s; {lines[0]}")
