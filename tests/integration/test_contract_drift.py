"""Drift test (real Hypha, the four services as subprocesses): what the running services register
is what the contracts in ``bioengine_common.contracts`` declare.

The gateway registers every contract without ``caller``; each internal service registers the
contracts it implements with ``caller`` (the original caller the gateway passes on).
"""

from __future__ import annotations

from typing import Any

import pytest

from bioengine_common.contracts import WORKER
from bioengine_common.testing import wait_for_service

pytestmark = pytest.mark.integration


def _plain(value: Any) -> Any:
    """A schema as plain data (the server hands back dict proxies, whose keys shadow dict methods:
    a schema's ``items``)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in dict.items(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


async def test_the_running_services_register_the_contracts_schemas(
    hypha_server, ray_head, start_service, admin_client
):
    start_service("cluster", hypha_server, "--mode", "external-cluster", "--head-address", ray_head.address)
    start_service("apps", hypha_server)
    start_service("datasets", hypha_server)
    start_service("gateway", hypha_server)

    registered = {}
    for service_id in ("bioengine-worker", "bioengine-cluster", "bioengine-apps", "bioengine-datasets"):
        info = await wait_for_service(admin_client, service_id, timeout=90)
        registered[service_id] = _plain(info["service_schema"])

    gateway = registered[WORKER.service_id]
    assert {name for name, entry in gateway.items() if entry.get("type") == "function"} == set(WORKER.methods)
    for contract in WORKER:
        assert gateway[contract.name]["function"] == _plain(contract.schema(caller=False)), contract.name
        if contract.forwarded:
            internal = registered[contract.service_id]
            assert contract.name in internal, f"{contract.service_id} does not register {contract.name}"
            assert internal[contract.name]["function"] == _plain(contract.schema(caller=True)), (
                f"{contract.service_id}.{contract.name} drifted from its contract"
            )
