"""App records, spec hashes and the reconciler (plan_reconcile, redeploy_delay). Pure: no Ray,
no Hypha."""

from __future__ import annotations

from typing import Any

import pytest

from bioengine_app_runtime import AppSpec
from bioengine_apps._state import (
    AppRecord,
    ObservedApp,
    ReconcilePlan,
    apply_bookkeeping,
    plan_reconcile,
    redeploy_delay,
    spec_hash,
)

# ---- records, spec hashes and plan ----------------------------------------------------------------


def spec(app_id: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "application_id": app_id,
        "artifact_id": f"ws/{app_id}-artifact",
        "code_dir": f"/shared/apps/{app_id}/code/abc123",
        "home_dir": f"/shared/apps/{app_id}/home",
        "deployments": ["demo_app:DemoApp"],
        "server_url": "http://hypha.test",
        "workspace": "ws",
    }
    base.update(changes)
    return AppSpec.model_validate(base).model_dump(mode="json")


def record(app_id: str = "app-a", spec_changes: dict[str, Any] | None = None, **fields: Any) -> AppRecord:
    return AppRecord(
        application_id=app_id,
        artifact_id=f"ws/{app_id}-artifact",
        spec=spec(app_id, **(spec_changes or {})),
        **fields,
    )


def applied(app_id: str = "app-a", spec_changes: dict[str, Any] | None = None, **fields: Any) -> AppRecord:
    """A record whose current spec Serve already has."""
    rec = record(app_id, spec_changes, **fields)
    rec.applied_hash = spec_hash(rec.spec)
    return rec


def ours(status: str = "RUNNING") -> ObservedApp:
    return ObservedApp(status=status, ours=True)


def messages(result: ReconcilePlan) -> list[str]:
    return [decision.message for decision in result.decisions]


def test_spec_hash_fills_defaults_and_ignores_key_order():
    full = spec("app-a")
    partial = {k: v for k, v in full.items() if k not in ("redeploy", "disable_gpu", "methods")}
    assert spec_hash(partial) == spec_hash(full) == spec_hash(dict(reversed(list(full.items()))))
    assert spec_hash(spec("app-a", init_kwargs={"DemoApp": {"x": 1}})) != spec_hash(full)
    assert spec_hash(spec("app-a", redeploy=1)) != spec_hash(full)


def test_plan_nothing_to_do():
    assert plan_reconcile({}, {}, now=0.0) == ReconcilePlan()
    rec = applied("app-a")
    result = plan_reconcile({"app-a": rec}, {"app-a": ours()}, now=0.0)
    assert result.deploy == [] and result.delete == [] and messages(result) == []


def test_plan_recorded_app_missing_from_serve_is_deployed():
    result = plan_reconcile({"app-a": applied("app-a")}, {}, now=0.0)
    assert result.deploy == ["app-a"] and result.redeploy == []
    assert messages(result) == ["app-a: not in Serve -> deploy"]


def test_plan_never_applied_record_is_deployed():
    result = plan_reconcile({"app-a": record("app-a")}, {}, now=0.0)
    assert result.deploy == ["app-a"]


@pytest.mark.parametrize(
    "changes",
    [
        {"init_kwargs": {"DemoApp": {"x": 1}}},
        {"env_vars": {"*": {"A": "b"}}},
        {"code_dir": "/new"},
        {"secrets_revision": 3},
    ],
)
def test_plan_changed_spec_is_deployed(changes):
    rec = applied("app-a")
    rec.spec = spec("app-a", **changes)
    result = plan_reconcile({"app-a": rec}, {"app-a": ours()}, now=0.0)
    assert result.deploy == ["app-a"] and messages(result) == ["app-a: spec changed -> deploy"]


