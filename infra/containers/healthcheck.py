"""HEALTHCHECK of the BioEngine service images: healthy when the service is registered.

Usage: healthcheck.py SERVICE_NAME   (bioengine-worker, bioengine-cluster, ...)

Connects to Hypha with the container's own settings (BIOENGINE_SERVER_URL, BIOENGINE_WORKSPACE,
BIOENGINE_TOKEN or BIOENGINE_TOKEN_FILE) and exits 0 when the workspace lists SERVICE_NAME,
1 otherwise (with the reason on stderr). It never prints the token.
"""

import asyncio
import os
import sys

from hypha_rpc import connect_to_server


def _token() -> str | None:
    path = os.environ.get("BIOENGINE_TOKEN_FILE")
    if path:
        with open(path) as handle:
            return handle.read().strip()
    return os.environ.get("BIOENGINE_TOKEN")


async def _registered(name: str) -> bool:
    workspace = os.environ.get("BIOENGINE_WORKSPACE", "bioengine")
    server = await connect_to_server(
        {
            "server_url": os.environ.get("BIOENGINE_SERVER_URL", "http://127.0.0.1:9527"),
            "workspace": workspace,
            "token": _token(),
            "method_timeout": 10,
        }
    )
    try:
        services = await server.list_services(workspace)
        return any(str(service.get("id", "")).endswith(f":{name}") for service in services)
    finally:
        await server.disconnect()


def main() -> int:
    name = sys.argv[1]
    try:
        ok = asyncio.run(asyncio.wait_for(_registered(name), 20))
    except Exception as exc:
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {name} is not registered", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
