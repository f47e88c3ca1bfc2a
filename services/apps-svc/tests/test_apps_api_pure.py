"""The rest of the public apps API, pure: deploy_app's scaling and ice_servers checks, the
startup apps, frontends (view_config and static_site_url), development versions, per-deployment
log lines (the Serve options the builder makes of them: libs/bioengine-app-runtime)."""

import pytest

from bioengine_apps._artifacts import _upload_config, dev_version_problem, static_site_url, view_config_for
from bioengine_apps._deploy import DeployRequest, merge_with_previous
from bioengine_apps._options import (
    expand_env,
    ice_server_problems,
    parse_startup_applications,
    scaling_problems,
)
from bioengine_apps._service import _log_lines
from bioengine_apps._state import AppRecord
from bioengine_common import InvalidRequest

CLASSES = ["Entry", "Helper"]


# ---- scaling -------------------------------------------------------------------------------------------
def test_scaling_takes_replicas_or_an_autoscaling_config_per_class():
    assert scaling_problems(None, CLASSES) == []
    assert (
        scaling_problems(
            {
                "Entry": {"num_replicas": 2},
                "Helper": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}},
            },
            CLASSES,
        )
        == []
    )


def test_scaling_names_an_unknown_class_and_the_app_s_classes():
    (problem,) = scaling_problems({"Nope": {"num_replicas": 1}}, CLASSES)
    assert (
        "scaling['Nope']" in problem
        and "no deployment class 'Nope'" in problem
        and "Entry, Helper" in problem
    )
    # Class names not known (yet): only the shape is checked.
    assert scaling_problems({"Nope": {"num_replicas": 1}}, None) == []


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"num_replicas": 0}, "scaling['Entry'].num_replicas: must be a whole number >= 1"),
        ({"num_replicas": True}, "scaling['Entry'].num_replicas"),
        ({"num_replicas": 1, "autoscaling_config": {}}, "exactly one of num_replicas or autoscaling_config"),
        ({"replicas": 2}, "exactly one of"),
        (
            {"autoscaling_config": {"min_replicas": 3, "max_replicas": 1}},
            "scaling['Entry'].autoscaling_config",
        ),
        ({"autoscaling_config": {"bogus": 1}}, "unknown option(s) bogus"),
        ({"autoscaling_config": [1]}, "must be a mapping"),
    ],
)
def test_a_bad_scaling_rule_is_named(rule, expected):
    (problem,) = scaling_problems({"Entry": rule}, CLASSES)
    assert expected in problem


def test_scaling_must_be_a_mapping():
    assert "scaling must be" in scaling_problems([1], CLASSES)[0]


# ---- ice_servers ---------------------------------------------------------------------------------------
def test_ice_servers_are_urls_with_optional_credentials():
    assert ice_server_problems(None) == []
    good = [
        {"urls": "stun:stun.example.org"},
        {"urls": ["turn:t.example.org"], "username": "u", "credential": "c"},
    ]
    assert ice_server_problems(good) == []
    assert ice_server_problems({"urls": "x"}) == [
        "ice_servers must be a list of {urls, username?, credential?}"
    ]
    problems = ice_server_problems([{"urls": []}, "x", {"urls": "a", "password": "p", "username": 1}])
    assert problems == [
        "ice_servers[0].urls: a URL or a non-empty list of URLs",
        "ice_servers[1]: must be a mapping with 'urls'",
        "ice_servers[2]: unknown key(s) password",
        "ice_servers[2].username: must be a string",
    ]


# ---- startup apps --------------------------------------------------------------------------------------
def test_startup_apps_expand_environment_variables():
    raw = '[{"artifact_id": "demo-app", "application_env_vars": {"*": {"_TOKEN": "${MY_TOKEN}"}}}, {"artifact_id": "x"}]'
    apps, problems = parse_startup_applications(raw, {"MY_TOKEN": "s3cret"})
    assert problems == []
    assert apps == [
        {"artifact_id": "demo-app", "application_env_vars": {"*": {"_TOKEN": "s3cret"}}},
        {"artifact_id": "x"},
    ]
    # One object is one app.
    assert parse_startup_applications('{"artifact_id": "a"}', {}) == ([{"artifact_id": "a"}], [])
    assert parse_startup_applications(None) == ([], [])


