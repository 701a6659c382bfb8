"""The node-type scorer that makes cluster.yaml's spot -> on-demand fallback real (autoscaler v1).

Ray's default scorer (ray/autoscaler/_private/resource_demand_scheduler.py,
`_default_utilization_scorer`) ignores the node availability it is handed, and `get_nodes_for` breaks
equal scores by node type name, so a spot type whose launches keep failing is chosen again at every
update. The autoscaler does record each failed launch: the AWS provider raises `NodeLaunchException`
once every subnet has refused (aws/node_provider.py), `NodeLauncher` stores it in the
`NodeProviderAvailabilityTracker`, and the record expires after
`AUTOSCALER_NODE_AVAILABILITY_MAX_STALENESS_S` (30 minutes). This scorer puts that record first:

    (launched or not tried lately, Ray's own score..., a `*_spot` type)

so among the types that fit a request, one whose last launch failed in the past 30 minutes loses to
one that did not, and of two equal shapes the spot type wins while it can launch.

The head's monitor loads it from `RAY_AUTOSCALER_UTILIZATION_SCORER=cluster.spot_first.spot_first_scorer`
(cluster.yaml's `head_start_ray_commands`, with the project folder on PYTHONPATH).
"""

from __future__ import annotations

from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer

SPOT_SUFFIX = "_spot"  # node types named `..._spot` are preferred while they launch


def spot_first_scorer(node_resources, resources, node_type, *, node_availability_summary):
    score = _default_utilization_scorer(
        node_resources, resources, node_type, node_availability_summary=node_availability_summary
    )
    if score is None:  # the request does not fit this type at all
        return None
    record = node_availability_summary.node_availabilities.get(node_type)
    available = record is None or record.is_available
    return (available, *score, node_type.endswith(SPOT_SUFFIX))
