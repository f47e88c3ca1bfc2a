"""Keys of Ray's GCS key-value store shared by apps-svc and the app replicas.

apps-svc writes an app's record, its secret env values and its Hypha token there; replicas
read the secrets and the token when they start. The store lives as long as the Ray cluster.
"""

from __future__ import annotations

import json
from typing import Any

NAMESPACE = "bioengine_apps"


def record_key(application_id: str) -> bytes:
    return f"app/{application_id}".encode()


def secrets_key(application_id: str) -> bytes:
    return f"secrets/{application_id}".encode()


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