def test_a_bad_startup_app_is_left_out_and_named_the_others_stand():
    raw = (
        '[{"artifact_id": "ok"}, {"artifact_id": "a", "colour": 1}, {"version": "1"}, 3,'
        ' {"artifact_id": "b", "hypha_token": "${UNSET_VAR}"}]'
    )
    apps, problems = parse_startup_applications(raw, {})
    assert apps == [{"artifact_id": "ok"}]
    assert problems[0].startswith("--startup-applications[1]: unknown key(s) colour (deploy_app takes ")
    assert problems[1:] == [
        "--startup-applications[2]: needs an artifact_id",
        "--startup-applications[3]: must be an object of deploy_app keyword arguments",
        "--startup-applications[4]: environment variable 'UNSET_VAR' is not set",
    ]
    assert parse_startup_applications("[oops", {})[1][0].startswith("--startup-applications is not JSON")
    assert parse_startup_applications('"x"', {})[1] == [
        "--startup-applications must be a JSON list of deploy_app keyword arguments"
    ]


def test_expand_env_reaches_nested_keys_and_values():
    assert expand_env({"${K}": ["a-${V}", 1, None]}, {"K": "key", "V": "v"}) == {"key": ["a-v", 1, None]}


# ---- frontends -----------------------------------------------------------------------------------------
def test_view_config_serves_the_frontend_entry_s_folder():
    assert view_config_for(None) is None
    assert view_config_for("frontend/index.html") == {
        "branch": "main",
        "root_directory": "frontend",
        "index": "index.html",
        "headers": {},
    }
    assert view_config_for("index.html")["root_directory"] == "/"
    assert view_config_for("web/ui/app.html")["root_directory"] == "web/ui"


def test_static_site_url_with_the_app_s_server_and_service():
    view = view_config_for("frontend/index.html")
    assert static_site_url("http://h:9/", "ws", "demo", None) is None
    assert static_site_url("http://h:9/", "ws", "demo", view) == "http://h:9/ws/view/demo/"
    url = static_site_url(
        "http://h:9",
        "ws",
        "demo",
        view,
        {"server": "http://h:9", "ws_service_id": "ws/c:demo", "webrtc_service_id": None},
    )
    assert url == "http://h:9/ws/view/demo/?server=http%3A%2F%2Fh%3A9&ws_service_id=ws%2Fc%3Ademo"
    # An entry page other than index.html is named in the URL.
    assert (
        static_site_url("http://h", "ws", "demo", view_config_for("ui/app.html"))
        == "http://h/ws/view/demo/app.html"
    )


def test_an_upload_sets_or_drops_the_view_config_and_keeps_other_config():
    existing = {"config": {"permissions": {"admin": "*"}, "view_config": {"index": "old.html"}, "x": 1}}
    config = _upload_config(existing, "frontend/index.html")
    assert config == {
        "permissions": {"admin": "*"},
        "view_config": view_config_for("frontend/index.html"),
        "x": 1,
    }
    assert _upload_config(existing, None) == {"permissions": {"admin": "*"}, "x": 1}
    assert _upload_config(None, None) == {}


# ---- development versions ------------------------------------------------------------------------------
def test_only_development_versions_may_be_deleted_one_by_one():
    assert dev_version_problem("1.2.0.dev3") is None
    assert dev_version_problem("0.1.0-dev") is None
    problem = dev_version_problem("1.2.0")
    assert problem is not None and "'1.2.0' is a release" in problem and "delete_app" in problem


# ---- deployment_logs -----------------------------------------------------------------------------------
def test_deployment_logs_override_logs_tail_per_deployment():
    lines = _log_lines(0, {"Entry": 50, "BioEngineProxy": -1})
    assert (lines("Entry"), lines("BioEngineProxy"), lines("Helper")) == (50, -1, 0)
    assert _log_lines(30, None)("Entry") == 30
    with pytest.raises(
        InvalidRequest, match=r"deployment_logs\['Entry'\]: log lines must be a whole number >= -1"
    ):
        _log_lines(0, {"Entry": -2})
    with pytest.raises(InvalidRequest, match=r"deployment_logs\['Entry'\]"):
        _log_lines(0, {"Entry": "10"})


def test_an_update_keeps_scaling_proxy_memory_debug_and_ice_servers_it_leaves_out():
    previous = AppRecord(
        application_id="app",
        artifact_id="ws/app",
        scaling={"Entry": {"num_replicas": 2}},
        proxy_memory_in_gb=1.0,
        debug=True,
        ice_servers=[{"urls": "stun:s"}],
    )
    merged = merge_with_previous(DeployRequest(), previous)
    assert (merged.scaling, merged.proxy_memory_in_gb, merged.debug, merged.ice_servers) == (
        {"Entry": {"num_replicas": 2}},
        1.0,
        True,
        [{"urls": "stun:s"}],
    )
    # Given again, scaling is replaced whole.
    assert merge_with_previous(DeployRequest(scaling={"Helper": {"num_replicas": 1}}), previous).scaling == {
        "Helper": {"num_replicas": 1}
    }
