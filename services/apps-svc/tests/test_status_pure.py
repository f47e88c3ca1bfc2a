"""Pure parts of an app's status: the reported state, the failure reason, what waiting makes of it.

No Ray, no Hypha: :func:`reported_state` turns what Serve and the app's proxy say into the state
a caller sees, and must never say RUNNING before the app's Hypha service is registered.
"""

from __future__ import annotations

import itertools

import pytest

from bioengine_apps._state import (
    FAILED_STATES,
    REASON_MAX_CHARS,
    failure_reason,
    reported_state,
    wait_outcome,
)
from bioengine_apps._store import StateStore

SERVE_STATES = (None, "NOT_STARTED", "DEPLOYING", "RUNNING", "DEPLOY_FAILED", "UNHEALTHY", "DELETING")
SERVICE = "ws/app-replica1:my-app"

INIT_TRACEBACK = """The deployment failed to start 3 times in a row. This may be due to a problem with its \
constructor or initial health check failing. See controller logs for details. Error:
ray::ServeReplica:init-fails:Broken.initialize_and_get_metadata() (pid=123, ip=10.0.0.1, actor_id=abc)
  File "/apps/init-fails/code/broken.py", line 6, in __init__
    raise ValueError('model weights missing: boom')
ValueError: model weights missing: boom"""


def test_running_is_never_reported_without_a_service_id():
    """The invariant, over every combination of inputs."""
    for serve_status, service_id, error, build_error in itertools.product(
        SERVE_STATES, (None, "", SERVICE), (None, "connection refused"), (None, "SyntaxError: x")
    ):
        status, message = reported_state(serve_status, "", service_id, error, build_error)
        if status == "RUNNING":
            assert service_id == SERVICE, (serve_status, service_id, error, build_error)
        assert isinstance(message, str)


def test_serve_running_without_a_service_is_deploying_with_the_registration_error():
    assert reported_state("RUNNING", "", None) == (
        "DEPLOYING",
        "replicas running; registering the app's Hypha service",
    )
    status, message = reported_state("RUNNING", "", None, "ConnectionError: refused")
    assert status == "DEPLOYING" and message.endswith("(last attempt: ConnectionError: refused)")


def test_running_with_a_service_and_other_states_pass_through():
    assert reported_state("RUNNING", "", SERVICE) == ("RUNNING", "")
    assert reported_state("DEPLOYING", "Deploying app 'x'", None) == ("DEPLOYING", "Deploying app 'x'")
    assert reported_state("DEPLOY_FAILED", "boom", None) == ("DEPLOY_FAILED", "boom")
    assert reported_state("UNHEALTHY", "bad", SERVICE) == ("UNHEALTHY", "bad")


def test_an_app_serve_lacks_is_not_started_or_failed_to_build():
    assert reported_state(None, "", None) == ("NOT_STARTED", "waiting for Serve to start the deployment")
    assert reported_state(None, "", None, build_error="ImportError: no torch") == (
        "DEPLOY_FAILED",
        "building the app failed: ImportError: no torch",
    )
    # A build error of an older spec does not hide a running app.
    assert reported_state("RUNNING", "", SERVICE, build_error="old") == ("RUNNING", "")


def test_failure_reason_is_the_exception_line_of_the_failed_deployment():
    deployments = {
        "BioEngineProxy": {"status": "HEALTHY", "message": ""},
        "Broken": {"status": "DEPLOY_FAILED", "message": INIT_TRACEBACK},
    }
    assert failure_reason("DEPLOY_FAILED", "app failed", deployments) == (
        "Broken: ValueError: model weights missing: boom"
    )
    assert failure_reason("UNHEALTHY", "", deployments) == "Broken: ValueError: model weights missing: boom"


def test_failure_reason_drops_module_prefixes_and_falls_back_to_the_first_line():
    deployments = {
        "A": {"status": "UNHEALTHY", "message": "Traceback:\n  x\nray.exceptions.RayActorError: died"}
    }
    assert failure_reason("UNHEALTHY", "", deployments) == "A: RayActorError: died"
    plain = {"A": {"status": "UNHEALTHY", "message": "health check failed\nsecond line"}}
    assert failure_reason("UNHEALTHY", "", plain) == "A: health check failed"
    # No failed deployment with a message: the app's own message.
    assert failure_reason("DEPLOY_FAILED", "Deploying failed:\nKeyError: 'x'", {}) == "KeyError: 'x'"
    assert failure_reason("DEPLOY_FAILED", "", {}) == "the app is DEPLOY_FAILED (Serve gave no reason)"


def test_failure_reason_is_one_short_line():
    long = "RuntimeError: " + "x" * 2000
    reason = failure_reason("DEPLOY_FAILED", "", {"A": {"status": "DEPLOY_FAILED", "message": long}})
    assert reason is not None and "\n" not in reason and len(reason) <= REASON_MAX_CHARS + len("A: ")


@pytest.mark.parametrize("state", ["RUNNING", "DEPLOYING", "NOT_STARTED", "DELETING", "UNAVAILABLE"])
def test_no_reason_unless_failed(state):
    assert failure_reason(state, "whatever", {"A": {"status": "UNHEALTHY", "message": "x"}}) is None


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("RUNNING", "running"),
        *((s, "failed") for s in (*FAILED_STATES, "NOT_RUNNING")),
        *((s, None) for s in ("DEPLOYING", "NOT_STARTED", "UNAVAILABLE", "DELETING")),
    ],
)
def test_wait_outcome(state, outcome):
    assert wait_outcome({"status": state}) == outcome


def test_stopped_apps_are_remembered_on_disk(tmp_path):
    store = StateStore(tmp_path / "state")
    assert store.load_stopped() == {}
    store.save_stopped({"old-app": 1.5, "newer": 2.0})
    assert StateStore(tmp_path / "state").load_stopped() == {"old-app": 1.5, "newer": 2.0}
    (tmp_path / "state" / "stopped.json").write_text('["not", "a", "map"]')
    assert store.load_stopped() == {}


def test_a_healthy_artifact_store_is_probed_rarely_a_failing_one_often():
    """Each probe stops the Hypha server for a moment: a store that answers is listed once a
    minute, one that failed (or was never checked) every 2 x TTL until it answers."""
    from bioengine_apps._service import (
        ARTIFACT_PROBE_HEALTHY_S,
        ARTIFACT_PROBE_TTL_S,
        artifact_probe_due,
    )

    retry = 2 * ARTIFACT_PROBE_TTL_S
    assert retry < ARTIFACT_PROBE_HEALTHY_S
    for ok in (None, False):
        assert not artifact_probe_due(ok, retry - 0.1)
        assert artifact_probe_due(ok, retry)
    assert not artifact_probe_due(True, retry)
    assert not artifact_probe_due(True, ARTIFACT_PROBE_HEALTHY_S - 0.1)
    assert artifact_probe_due(True, ARTIFACT_PROBE_HEALTHY_S)
