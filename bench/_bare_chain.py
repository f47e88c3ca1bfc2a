"""A bare call chain of the shape of a gateway ``run_code``, for ``bench/run_code_overhead.py``.

    python bench/_bare_chain.py task|forward   (connection in BENCH_* environment variables)

``task``: a Hypha service whose ``run()`` awaits one trivial Ray task (a Ray driver of the
worker's cluster), or with ``run(True)`` runs ``def analyze(): return 1`` through run_code's own
Ray part (``run_in_ray``: its streaming task and the driver's handling of the stream).
``forward``: a Hypha service whose ``run(streamed)`` calls the task service's through Hypha.
Each runs in a process of its own, as the gateway and bioengine-cluster do, and connects
through ``bioengine_common.connect`` (the RPC layer our services use), but with none of a
service's own work: no contract, permission check, caller forwarding, log line, span, metric,
streamed output or run record. Prints ``READY <service id>`` once registered.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from bioengine_common import connect, connect_driver

TASK_SERVICE = "bench-bare-task"
FORWARD_SERVICE = "bench-bare-forward"
CODE = "def analyze():\n    return 1\n"


async def serve(role: str) -> None:
    env = os.environ
    server = await connect(
        env["BENCH_SERVER_URL"], workspace=env["BENCH_WORKSPACE"], token=env["BENCH_TOKEN"]
    )
    if role == "task":
        connect_driver(
            env["BENCH_RAY_ADDRESS"], 60.0, env["BENCH_RAY_NAMESPACE"], env.get("BENCH_RAY_TOKEN_FILE")
        )
        import ray

        @ray.remote
        def analyze() -> int:
            return 1

        from bioengine_cluster._run_code import run_in_ray

        async def run_task(streamed: bool = False) -> dict[str, Any]:
            if streamed:  # run_code's own Ray part: its streaming task, without the service
                return await run_in_ray("source", CODE, None, "analyze", [], {}, {}, None, None, 60.0)
            return {"result": await analyze.remote()}

        run, service_id = run_task, TASK_SERVICE
    elif role == "forward":
        task = await server.get_service(env["BENCH_TASK_SERVICE"])

        async def forward(streamed: bool = False) -> Any:
            return await task.run(streamed)

        run, service_id = forward, FORWARD_SERVICE
    else:
        raise SystemExit(f"role must be 'task' or 'forward', got {role!r}")
    await server.register_service({"id": service_id, "config": {"visibility": "protected"}, "run": run})
    print(f"READY {server.config.workspace}/{server.config.client_id}:{service_id}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1] if len(sys.argv) > 1 else ""))
