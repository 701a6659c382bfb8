"""What a Ray cluster can ever hold: its possible node types, not only the nodes up now.

An autoscaling cluster (`ray up cluster.yaml`, `min_workers: 0`) starts with no GPU node; sizing fold
workers from `ray.cluster_resources()` would then put every fold on CPU and never ask the autoscaler
for a GPU. The possible node types come from, in order:

1. a cluster launcher config file the user passes (`--cluster-config FILE`),
2. the cluster config in the GCS (`ray._private.state.state.get_cluster_config()`, which Ray Train
   checks worker groups against; Ray 2.60's Python autoscalers do not write it, other launchers may),
3. `~/ray_bootstrap_config.yaml`, the copy of cluster.yaml that `ray up` leaves on the head and that
   its autoscaler runs from,
4. the nodes alive now (a fixed cluster, or a local Ray).
Nodes alive now are always counted too (a head started by hand is in no node type).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml

log = logging.getLogger(__name__)

BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict  # logical resources of one node of this type
    max_count: int  # how many such nodes the cluster may have (-1: no limit)
    worker: bool = True  # counts against the cluster's max_workers (the head and hand-started nodes do not)


@dataclass(frozen=True)
class Capacity:
    node_types: tuple[NodeType, ...]
    source: str  # where the node types came from, for messages
    max_workers: int = -1  # the launcher's global cap on worker nodes of all types (-1: none)

    def max_total(self, key: str) -> float:
        """The most of resource `key` the cluster can ever have at once: every type up to its own
        max_workers, and the worker nodes together up to the global max_workers (filled with the types
        that have the most of `key` first)."""
        total, budget = 0.0, self.max_workers
        by_amount = sorted(self.node_types, key=lambda t: (t.worker, -float(t.resources.get(key, 0))))
        for t in by_amount:  # the head and hand-started nodes first, then workers, richest first
            amount = float(t.resources.get(key, 0))
            count = t.max_count
            if t.worker and budget >= 0:
                count = budget if count < 0 else min(count, budget)
                budget -= count
            if amount and count < 0:
                return math.inf
            total += amount * max(count, 0)
        return total

    def max_per_node(self, key: str) -> float:
        """The most of `key` one node can have: one worker never spans nodes."""
        return max((float(t.resources.get(key, 0)) for t in self.node_types if t.max_count), default=0.0)

    def node_type_with(self, key: str) -> NodeType | None:
        """The node type with the most of `key` (e.g. the GPU worker type)."""
        candidates = [t for t in self.node_types if t.max_count and t.resources.get(key, 0) > 0]
        return max(candidates, key=lambda t: t.resources[key], default=None)

    def describe(self) -> str:
        types = ", ".join(
            f"{t.name} x{'unlimited' if t.max_count < 0 else t.max_count} {t.resources}"
            for t in self.node_types
        )
        return f"{types} (from {self.source})"


def _types_from_gcs() -> list[NodeType]:
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception as error:  # an older GCS without the key, or no GCS client
        log.debug("no cluster config in the GCS: %s", error)
        return []
    if config is None:
        return []
    return [
        NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
        for g in config.node_group_configs
    ]


def launcher_capacity(path: Path) -> Capacity:
    """What a cluster launcher YAML (cluster.yaml) can hold: explicit `resources` per node type and
    `max_workers` per type (else the global one), the head type once, and the global `max_workers`
    that caps the worker nodes of all types together."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"--cluster-config {path}: cannot read it as YAML ({error})") from error
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ValueError(f"{path}: expected a cluster launcher config with `available_node_types`")
    head = config.get("head_node_type")
    default_max = int(config.get("max_workers", 0))
    types = []
    for name, spec in config["available_node_types"].items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        count = 1 if name == head else int(spec.get("max_workers", default_max))
        types.append(NodeType(name, resources, count, worker=name != head))
    cap = config.get("max_workers")
    return Capacity(tuple(types), str(path), -1 if cap is None else int(cap))


def _types_alive() -> list[NodeType]:
    return [
        NodeType(f"node {n['NodeID'][:8]} (up now)", dict(n["Resources"]), 1, worker=False)
        for n in ray.nodes()
        if n.get("Alive")
    ]


def cluster_capacity(cluster_config: str | None = None, attached: bool = True) -> Capacity:
    """The possible node types of the connected cluster plus the nodes alive now (see module doc)."""
    alive = _types_alive()
    if cluster_config:
        possible = launcher_capacity(Path(cluster_config))
    else:
        possible = Capacity(tuple(_types_from_gcs()), "the autoscaler's config in the GCS")
        if not possible.node_types and attached and BOOTSTRAP_CONFIG.exists():
            possible = launcher_capacity(BOOTSTRAP_CONFIG)
    if not possible.node_types:
        return Capacity(tuple(alive), "the nodes up now")
    # A node alive now is either one of the possible types' nodes or an extra (a hand-started head).
    extra = [
        a
        for a in alive
        if not any(_same_shape(a.resources, t.resources) for t in possible.node_types if t.max_count)
    ]
    return Capacity(possible.node_types + tuple(extra), possible.source, possible.max_workers)


def _same_shape(live: dict, declared: dict) -> bool:
    keys = ("CPU", "GPU")
    return all(float(live.get(k, 0)) == float(declared.get(k, 0)) for k in keys)
