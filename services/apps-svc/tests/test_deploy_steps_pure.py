"""deploy_app's pure steps (merge with the previous deployment, spec, record) and the records
kept in Ray's KV store, with a dict standing in for the store. No Ray, no Hypha."""

from __future__ import annotations

from typing import Any

import pytest

from bioengine_apps._deploy import (
    BOOKKEEPING_FIELDS,
    AppEnv,
    DeployRequest,
    WorkerFacts,
    app06_deployments,
    build_record,
    build_spec,
    env_scope_problems,
    merge_with_previous,
    resolve_env,
    resources_grow,
    reusable_spec,
    secrets_revision,
    settle_unchanged,
)
from bioengine_apps._state import SECRET_MASK, AppRecord, AppsKV, newer_records_in_kv

WORKER = WorkerFacts(
    server_url="http://hypha.test",
    workspace="ws",
    datasets_service_id="bioengine-datasets",
    default_app_cpus=0.1,
    services_users=["svc-b", "svc-a"],
)
MANIFEST: dict[str, Any] = {
    "name": "Demo App",
    "description": "A demo.",
    "version": "1.2",
    "deployments": ["demo_app:DemoApp", "helper:Helper"],
    "authorized_users": ["alice"],
}
NO_ENV = AppEnv(plain={}, secret={}, masked={}, hypha_token=None)


