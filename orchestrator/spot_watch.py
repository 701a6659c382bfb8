"""On a spot worker node: turn EC2's interruption notice into a Ray drain with reason PREEMPTION.

`python -m orchestrator.spot_watch --address HEAD:6379` (cluster.yaml starts it beside `ray start` on
every worker) polls the instance metadata (IMDSv2) `spot/instance-action` every few seconds: 404 until
EC2 schedules a reclaim, then `{"action": "terminate", "time": "...Z"}` about two minutes ahead. On the
notice it runs Ray's `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` with the time left as the
deadline, once, and exits.

Why: nothing in Ray 2.60 reads that notice (autoscaler v1, which `ray up` runs, never drains with reason
PREEMPTION; the raylet drains itself only on a SIGTERM to `ray start --block`, ray/_private/node.py
~644-711, and cluster.yaml's `ray start` does not block). Without a drain a reclaimed node is a dead
node, and Ray Train charges its workers' deaths to --max-failures. With the drain, Ray Train's
preemption watcher moves the run to PreemptingState and the restart is charged to
--max-preemptions instead (orchestrator/placement.py).
"""

from __future__ import annotations

import argparse
import calendar
import subprocess
import sys
import time
import urllib.error
import urllib.request

IMDS = "http://169.254.169.254"
ACTION = "/latest/meta-data/spot/instance-action"


def imds_get(base: str, path: str, timeout: float = 2.0) -> str | None:
    """An IMDSv2 GET (token first); None on 404 (no notice yet)."""
    request = urllib.request.Request(
        base + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        token = reply.read().decode()
    request = urllib.request.Request(base + path, headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def seconds_left(notice: str, now: float | None = None) -> int:
    """The notice's `time` (UTC, e.g. 2026-12-02T01:02:03Z) -> whole seconds from now, at least 0."""
    import json

    when = calendar.timegm(time.strptime(json.loads(notice)["time"], "%Y-%m-%dT%H:%M:%SZ"))
    return max(0, int(when - (time.time() if now is None else now)))


def drain_command(address: str, node_id: str | None, left: int, notice: str) -> list[str]:
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "drain-node", f"--address={address}"]
    cmd += [f"--node-id={node_id}"] if node_id else []  # default: this node
    return cmd + [
        "--reason=DRAIN_NODE_REASON_PREEMPTION",
        f"--reason-message=EC2 spot interruption notice: {notice.strip()}",
        f"--deadline-remaining-seconds={left}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        "python -m orchestrator.spot_watch",
        description="Drain this Ray node (reason PREEMPTION) when EC2 announces its spot reclaim.",
    )
    parser.add_argument("--address", required=True, metavar="HOST:PORT", help="the cluster's GCS address")
    parser.add_argument(
        "--node-id", default=None, metavar="HEX", help="the node to drain (default: this one)"
    )
    parser.add_argument(
        "--imds",
        default=IMDS,
        metavar="URL",
        help="the instance metadata service's base URL (default: %(default)s)",
    )
    parser.add_argument(
        "--every", type=float, default=5.0, metavar="S", help="seconds between polls (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    while True:
        try:
            notice = imds_get(args.imds, ACTION)
        except (OSError, urllib.error.URLError) as error:
            print(f"spot_watch: instance metadata not readable ({error}); retrying", flush=True)
            notice = None
        if notice:
            left = seconds_left(notice)
            print(f"spot_watch: reclaim notice {notice.strip()}: draining, {left}s left", flush=True)
            done = subprocess.run(drain_command(args.address, args.node_id, left, notice))
            return done.returncode
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
