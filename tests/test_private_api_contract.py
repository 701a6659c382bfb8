"""Every private Ray name the orchestrator and cluster/ import, pinned: a Ray upgrade that moves or
reshapes one fails here, by name, instead of in a user's run (several of them sit behind a broad
`except`, which would turn the break into a silent fallback). Ray is imported, never started.

Where each is used and why no public route exists in Ray 2.60:
- ray._private.services.canonicalize_bootstrap_address (runtime.existing_cluster): resolves "auto"
  and ray_current_cluster the way `ray.init` does, before ray.init, so that a dead cluster left in
  ray_current_cluster is skipped instead of retried for minutes.
- ray._raylet.GcsClient.internal_kv_get (runtime.cluster_wants_token): one unauthenticated probe
  (a `ray.init` refused for want of a token retries for 20 s, and a retry in token mode in the same
  process fails again: runtime.py's docstring).
- ray._private.authentication...maybe_enable_token_auth_if_token_available (runtime.use_token_auth_for).
- ray._private.state.state.get_cluster_config (capacity._types_from_gcs): the node types of a cluster
  started by `ray up`, which no public API lists.
- ray._private.worker.global_worker_stdstream_dispatcher (console.capture_ray_logs): worker lines to
  the run's log file, ours to the console.
- ray.train.v2._internal: the controller callback, its states, the worker-group start timeout and the
  preemption test (orchestrator/placement.py).
- ray.experimental.internal_kv._internal_kv_get + ray_constants.DEBUG_AUTOSCALING_STATUS
  (placement._autoscaler_v1_report): what autoscaler v1 reports while a request is pending.
- ray.autoscaler._private.resource_demand_scheduler._default_utilization_scorer (cluster/spot_first.py).
"""

from __future__ import annotations

import inspect

import pytest

ray = pytest.importorskip("ray")


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_bootstrap_address_helper_resolves_explicit_addresses_and_refuses_auto_without_a_cluster(
    tmp_path, monkeypatch
):
    from ray._private.services import canonicalize_bootstrap_address

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no ray_current_cluster here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert canonicalize_bootstrap_address("10.1.2.3:6379") == "10.1.2.3:6379"
    assert canonicalize_bootstrap_address(None) is None
    with pytest.raises(ConnectionError):  # runtime.existing_cluster turns this into a --address error
        canonicalize_bootstrap_address("auto")


def test_the_gcs_probe_and_token_setup_keep_their_call_shapes():
    from ray._private.authentication import authentication_token_setup
    from ray._raylet import GcsClient, InnerGcsClient
    from ray.exceptions import AuthenticationError

    # GcsClient forwards every call to InnerGcsClient (its __getattr__); the probe's AttributeError
    # would be swallowed by the probe's `except Exception`, and token auth silently never turned on
    assert "__getattr__" in vars(GcsClient)
    # a Cython method: its signature is in the docstring (key, namespace, timeout, as the probe calls it)
    assert (
        "internal_kv_get(self, string key, namespace=None, timeout=None)"
        in InnerGcsClient.internal_kv_get.__doc__
    )
    assert issubclass(AuthenticationError, Exception)
    setup = authentication_token_setup.maybe_enable_token_auth_if_token_available
    assert "warn_if_disabled" in parameters(setup)


def test_the_cluster_config_and_the_log_dispatcher_exist():
    from ray._private.state import state
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    assert callable(state.get_cluster_config)
    for name in ("add_handler", "remove_handler"):
        assert callable(getattr(dispatcher, name)), name
    # the node-group fields capacity._types_from_gcs reads
    from ray.core.generated import autoscaler_pb2

    fields = {f.name for f in autoscaler_pb2.NodeGroupConfig.DESCRIPTOR.fields}
    assert {"name", "resources", "max_count"} <= fields, fields
    assert "node_group_configs" in {f.name for f in autoscaler_pb2.ClusterConfig.DESCRIPTOR.fields}


def test_the_train_controller_internals_the_placement_watch_uses():
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2._internal.execution.callback import ControllerCallback
    from ray.train.v2._internal.execution.controller import state
    from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure

    from orchestrator.placement import PlacementWatch

    assert issubclass(WorkerGroupStartupTimeoutError, Exception)
    for name in ("ErroredState", "ReschedulingState", "RestartingState", "RunningState"):
        assert inspect.isclass(getattr(state, name)), name
    for method in ("before_controller_execute_resize_decision", "after_controller_state_update"):
        # the watch overrides hooks Ray still calls by these names and arities
        assert parameters(getattr(ControllerCallback, method)) == parameters(getattr(PlacementWatch, method))
    assert len(parameters(_is_preemption_failure)) == 1


def test_the_autoscaler_internals_the_pending_report_and_the_spot_scorer_use():
    from ray._private import ray_constants
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer
    from ray.experimental.internal_kv import _internal_kv_get

    assert isinstance(ray_constants.DEBUG_AUTOSCALING_STATUS, str)
    assert parameters(_internal_kv_get)[0] == "key"
    signature = inspect.signature(_default_utilization_scorer)
    assert list(signature.parameters)[:3] == ["node_resources", "resources", "node_type"]
    assert signature.parameters["node_availability_summary"].kind is inspect.Parameter.KEYWORD_ONLY
