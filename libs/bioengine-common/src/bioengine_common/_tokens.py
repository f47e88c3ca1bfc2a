"""HS256 tokens in the shape the Hypha server accepts, for stacks whose JWT secret we hold."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Literal

import jwt

__all__ = ["mint_token", "token_claims"]

_ISSUER = "https://amun.ai/"
_AUDIENCE = "https://amun-ai.eu.auth0.com/api/v2/"
_PERMISSION_CODES = {"read": "r", "read_write": "rw", "admin": "a"}


def mint_token(
    secret: str,
    subject: str,
    workspace: str,
    permission: Literal["read", "read_write", "admin"] = "read_write",
    *,
    email: str | None = None,
    expires_in: float = 7 * 24 * 3600,
    pin_workspace: bool = True,
) -> str:
    """A token for user ``subject`` with ``permission`` on ``workspace``.

    ``pin_workspace`` adds ``wid:<workspace>`` so the token connects to that workspace only.
    """
    now = int(time.time())
    scope = f"ws:{workspace}#{_PERMISSION_CODES[permission]}"
    if pin_workspace:
        scope += f" wid:{workspace}"
    claims: dict[str, Any] = {
        "iss": _ISSUER,
        "aud": _AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + int(expires_in),
        "scope": scope,
        "gty": "client-credentials",
        "https://amun.ai/roles": [],
        "https://amun.ai/email": email,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT **without verifying it**: only for describing our own token."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError) as exc:
        raise ValueError("not a JWT") from exc
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return claims
