import pytest
from opentelemetry import trace

from bioengine_common import (
    PermissionDenied,
    check_permissions,
    create_context,
    forwarded_caller,
    is_authorized,
    resolve_context,
    setup_telemetry,
)

ALICE = {"user": {"id": "alice-id", "email": "alice@example.org", "is_anonymous": False}}
ANON = {"user": {"id": "anonymouz-quiet-fox", "email": None, "is_anonymous": True}}


@pytest.mark.parametrize(
    ("authorized", "allowed"),
    [
        (["*"], True),
        ("*", True),
        (["alice-id"], True),
        (["alice@example.org"], True),
        ("alice@example.org", True),
        (["bob@example.org", "alice-id"], True),
        (["bob@example.org"], False),
        ([], False),
        (None, False),
        (["ALICE@example.org"], False),  # exact match only
        (["alice"], False),  # no prefix match
    ],
)
def test_check_permissions_rules(authorized, allowed):
    if allowed:
        assert check_permissions(ALICE, authorized, "thing")["id"] == "alice-id"
    else:
        with pytest.raises(PermissionDenied) as info:
            check_permissions(ALICE, authorized, "the thing")
        assert "alice-id" in str(info.value)
        assert "the thing" in str(info.value)
        assert isinstance(info.value, PermissionError)


def test_star_admits_anonymous_but_a_list_does_not():
    assert check_permissions(ANON, ["*"], "x")
    with pytest.raises(PermissionDenied):
        check_permissions(ANON, ["alice-id"], "x")


def test_denial_does_not_leak_the_authorized_list():
    with pytest.raises(PermissionDenied) as info:
        check_permissions(ALICE, ["secret-admin@example.org"], "x")
    assert "secret-admin" not in str(info.value)


@pytest.mark.parametrize(
    "context",
    [None, "user", {}, {"user": None}, {"user": "alice"}, {"user": {}}, {"user": {"id": "", "email": None}}],
)
def test_bad_contexts_are_denied(context):
    with pytest.raises(PermissionDenied, match="No valid context"):
        check_permissions(context, ["*"], "x")


def test_is_authorized_never_raises_on_odd_lists():
    assert is_authorized({"id": "a"}, ("a",)) is True
    assert is_authorized({"id": "a"}, None) is False
    assert is_authorized({}, ["a"]) is False


def test_create_context():
    assert create_context("svc", "svc@example.org")["user"]["id"] == "svc"
    anonymous = create_context(None)["user"]
    assert anonymous["id"] == "anonymous" and anonymous["is_anonymous"] is True


SERVICES = frozenset({"bioengine-services"})


def _from(sender, user_id="bioengine-services", anonymous=False):
    return {"from": sender, "user": {"id": user_id, "is_anonymous": anonymous}}


def test_forwarded_caller_accepted_from_the_services_own_user():
    caller = {"id": "alice-id", "email": "alice@example.org", "is_anonymous": False, "extra": "dropped"}
    resolved = resolve_context(_from("bioengine/gateway-1"), caller, "bioengine", SERVICES)
    assert resolved["user"] == {"id": "alice-id", "email": "alice@example.org", "is_anonymous": False}
    assert resolved["forwarded_by"] == "bioengine-services"
    assert check_permissions(resolved, ["alice-id"], "x")


def test_no_forwarded_caller_keeps_the_direct_user():
    resolved = resolve_context(_from("other-ws/client", "mallory"), None, "bioengine", SERVICES)
    assert resolved["user"]["id"] == "mallory"


def test_trusted_callers_setting_extends_the_trust():
    context = _from("bioengine/gateway-1", "gateway-user")
    with pytest.raises(PermissionDenied):
        resolve_context(context, {"id": "admin"}, "bioengine", SERVICES)
    trusted = SERVICES | {"gateway-user"}
    assert resolve_context(context, {"id": "admin"}, "bioengine", trusted)["user"]["id"] == "admin"


@pytest.mark.parametrize(
    "context",
    [
        _from("bioengine/notebook-1", "bioengine-admin"),  # the admin's own notebook
        _from("bioengine/reader", "read-token-user"),  # any member of the workspace
        _from("bioengine/app-proxy", "wise-citron-19438076"),  # an app's generated token
        _from("ws-user-bioengine-services/x"),  # the trusted user, from another workspace
        _from("bioengine-evil/client"),  # prefix of the workspace name is not enough
        _from("", "mallory"),  # no sender
        _from("bioengine/anon", "anonymouz-x", anonymous=True),  # anonymous in the workspace
        _from("bioengine/anon", "bioengine-services", anonymous=True),  # anonymous flag wins
    ],
)
def test_forwarded_caller_refused_from_anyone_else(context):
    with pytest.raises(PermissionDenied, match="may not pass a caller on") as info:
        resolve_context(context, {"id": "admin"}, "bioengine", SERVICES)
    # The refusal names the sender so it can be found in the logs.
    assert f"'{context['from'] or 'unknown'}'" in str(info.value)


def test_refusal_comes_before_looking_at_the_caller():
    # A malformed caller from an untrusted sender is refused as untrusted, not as malformed.
    with pytest.raises(PermissionDenied, match="may not pass a caller on"):
        resolve_context(_from("bioengine/x", "mallory"), "admin", "bioengine", SERVICES)


def test_denial_names_the_user_by_id_not_email():
    with pytest.raises(PermissionDenied) as info:
        check_permissions(ALICE, ["bob-id"], "dataset 'x'")
    assert "alice-id" in str(info.value) and "alice@example.org" not in str(info.value)


@pytest.mark.parametrize("caller", ["admin", ["admin"], {}, {"id": ""}])
def test_malformed_forwarded_caller_refused(caller):
    with pytest.raises(PermissionDenied):
        resolve_context(_from("bioengine/gateway-1"), caller, "bioengine", SERVICES)


def test_forwarded_caller_carries_user_and_trace_context():
    setup_telemetry("test", "memory")
    with trace.get_tracer("t").start_as_current_span("outer") as span:
        payload = forwarded_caller(ALICE)
    assert payload["id"] == "alice-id" and payload["email"] == "alice@example.org"
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert trace_id in payload["trace"]["traceparent"]
    with pytest.raises(PermissionDenied):
        forwarded_caller({"user": None})


def test_forwarded_caller_names_the_end_users_client():
    context = {"from": "bioengine/notebook-7", "user": {"id": "alice-id", "is_anonymous": False}}
    payload = forwarded_caller(context)
    assert payload["id"] == "alice-id" and payload["from"] == "bioengine/notebook-7"
    # The client id is information for the service, never a way to become someone else.
    resolved = resolve_context(_from("bioengine/gateway-1"), payload, "bioengine", SERVICES)
    assert resolved["user"] == {"id": "alice-id", "is_anonymous": False}
    assert resolved["from"] == "bioengine/gateway-1"
