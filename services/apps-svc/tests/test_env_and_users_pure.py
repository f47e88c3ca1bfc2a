"""Env vars and secrets (split_env_vars) and who may call an app (resolve_authorized_users).
Pure: no Ray, no Hypha."""

from __future__ import annotations

import json

import pytest

from bioengine_apps._state import (
    SECRET_MASK,
    resolve_authorized_users,
    split_env_vars,
)

# ---- split_env_vars --------------------------------------------------------------------------------


def test_split_env_vars_separates_secrets():
    plain, secret, masked = split_env_vars(
        {"DemoApp": {"PLAIN": "p", "_API_KEY": "s3cret", "EMPTY": ""}, "*": {"SHARED": "1", "_TOKEN": "t0k"}}
    )
    assert plain == {"DemoApp": {"PLAIN": "p", "EMPTY": ""}, "*": {"SHARED": "1"}}
    assert secret == {"DemoApp": {"API_KEY": "s3cret"}, "*": {"TOKEN": "t0k"}}
    assert masked == {
        "DemoApp": {"PLAIN": "p", "_API_KEY": SECRET_MASK, "EMPTY": ""},
        "*": {"SHARED": "1", "_TOKEN": SECRET_MASK},
    }
    assert SECRET_MASK == "*****"
    assert "s3cret" not in json.dumps(masked) and "t0k" not in json.dumps([plain, masked])


def test_split_env_vars_strips_one_underscore():
    plain, secret, masked = split_env_vars({"App": {"__DOUBLE": "v"}})
    assert plain == {}
    assert secret == {"App": {"_DOUBLE": "v"}}
    assert masked == {"App": {"__DOUBLE": SECRET_MASK}}


@pytest.mark.parametrize("env_vars", [None, {}])
def test_split_env_vars_empty(env_vars):
    assert split_env_vars(env_vars) == ({}, {}, {})


def test_split_env_vars_scope_with_only_secrets_has_no_plain_entry():
    plain, secret, masked = split_env_vars({"App": {"_ONLY": "x"}})
    assert "App" not in plain
    assert secret == {"App": {"ONLY": "x"}}
    assert masked == {"App": {"_ONLY": SECRET_MASK}}


@pytest.mark.parametrize("name", ["PORT", "_TOKEN"])
@pytest.mark.parametrize("value", [5, None, True, 1.5, ["a"], {"a": "b"}, b"bytes"])
def test_split_env_vars_non_string_value_names_the_variable(name, value):
    with pytest.raises(ValueError) as info:
        split_env_vars({"DemoApp": {"OK": "fine", name: value}})
    assert f"application_env_vars.DemoApp.{name}" in str(info.value)
    assert "strings" in str(info.value)


@pytest.mark.parametrize("name", ["", "_", "__", 5, None])
def test_split_env_vars_bad_names(name):
    with pytest.raises(ValueError) as info:
        split_env_vars({"DemoApp": {name: "value"}})
    message = str(info.value)
    assert message.startswith("application_env_vars.DemoApp: invalid variable name")
    assert repr(name) in message


@pytest.mark.parametrize("variables", ["KEY=value", ["KEY"], 5, None])
def test_split_env_vars_scope_must_be_a_mapping(variables):
    with pytest.raises(ValueError, match=r"^application_env_vars\.DemoApp: must map names"):
        split_env_vars({"DemoApp": variables})


def test_split_env_vars_error_does_not_leak_the_secret_value():
    with pytest.raises(ValueError) as info:
        split_env_vars({"App": {"_KEY": 12345}})
    assert "12345" not in str(info.value)


# ---- resolve_authorized_users ----------------------------------------------------------------------

DEPLOYER = ["alice-id", "alice@example.org"]
ADMINS = ["admin@example.org"]
ALWAYS = [*DEPLOYER, *ADMINS]


@pytest.mark.parametrize(
    ("requested", "manifest_rule", "expected"),
    [
        # nothing anywhere: public
        (None, None, {"*": ["*"]}),
        # the manifest's rule when the deploy argument is absent
        (None, ["*"], {"*": ["*"]}),
        (None, {"*": ["*"], "read_env": []}, {"*": ["*"], "read_env": ALWAYS}),
        # the deploy argument beats the manifest
        (["bob"], ["*"], {"*": ["bob", *ALWAYS]}),
        ({"ping": ["*"]}, ["carol"], {"ping": ["*"], "*": ALWAYS}),
        ([], ["*"], {"*": ALWAYS}),
        ({}, {"*": ["*"]}, {"*": ALWAYS}),
        # list -> {'*': list}; a public rule is untouched
        (["*"], None, {"*": ["*"]}),
        (["*", "bob"], None, {"*": ["*", "bob"]}),
        (None, ["bob", "carol"], {"*": ["bob", "carol", *ALWAYS]}),
        # non-public rules get the deployer and admins, without duplicates
        (
            ["admin@example.org", "alice-id", "bob", "bob"],
            None,
            {"*": ["admin@example.org", "alice-id", "bob", "alice@example.org"]},
        ),
        # a missing '*' rule is added with only the deployer and admins
        ({"ping": ["bob"]}, None, {"ping": ["bob", *ALWAYS], "*": ALWAYS}),
        (
            {"ping": ["*"], "read_env": ["bob"]},
            None,
            {"ping": ["*"], "read_env": ["bob", *ALWAYS], "*": ALWAYS},
        ),
    ],
)
def test_resolve_authorized_users(requested, manifest_rule, expected):
    assert resolve_authorized_users(requested, manifest_rule, DEPLOYER, ADMINS) == expected


def test_resolve_authorized_users_skips_empty_ids_and_does_not_mutate_inputs():
    requested = {"ping": ["bob"]}
    manifest_rule = ["carol"]
    rules = resolve_authorized_users(requested, manifest_rule, ["", "alice-id"], ["", "admin"])
    assert rules == {"ping": ["bob", "alice-id", "admin"], "*": ["alice-id", "admin"]}
    assert requested == {"ping": ["bob"]} and manifest_rule == ["carol"]
    rules["ping"].append("mallory")
    assert requested["ping"] == ["bob"]


def test_resolve_authorized_users_without_deployer_or_admins():
    assert resolve_authorized_users(["bob"], None, [], []) == {"*": ["bob"]}
    assert resolve_authorized_users({"ping": ["bob"]}, None, (), ()) == {"ping": ["bob"], "*": []}


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"DemoApp": {"A=B": "x"}}, "invalid variable name 'A=B'"),
        ({"DemoApp": {"1X": "x"}}, "invalid variable name '1X'"),
        ({"DemoApp": {"KEY": "a", "_KEY": "b"}}, "'KEY' and '_KEY' set the same variable"),
    ],
)
def test_split_env_vars_rejects_ambiguous_names(env, error):
    with pytest.raises(ValueError, match=error):
        split_env_vars(env)