class FakeKV:
    """Ray's KV store as apps-svc sees it (``AppsKV``), in dicts."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}

    def record_ids(self) -> list[str]:
        return sorted(self.records)

    def get_record(self, application_id: str) -> dict[str, Any] | None:
        return self.records.get(application_id)

    def put_record(self, application_id: str, record: dict[str, Any]) -> None:
        self.records[application_id] = record

    def get_secrets(self, application_id: str) -> dict[str, Any] | None:
        return self.secrets.get(application_id)

    def put_secrets(self, application_id: str, secrets: dict[str, Any]) -> None:
        self.secrets[application_id] = secrets

    def delete_app(self, application_id: str) -> None:
        self.records.pop(application_id, None)
        self.secrets.pop(application_id, None)


def deploy(
    request: DeployRequest = DeployRequest(),
    env: AppEnv = NO_ENV,
    previous: AppRecord | None = None,
    source: str = "artifact",
    now: float = 100.0,
    revision: int = 0,
) -> AppRecord:
    """The record deploy_app builds for ``demo`` from an already merged request."""
    spec = build_spec(
        "demo",
        "ws/demo-app" if source == "artifact" else "demo-app",
        request,
        env,
        MANIFEST,
        source,
        code_dir="/apps/demo/code-1",
        home_dir="/apps/demo/home",
        authorized_users={"*": ["*"]},
        revision=revision,
        previous=previous,
        worker=WORKER,
    )
    return build_record(
        spec,
        request,
        env,
        MANIFEST,
        source,
        resources={"num_cpus": 0.1},
        methods=["ping"],
        code_hash="abc",
        previous=previous,
        now=now,
        updated_by="admin@x.org",
    )


# ---- merging a request with the previous deployment -------------------------------------------------
def test_a_new_app_takes_the_request_as_given():
    request = DeployRequest(version="2", auto_redeploy=True)
    assert merge_with_previous(request, None) is request


def test_an_update_keeps_every_setting_it_leaves_out():
    previous = deploy(
        DeployRequest(
            version="1",
            application_kwargs={"DemoApp": {"x": 1}},
            disable_gpu=True,
            max_ongoing_requests=3,
            auto_redeploy=True,
            authorized_users=["bob"],
        )
    )
    merged = merge_with_previous(DeployRequest(), previous)
    assert merged == DeployRequest(
        version="1",
        application_kwargs={"DemoApp": {"x": 1}},
        disable_gpu=True,
        max_ongoing_requests=3,
        auto_redeploy=True,
        authorized_users=["bob"],
    )


def test_an_update_overrides_what_it_gives_even_falsy_values():
    previous = deploy(DeployRequest(disable_gpu=True, auto_redeploy=True, application_kwargs={"A": {}}))
    merged = merge_with_previous(
        DeployRequest(disable_gpu=False, auto_redeploy=False, application_kwargs={}), previous
    )
    assert (merged.disable_gpu, merged.auto_redeploy, merged.application_kwargs) == (False, False, {})


# ---- env vars, secrets and the token ------------------------------------------------------------------
def test_env_vars_given_are_split_into_plain_secret_and_masked():
    env = resolve_env({"DemoApp": {"A": "1", "_KEY": "s3cret"}}, "tok", None, {})
    assert env == AppEnv(
        plain={"DemoApp": {"A": "1"}},
        secret={"DemoApp": {"KEY": "s3cret"}},
        masked={"DemoApp": {"A": "1", "_KEY": SECRET_MASK}},
        hypha_token="tok",
    )


def test_env_vars_left_out_on_an_update_come_from_the_record_and_the_secrets():
    previous = deploy(env=resolve_env({"DemoApp": {"A": "1", "_KEY": "s"}}, None, None, {}))
    old_secrets = {"env": {"DemoApp": {"KEY": "s"}}, "hypha_token": "old-token"}
    env = resolve_env(None, None, previous, old_secrets)
    assert env.plain == {"DemoApp": {"A": "1"}}
    assert env.secret == {"DemoApp": {"KEY": "s"}}
    assert env.masked == {"DemoApp": {"A": "1", "_KEY": SECRET_MASK}}
    assert env.hypha_token == "old-token"
    # Given ones replace them all; a new token replaces the old.
    env = resolve_env({"*": {"B": "2"}}, "new-token", previous, old_secrets)
    assert (env.plain, env.secret, env.hypha_token) == ({"*": {"B": "2"}}, {}, "new-token")


def test_bad_env_vars_are_a_value_error_naming_the_variable():
    with pytest.raises(ValueError, match=r"application_env_vars\.DemoApp\.A: values must be strings"):
        resolve_env({"DemoApp": {"A": 1}}, None, None, {})


def test_env_scopes_must_name_a_deployment_class():
    env = resolve_env({"*": {"A": "1"}, "DemoApp": {"B": "2"}, "Nope": {"_C": "3"}}, None, None, {})
    assert env_scope_problems(env, MANIFEST["deployments"]) == [
        "application_env_vars.Nope: the app has no deployment 'Nope'"
    ]
    assert env_scope_problems(NO_ENV, MANIFEST["deployments"]) == []


def test_secrets_revision_moves_only_when_a_secret_or_the_token_changes():
    old_secrets = {"env": {"DemoApp": {"KEY": "s"}}, "hypha_token": "t", "proxy_token": "p"}
    same = AppEnv(plain={}, secret={"DemoApp": {"KEY": "s"}}, masked={}, hypha_token="t")
    previous = deploy(revision=4)
    assert secrets_revision(previous, same, old_secrets) == 4
    assert secrets_revision(previous, AppEnv({}, {"DemoApp": {"KEY": "x"}}, {}, "t"), old_secrets) == 5
    assert secrets_revision(previous, AppEnv({}, same.secret, {}, None), old_secrets) == 5
    assert secrets_revision(None, NO_ENV, {}) == 0


def test_resources_grow_for_a_new_app_or_when_any_figure_rises():
    previous = deploy()
    previous.resources = {"num_cpus": 1.0, "num_gpus": 0.0}
    assert resources_grow({"num_cpus": 0.1}, None)
    assert not resources_grow({"num_cpus": 1.0, "num_gpus": 0.0}, previous)
    assert not resources_grow({"num_cpus": 0.5}, previous)
    assert resources_grow({"num_cpus": 1.0, "num_gpus": 1.0}, previous)
    assert resources_grow({"num_cpus": 1.0, "scope": 0.5}, previous)


# ---- the spec and the record ------------------------------------------------------------------------------
def test_spec_of_an_artifact_app():
    env = resolve_env({"DemoApp": {"A": "1", "_KEY": "s"}}, None, None, {})
    record = deploy(DeployRequest(application_kwargs={"DemoApp": {"x": 1}}, max_ongoing_requests=None), env)
    spec = record.spec
    assert spec["artifact_id"] == "ws/demo-app" and spec["version"] == "1.2"
    assert spec["env_vars"] == {"DemoApp": {"A": "1"}}
    assert spec["secret_env_names"] == {"DemoApp": ["KEY"]}
    assert "s" not in str(spec["env_vars"])
    assert spec["init_kwargs"] == {"DemoApp": {"x": 1}}
    assert spec["max_ongoing_requests"] == 10 and spec["disable_gpu"] is False
    assert spec["services_users"] == ["svc-a", "svc-b"]
    assert (spec["server_url"], spec["workspace"], spec["default_num_cpus"]) == (
        "http://hypha.test",
        "ws",
        0.1,
    )
    assert spec["redeploy"] == 0


def test_spec_of_a_local_app_has_no_version():
    record = deploy(source="local")
    assert (record.spec["artifact_id"], record.spec["version"]) == ("local/demo-app", None)
    assert record.artifact_id == "local/demo-app" and record.source == "local"


def test_an_update_keeps_the_redeploy_count_of_the_previous_spec():
    previous = deploy()
    previous.spec["redeploy"] = 3
    assert deploy(previous=previous).spec["redeploy"] == 3


def test_record_of_a_new_app():
    env = resolve_env({"DemoApp": {"_KEY": "s"}}, None, None, {})
    record = deploy(DeployRequest(version=None, authorized_users=["bob"], auto_redeploy=True), env, now=7.0)
    assert record.version == "1.2"  # the manifest's when none was asked for
    assert record.application_env_vars == {"DemoApp": {"_KEY": SECRET_MASK}}
    assert record.requested_authorized_users == ["bob"] and record.auto_redeploy is True
    assert (record.start_time, record.last_updated_at, record.last_updated_by) == (7.0, 7.0, "admin@x.org")
    assert (record.display_name, record.description, record.code_hash) == ("Demo App", "A demo.", "abc")
    assert record.applied_hash is None


def test_record_of_an_update_keeps_the_start_time():
    previous = deploy(now=1.0)
    assert deploy(previous=previous, now=50.0).start_time == 1.0


def test_an_identical_update_keeps_the_previous_record_exactly():
    previous = deploy(now=1.0)
    previous.applied_hash, previous.redeploy_attempts = "h", 2
    record, unchanged = settle_unchanged(deploy(previous=previous, now=50.0), previous)
    assert unchanged and record is previous


def test_a_setting_outside_the_spec_changes_the_record_but_not_the_bookkeeping():
    previous = deploy(now=1.0)
    previous.applied_hash, previous.redeploy_attempts = "h", 2
    new = deploy(DeployRequest(auto_redeploy=True), previous=previous, now=50.0)
    record, unchanged = settle_unchanged(new, previous)
    assert unchanged and record.auto_redeploy is True
    assert (record.applied_hash, record.redeploy_attempts) == ("h", 2)
    assert record.last_updated_at == 50.0  # a real update says when it happened
    assert {"last_updated_at", "last_updated_by", "applied_hash"} <= BOOKKEEPING_FIELDS


def test_a_changed_spec_is_a_new_record():
    previous = deploy(now=1.0)
    new = deploy(DeployRequest(application_kwargs={"DemoApp": {"x": 2}}), previous=previous, now=50.0)
    assert settle_unchanged(new, previous) == (new, False)
    assert settle_unchanged(new, None) == (new, False)


# ---- records kept in Ray's KV store -------------------------------------------------------------------------
def test_the_fake_is_an_apps_kv():
    kv: AppsKV = FakeKV()
    kv.put_secrets("a", {"env": {}})
    kv.delete_app("a")
    assert kv.get_secrets("a") is None


def test_newer_records_in_the_kv_store_win():
    kv = FakeKV()
    mine = {"old": deploy(now=1.0), "fresh": deploy(now=9.0)}
    for app_id, at in (("old", 5.0), ("fresh", 5.0), ("only-there", 2.0)):
        kv.put_record(app_id, deploy(now=at).model_copy(update={"application_id": app_id}).model_dump())
    kv.records["empty"] = {}
    newer = newer_records_in_kv(mine, kv)
    assert [(r.application_id, r.last_updated_at) for r in newer] == [("old", 5.0), ("only-there", 2.0)]
    assert newer_records_in_kv({}, FakeKV()) == []


SPEC_06 = {
    "entry": "pipeline:Pipeline",
    "order": ["steps.tokenizer:Tokenizer", "steps.analyzer:Analyzer", "pipeline:Pipeline"],
    "deployments": {
        "steps.tokenizer:Tokenizer": {"class_name": "Tokenizer"},
        "steps.analyzer:Analyzer": {"class_name": "Analyzer"},
        "pipeline:Pipeline": {"class_name": "Pipeline"},
    },
}


def test_a_0_6_0_apps_deployments_list_the_entry_first():
    assert app06_deployments(SPEC_06) == [
        "pipeline:Pipeline",
        "steps.analyzer:Analyzer",
        "steps.tokenizer:Tokenizer",
    ]
    # Env var scopes name the classes of a 0.6.0 app by class name, as for the older format.
    env = AppEnv(plain={"Tokenizer": {"A": "1"}, "Nope": {"B": "2"}}, secret={}, masked={}, hypha_token=None)
    assert env_scope_problems(env, app06_deployments(SPEC_06)) == [
        "application_env_vars.Nope: the app has no deployment 'Nope'"
    ]


def test_a_redeploy_of_the_same_code_reuses_the_discovered_spec():
    from bioengine_app_runtime import App06

    app06 = App06(entry="pipeline:Pipeline", spec=SPEC_06, sdk_version="0.1.0")
    spec = build_spec(
        "demo", "ws/demo-app", DeployRequest(), NO_ENV, MANIFEST, "artifact", code_dir="/apps/demo/code-1",
        home_dir="/apps/demo/home", authorized_users={"*": ["*"]}, revision=0, previous=None, worker=WORKER,
        app06=app06,
    )  # fmt: skip
    assert spec.deployments == app06_deployments(SPEC_06) and spec.init_kwargs == {}
    previous = build_record(
        spec, DeployRequest(), NO_ENV, MANIFEST, "artifact", resources={}, methods=["run"], code_hash="abc",
        previous=None, now=1.0, updated_by=None,
    )  # fmt: skip
    assert reusable_spec(previous, "/apps/demo/code-1", "pipeline:Pipeline", "0.1.0") == SPEC_06
    # New code, another entry, another SDK, or an older-format deployment: discover again.
    assert reusable_spec(previous, "/apps/demo/code-2", "pipeline:Pipeline", "0.1.0") is None
    assert reusable_spec(previous, "/apps/demo/code-1", "pipeline:Other", "0.1.0") is None
    assert reusable_spec(previous, "/apps/demo/code-1", "pipeline:Pipeline", "0.2.0") is None
    assert reusable_spec(deploy(), "/apps/demo/code-1", "pipeline:Pipeline", "0.1.0") is None
    assert reusable_spec(None, "/apps/demo/code-1", "pipeline:Pipeline", "0.1.0") is None


def test_discovered_specs_are_kept_by_code_entry_and_sdk_version():
    from bioengine_apps._deploy import DiscoveredSpecs

    specs = DiscoveredSpecs(size=2)
    spec = {"entry": "m:A", "order": ["m:A"], "deployments": {}}
    specs.put("hash-1", "m:A", "0.1.0", spec)
    assert specs.get("hash-1", "m:A", "0.1.0") == spec
    assert specs.get("hash-1", "m:A", "0.2.0") is None  # another SDK may read the code otherwise
    assert specs.get("hash-1", "m:B", "0.1.0") is None
    assert specs.get("hash-2", "m:A", "0.1.0") is None
    specs.put("hash-2", "m:A", "0.1.0", spec)
    specs.get("hash-1", "m:A", "0.1.0")  # used: kept over hash-2
    specs.put("hash-3", "m:A", "0.1.0", spec)
    assert specs.get("hash-2", "m:A", "0.1.0") is None
    assert specs.get("hash-1", "m:A", "0.1.0") == spec
    specs.put("hash-4", "m:A", "", spec)  # no SDK version: nothing to key it on
    assert specs.get("hash-4", "m:A", "") is None


def test_a_token_of_the_services_own_user_is_never_given_to_an_app():
    from bioengine_apps._deploy import token_owner_problem
    from bioengine_common import SERVICES_USER, mint_token

    services = mint_token("secret", SERVICES_USER, "ws", "read_write")
    someone = mint_token("secret", "alice", "ws", "read_write")
    problem = token_owner_problem(services, {SERVICES_USER, "other-service-user"})
    assert problem and SERVICES_USER in problem and "act as a worker service" in problem
    assert "secret" not in problem and services not in problem  # never the token itself
    assert token_owner_problem(someone, {SERVICES_USER}) is None
    assert token_owner_problem(None, {SERVICES_USER}) is None
    assert token_owner_problem("not-a-jwt", {SERVICES_USER}) is None  # Hypha judges it when used
