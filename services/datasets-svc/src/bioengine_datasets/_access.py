"""Who may read a dataset, and who a token belongs to."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from bioengine_common import PermissionDenied, connect, is_anonymous, is_authorized, token_claims

from ._registry import Dataset

__all__ = ["DatasetUnreadable", "TokenValidator", "may_read", "readable_dataset"]


def may_read(user: Mapping[str, Any] | None, dataset: Dataset, admins: Sequence[str]) -> bool:
    """Public datasets: everyone. Otherwise a signed-in user who is an admin or listed;
    ``"*"`` means every signed-in user, never anonymous ones."""
    if dataset.manifest.public:
        return True
    if not user or is_anonymous(user):
        return False
    if is_authorized(user, admins):
        return True
    return is_authorized(user, dataset.manifest.authorized_users)


class DatasetUnreadable(PermissionDenied):
    """The one answer for a dataset that does not exist and for one the caller may not read,
    so that private ids cannot be discovered. The text depends only on the id the caller gave
    and on whether the caller is anonymous (never on the dataset, never names the caller).
    Over HTTP: 401 for anonymous callers, 403 for signed-in ones."""

    def __init__(self, dataset_id: str, anonymous: bool):
        self.anonymous = anonymous
        how = "without a token" if anonymous else "with this token"
        super().__init__(f"dataset '{dataset_id}' not found or not readable {how}")


def readable_dataset(
    datasets: Mapping[str, Dataset],
    dataset_id: str,
    user: Mapping[str, Any] | None,
    admins: Sequence[str],
) -> Dataset:
    """The dataset ``dataset_id`` if ``user`` may read it; DatasetUnreadable otherwise, the
    same whether it exists or not."""
    dataset = datasets.get(dataset_id)
    if dataset is None or not may_read(user, dataset, admins):
        raise DatasetUnreadable(dataset_id, anonymous=not user or is_anonymous(user))
    return dataset


class TokenValidator:
    """Token -> Hypha user, asked of the Hypha server once and cached until the token expires.

    Keys are SHA-256 digests, so the cache holds no token; concurrent misses for one token
    share one lookup. Rejected tokens are remembered briefly.
    """

    def __init__(self, server_url: str, max_entries: int = 1000, negative_ttl: float = 30.0):
        self.server_url = server_url
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self._cache: OrderedDict[str, tuple[dict[str, Any] | None, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    async def _lookup(self, token: str) -> tuple[dict[str, Any] | None, float]:
        try:
            server = await connect(self.server_url, token=token, timeout=10)
        except Exception:
            return None, time.time() + self.negative_ttl
        try:
            user = dict(server.config.get("user") or {})
        finally:
            with contextlib.suppress(Exception):
                await server.disconnect()
        expires = user.get("expires_at")
        if not expires:
            with contextlib.suppress(ValueError):
                expires = token_claims(token).get("exp")
        return {k: user.get(k) for k in ("id", "email", "is_anonymous", "roles")}, float(
            expires or time.time() + 300
        )

    async def user(self, token: str) -> dict[str, Any] | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached and cached[1] > time.time():
            self._cache.move_to_end(key)
            return cached[0]
        if key in self._pending:
            return await self._pending[key]
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            user, expires = await self._lookup(token)
            self._cache[key] = (user, expires)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
            future.set_result(user)
            return user
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._pending[key]