@pytest.mark.parametrize("status", ["RUNNING", "DEPLOYING", "DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_applied_spec_is_left_alone_without_auto_redeploy(status):
    result = plan_reconcile({"app-a": applied("app-a")}, {"app-a": ours(status)}, now=0.0)
    assert result.deploy == [] and messages(result) == []


def test_plan_a_failed_build_is_not_retried_in_a_loop():
    rec = record("app-a", last_error="ImportError: no module named torch")
    rec.failed_hash = spec_hash(rec.spec)
    result = plan_reconcile({"app-a": rec}, {}, now=0.0)
    assert result.deploy == [] and messages(result) == []
    rec.spec = spec("app-a", init_kwargs={"DemoApp": {"x": 2}})  # a new spec is tried again
    assert plan_reconcile({"app-a": rec}, {}, now=0.0).deploy == ["app-a"]


@pytest.mark.parametrize("status", ["RUNNING", "DEPLOY_FAILED", "UNHEALTHY", "DEPLOYING"])
def test_plan_our_app_without_record_is_deleted(status):
    result = plan_reconcile({}, {"orphan": ours(status)}, now=100.0)
    assert result.delete == ["orphan"]
    assert messages(result) == ["orphan: in Serve without a record -> delete"]


def test_plan_does_not_repeat_a_removal_serve_is_doing():
    result = plan_reconcile({}, {"orphan": ours("DELETING")}, now=100.0)
    assert result.delete == [] and messages(result) == []


@pytest.mark.parametrize("status", ["RUNNING", "DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_foreign_app_is_untouched(status):
    result = plan_reconcile(
        {"app-a": applied("app-a")}, {"app-a": ours(), "foreign": ObservedApp(status=status)}, now=1.0
    )
    assert result == ReconcilePlan()


@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_auto_redeploy_waits_for_the_backoff(status):
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=2, next_redeploy_at=1000.0)
    assert plan_reconcile({"app-a": rec}, {"app-a": ours(status)}, now=999.0).deploy == []
    result = plan_reconcile({"app-a": rec}, {"app-a": ours(status)}, now=1000.0)
    assert result.deploy == ["app-a"] and result.redeploy == ["app-a"]
    assert messages(result) == [f"app-a: {status} -> auto-redeploy attempt 3"]


def test_plan_auto_redeploy_retries_a_failed_build_with_backoff():
    rec = record("app-a", auto_redeploy=True, last_error="boom", next_redeploy_at=10.0)
    rec.failed_hash = spec_hash(rec.spec)
    assert plan_reconcile({"app-a": rec}, {}, now=5.0).deploy == []
    result = plan_reconcile({"app-a": rec}, {}, now=10.0)
    assert result.redeploy == ["app-a"] and messages(result) == [
        "app-a: BUILD_FAILED -> auto-redeploy attempt 1"
    ]


def test_plan_first_auto_redeploy_is_immediate():
    rec = applied("app-a", auto_redeploy=True)
    assert plan_reconcile({"app-a": rec}, {"app-a": ours("UNHEALTHY")}, now=0.0).redeploy == ["app-a"]


@pytest.mark.parametrize("attempts", [5, 6, 9])
@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_gives_up_at_the_cap(attempts, status):
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=attempts)
    result = plan_reconcile({"app-a": rec}, {"app-a": ours(status)}, now=1e9)
    assert result.deploy == [] and result.give_up == {
        "app-a": f"gave up after {attempts} redeploys (still {status})"
    }


def test_plan_one_below_the_cap_still_redeploys():
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=4)
    assert plan_reconcile({"app-a": rec}, {"app-a": ours("DEPLOY_FAILED")}, now=1e9).redeploy == ["app-a"]


def test_plan_after_giving_up_does_nothing():
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=5, gave_up="gave up")
    assert plan_reconcile({"app-a": rec}, {"app-a": ours("DEPLOY_FAILED")}, now=1e9) == ReconcilePlan()


@pytest.mark.parametrize("auto_redeploy", [True, False])
def test_plan_running_again_resets_the_attempts(auto_redeploy):
    rec = applied("app-a", auto_redeploy=auto_redeploy, redeploy_attempts=3)
    assert plan_reconcile({"app-a": rec}, {"app-a": ours("RUNNING")}, now=0.0).reset_attempts == ["app-a"]


@pytest.mark.parametrize("status", ["DEPLOYING", "UNHEALTHY"])
def test_plan_no_reset_while_not_running(status):
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=3, next_redeploy_at=1e12)
    assert plan_reconcile({"app-a": rec}, {"app-a": ours(status)}, now=0.0).reset_attempts == []


def test_plan_failed_app_with_a_new_spec_is_updated_not_redeployed():
    rec = applied("app-a", auto_redeploy=True)
    rec.spec = spec("app-a", init_kwargs={"DemoApp": {"x": 9}})
    result = plan_reconcile({"app-a": rec}, {"app-a": ours("DEPLOY_FAILED")}, now=0.0)
    assert result.deploy == ["app-a"] and result.redeploy == []


