"""Who may call what: the public worker's ``authorized_users`` rules and caller forwarding.

Rules of ``authorized_users`` (compatible with the public BioEngine worker):

- ``"*"`` in the list admits everyone, anonymous callers included;
- otherwise the caller's user id or email must be in the list;
- an empty list or ``None`` admits nobody; a single string counts as a one-element list.

Caller forwarding: the gateway calls internal services with its own identity, so it passes
the original caller along as ``caller=`` (see :func:`forwarded_caller`). An internal service
trusts that value only when the call comes from a client of the shared workspace
(:func:`resolve_context`); from anyone else it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import propagate

from .errors import PermissionDenied

__all__ = [
    "check_permissions",
    "create_context",
    "forwarded_caller",
    "is_anonymous",
    "is_authorized",
    "resolve_context",
]

_USER_FIELDS = ("id", "email", "is_anonymous", "roles")


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

    Returns the user on success. The message names the user and the resource, not the list
    of authorized users (that list may hold other people's emails).
    """
    user = _user_of(context)
    if is_authorized(user, authorized_users):
        return user
    who = user.get("email") or user.get("id")
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
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if carrier:
        payload["trace"] = carrier
    return payload


def resolve_context(context: Any, caller: Any, workspace: str) -> dict[str, Any]:
    """The context an internal service should authorize against.

    Without ``caller`` it is ``context`` itself. With one, the direct caller must be a client
    of ``workspace`` (``context["from"]`` is ``<workspace>/<client id>``, stamped by the Hypha
    server and so trustworthy) and not anonymous; then the forwarded user replaces the direct
    one and the direct one is kept as ``forwarded_by``.
    """
    direct = _user_of(context)
    if caller is None:
        return dict(context)
    sender = str(context.get("from") or "")
    sender_workspace = sender.split("/", 1)[0]
    if sender_workspace != workspace or is_anonymous(direct):
        raise PermissionDenied(
            f"A forwarded caller is accepted only from clients of workspace '{workspace}'; "
            f"this call came from '{sender or 'unknown'}'"
        )
    if not isinstance(caller, Mapping):
        raise PermissionDenied("The forwarded caller must be a mapping with an 'id'")
    user = {k: caller.get(k) for k in _USER_FIELDS if k in caller}
    if not user.get("id") and not user.get("email"):
        raise PermissionDenied("The forwarded caller has neither an id nor an email")
    return {**context, "user": user, "forwarded_by": direct.get("id")}
