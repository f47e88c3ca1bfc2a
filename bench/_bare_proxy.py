"""A bare app proxy, for ``bench/app_deploy_and_call.py``: the floor of an app call.

A Ray Serve deployment of the shape of the app's own proxy (``BioEngineProxy``): a replica that
connects to Hypha through ``bioengine_common.connect`` (the RPC layer the real proxy uses),
registers one service whose ``ping`` awaits the entry deployment's ``ping`` through its
``DeploymentHandle``, and runs with the proxy's own Serve settings (0 CPUs, its code and Serve's
router on the replica's main event loop). None of the proxy's own work: no per-method rule, no
call limit, no trace span, no WebRTC service, no reconnect watch.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from bioengine_common import connect

BARE_PROXY_SERVICE = "bench-bare-proxy"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class BareProxy:
    async def __init__(self, entry: Any, server_url: str, workspace: str, token: str) -> None:  # type: ignore[misc]
        self.entry = entry
        self.server = await connect(server_url, workspace=workspace, token=token)

        async def ping() -> Any:
            return await self.entry.ping.remote()

        await self.server.register_service(
            {"id": BARE_PROXY_SERVICE, "config": {"visibility": "protected"}, "ping": ping}
        )
        self.service = f"{workspace}/{self.server.config.client_id}:{BARE_PROXY_SERVICE}"

    async def service_id(self) -> str:
        return self.service
