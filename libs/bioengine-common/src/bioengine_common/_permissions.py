"""Who may call what: the public worker's ``authorized_users`` rules and caller forwarding.

Rules of ``authorized_users`` (compatible with the public BioEngine worker):

- ``"*"`` in the list admits everyone, anonymous callers included;
- otherwise the caller's user id or email must be in the list;
- an empty list or ``None`` admits nobody; a single string counts as a one-element list.

Caller forwarding: the gateway calls internal services with its own identity, so it passes
the original caller along as ``caller=`` (see :func:`forwarded_caller`). Membership of the
workspace is not trust: any read token, any app's token and any member's notebook is a client
of it. An internal service therefore honours ``caller=`` only when the direct caller's Hypha
user (stamped into ``context`` by the Hypha server, so it cannot be forged) is one it trusts:
the user its own token belongs to, plus any listed with ``--trusted-callers``
(:func:`resolve_context`). Everyone else who passes ``caller=`` is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from opentelemetry import propagate

from .errors import PermissionDenied

__all__ = [
    "SERVICES_USER",
    "check_permissions",
    "create_context",
    "forwarded_caller",
    "is_anonymous",
    "is_authorized",
    "resolve_context",
]

_USER_FIELDS = ("id", "email", "is_anonymous", "roles")

#: The Hypha user the services of a local (embedded-server) stack run as; it is the one
#: principal they trust to pass a caller on, and it is not the printed admin token's user.
SERVICES_USER = "bioengine-services"


def _user_of(context: Any) -> Mapping[str, Any]:
    if not isinstance(context, Mapping):
        raise PermissionDenied("No valid context: the call carries no Hypha context")
    user = context.get("user")
    if not isinstance(user, Mapping):
        raise PermissionDenied("No valid context: the Hypha context has no user")
    if not user.get("id") and not user.get("email"):
        raise PermissionDenied("No valid context: the user has neither an id nor an email")
    return user


def _as_list(authorized_users: str | Iterable[str] | None) -> list[str]:
    if authorized_users is None:
        return []
    if isinstance(authorized_users, str):
        return [authorized_users]
    return [str(u) for u in authorized_users]


def is_anonymous(user: Mapping[str, Any]) -> bool:
    """True for Hypha's anonymous users (``is_anonymous`` or an ``anonymouz-`` id)."""
    return bool(user.get("is_anonymous")) or str(user.get("id", "")).startswith("anonymouz-")


def is_authorized(user: Mapping[str, Any], authorized_users: str | Iterable[str] | None) -> bool:
    """Whether ``user`` passes ``authorized_users``; never raises."""
    allowed = _as_list(authorized_users)
    if "*" in allowed:
        return True
    identities = {user.get("id"), user.get("email")} - {None, ""}
    return any(identity in allowed for identity in identities)


def check_permissions(
    context: Any,
    authorized_users: str | Iterable[str] | None,
    resource_name: str,
) -> Mapping[str, Any]:
    """Raise :class:`PermissionDenied` unless the context's user passes ``authorized_users``.

    Returns the user on success. The message names the user by id and the resource, neither
    the list of authorized users (it may hold other people's emails) nor the caller's email.
    """
    user = _user_of(context)
    if is_authorized(user, authorized_users):
        return user
    who = user.get("id") or "unknown"
    if not _as_list(authorized_users):
        raise PermissionDenied(f"User '{who}' may not access {resource_name}: nobody is authorized")
    raise PermissionDenied(f"User '{who}' is not authorized to access {resource_name}")


def create_context(user_id: str | None, email: str | None = None) -> dict[str, Any]:
    """A minimal context for calls a service makes on its own behalf."""
    return {
        "user": {
            "id": user_id or "anonymous",
            "email": email or "anonymous@example.com",
            "is_anonymous": user_id is None,
        }
    }


def forwarded_caller(context: Any) -> dict[str, Any]:
    """What the gateway passes downstream as ``caller=``: the user plus the trace context."""
    user = _user_of(context)
    payload: dict[str, Any] = {k: user.get(k) for k in _USER_FIELDS if k in user}
    # The end user's client (stamped by the server): cluster-svc cancels a run_code whose
    # caller has left. Like the user, honoured only from a trusted forwarder.
    if isinstance(context, Mapping) and context.get("from"):
        payload["from"] = str(context["from"])
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if carrier:
        payload["trace"] = carrier
    return payload


def resolve_context(
    context: Any, caller: Any, workspace: str, trusted_users: Collection[str]
) -> dict[str, Any]:
    """The context an internal service should authorize against.

    Without ``caller`` it is ``context`` itself. With one, the direct caller must be a user in
    ``trusted_users`` (``context["user"]["id"]``, set by the Hypha server from the caller's
    token), not anonymous, and a client of ``workspace`` (``context["from"]``, also set by the
    server); then the forwarded user replaces the direct one, which is kept as
    ``forwarded_by``. Anyone else passing ``caller`` gets :class:`PermissionDenied` naming them.
    """
    direct = _user_of(context)
    if caller is None:
        return dict(context)
    sender = str(context.get("from") or "unknown")
    user_id = str(direct.get("id") or "")
    if is_anonymous(direct) or user_id not in trusted_users or sender.split("/", 1)[0] != workspace:
        raise PermissionDenied(
            f"'{sender}' (user '{user_id or 'unknown'}') may not pass a caller on: only this "
            "worker's own services may (see --trusted-callers)"
        )
    if not isinstance(caller, Mapping):
        raise PermissionDenied("The forwarded caller must be a mapping with an 'id'")
    user = {k: caller.get(k) for k in _USER_FIELDS if k in caller}
    if not user.get("id") and not user.get("email"):
        raise PermissionDenied("The forwarded caller has neither an id nor an email")
    return {**context, "user": user, "forwarded_by": user_id}
