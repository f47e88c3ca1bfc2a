"""Start-up function of the embedded Hypha server: creates the worker's shared workspace.

Hypha runs it as root at every server start (``--startup-functions``), so the workspace is
back before any service reconnects after a restart. The workspace id comes from
``BIOENGINE_WORKSPACE``.
"""

import os


async def hypha_startup(server):
    workspace = os.environ.get("BIOENGINE_WORKSPACE", "bioengine")
    await server.create_workspace(
        {
            "id": workspace,
            "name": workspace,
            "description": "Shared workspace of the BioEngine worker's services",
            "persistent": True,
        },
        overwrite=True,
    )
