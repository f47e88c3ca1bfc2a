"""Keys of Ray's GCS key-value store shared by apps-svc and the app replicas.

apps-svc writes an app's record, its secret env values and its Hypha token there (through
:class:`RayKV`); replicas read the secrets and the token when they start (``get_json`` of
``secrets_key``). The store lives as long as the Ray cluster. Every function blocks and needs a
connected Ray driver or worker.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "NAMESPACE",
    "RayKV",
    "delete",
    "get_json",
    "health_key",
    "list_keys",
    "put_json",
    "record_key",
    "secrets_key",
]

NAMESPACE = "bioengine_apps"
_RECORD_PREFIX = "app/"


def record_key(application_id: str) -> bytes:
    return f"{_RECORD_PREFIX}{application_id}".encode()


def secrets_key(application_id: str) -> bytes:
    return f"secrets/{application_id}".encode()


def health_key(application_id: str) -> bytes:
    """The last lifecycle failure of each deployment of a 0.6.0 app (written by its replicas)."""
    return f"health/{application_id}".encode()


def get_json(key: bytes) -> Any:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
    return None if raw is None else json.loads(raw)


def put_json(key: bytes, value: Any) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, json.dumps(value, sort_keys=True), overwrite=True, namespace=NAMESPACE)


def delete(key: bytes) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, namespace=NAMESPACE)


def list_keys(prefix: str) -> list[str]:
    from ray.experimental import internal_kv

    return [k.decode() for k in internal_kv._internal_kv_list(prefix.encode(), namespace=NAMESPACE)]


class RayKV:
    """The apps' entries in Ray's KV store, as apps-svc keeps them: one JSON record and one JSON
    secrets entry per app. Every method blocks (apps-svc runs them in threads)."""

    def record_ids(self) -> list[str]:
        """Ids of the apps that have a record."""
        return [key.removeprefix(_RECORD_PREFIX) for key in list_keys(_RECORD_PREFIX)]

    def get_record(self, application_id: str) -> dict[str, Any] | None:
        return get_json(record_key(application_id))

    def put_record(self, application_id: str, record: dict[str, Any]) -> None:
        put_json(record_key(application_id), record)

    def get_secrets(self, application_id: str) -> dict[str, Any] | None:
        return get_json(secrets_key(application_id))

    def put_secrets(self, application_id: str, secrets: dict[str, Any]) -> None:
        put_json(secrets_key(application_id), secrets)

    def delete_app(self, application_id: str) -> None:
        """Remove the app's record, secrets and recorded failures."""
        delete(record_key(application_id))
        delete(secrets_key(application_id))
        delete(health_key(application_id))