def test_plan_many_apps_at_once():
    records = {
        "ok": applied("ok"),
        "missing": applied("missing"),
        "flaky": applied("flaky", auto_redeploy=True, redeploy_attempts=1, next_redeploy_at=50.0),
        "hopeless": applied("hopeless", auto_redeploy=True, redeploy_attempts=5),
        "healed": applied("healed", auto_redeploy=True, redeploy_attempts=2),
    }
    observed = {
        "ok": ours(),
        "flaky": ours("UNHEALTHY"),
        "hopeless": ours("DEPLOY_FAILED"),
        "healed": ours("RUNNING"),
        "orphan": ours("RUNNING"),
        "foreign": ObservedApp(status="RUNNING"),
    }
    result = plan_reconcile(records, observed, now=100.0)
    assert result.deploy == ["flaky", "missing"] and result.redeploy == ["flaky"]
    assert result.delete == ["orphan"]
    assert result.give_up == {"hopeless": "gave up after 5 redeploys (still DEPLOY_FAILED)"}
    assert result.reset_attempts == ["healed"]
    assert messages(result) == [
        "flaky: UNHEALTHY -> auto-redeploy attempt 2",
        "hopeless: gave up after 5 redeploys (still DEPLOY_FAILED)",
        "missing: not in Serve -> deploy",
        "orphan: in Serve without a record -> delete",
    ]


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 10.0), (1, 20.0), (2, 40.0), (4, 160.0), (5, 300.0), (20, 300.0)]
)
def test_redeploy_delay_doubles_up_to_five_minutes(attempts, delay):
    assert redeploy_delay(attempts) == delay


def test_bookkeeping_of_a_plan_is_written_into_the_records():
    records = {
        "back": applied("back", auto_redeploy=True, redeploy_attempts=3, gave_up=None),
        "hopeless": applied("hopeless", auto_redeploy=True, redeploy_attempts=5),
        "failing": applied("failing", auto_redeploy=True, redeploy_attempts=1),
        "fine": applied("fine"),
    }
    observed = {
        "back": ours("RUNNING"),
        "hopeless": ours("UNHEALTHY"),
        "failing": ours("DEPLOY_FAILED"),
        "fine": ours("RUNNING"),
    }
    result = plan_reconcile(records, observed, now=100.0)
    assert apply_bookkeeping(records, result, now=100.0) == ["back", "hopeless", "failing"]
    assert (records["back"].redeploy_attempts, records["back"].gave_up) == (0, None)
    assert records["hopeless"].gave_up == "gave up after 5 redeploys (still UNHEALTHY)"
    failing = records["failing"]
    assert (failing.redeploy_attempts, failing.next_redeploy_at, failing.spec["redeploy"]) == (2, 120.0, 1)
    # The bumped spec is a change Serve has not seen: the next round deploys it, not redeploys.
    assert plan_reconcile(records, observed, now=100.0).deploy == ["failing"]
    assert apply_bookkeeping(records, ReconcilePlan(), now=0.0) == []


def test_decisions_say_when_what_and_on_which_inputs():
    records = {
        "new": record("new"),
        "failing": applied("failing", auto_redeploy=True, redeploy_attempts=1),
        "hopeless": applied("hopeless", auto_redeploy=True, redeploy_attempts=5),
    }
    observed = {"failing": ours("UNHEALTHY"), "hopeless": ours("DEPLOY_FAILED"), "orphan": ours()}
    result = plan_reconcile(records, observed, now=42.0)
    assert [(d.action, d.at) for d in result.decisions] == [
        ("redeploy", 42.0), ("give_up", 42.0), ("deploy", 42.0), ("delete", 42.0),
    ]  # fmt: skip
    redeploy, give_up, deploy, delete = (d.model_dump() for d in result.decisions)
    assert redeploy["inputs"] == {
        "application_id": "failing",
        "serve_status": "UNHEALTHY",
        "auto_redeploy": True,
        "redeploy_attempts": 1,
        "state": "UNHEALTHY",
    }
    assert give_up["inputs"]["redeploy_attempts"] == 5
    assert deploy["inputs"]["serve_status"] is None and deploy["message"] == "new: not in Serve -> deploy"
    assert delete["inputs"] == {"application_id": "orphan", "serve_status": "RUNNING", "recorded": False}
