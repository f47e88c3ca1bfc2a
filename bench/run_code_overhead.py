"""run_code overhead: a trivial function through the gateway versus a direct Ray task.

    uv run python bench/run_code_overhead.py [--calls 100]

Starts `bioengine-worker --mode single-machine` (embedded Hypha + SeaweedFS + a Ray head) and
reports the single-machine start time (command to cluster ready). Then, interleaved in blocks
so both see the same load: `run_code` of `def analyze(): return 1` through the gateway, and
`ray.get(f.remote())` from a driver connected to the same cluster. Prints; asserts nothing.
Last line: `ratio: <gateway p50 / direct p50>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from _stats import print_latency_table  # bench/_stats.py

from bioengine_common import connect, connect_driver
from bioengine_worker.testing import WorkerProcess


async def wait_cluster_ready(gateway, started: float, timeout: float = 180) -> float:
    while time.monotonic() - started < timeout:
        status = await gateway.get_status()
        if (status.get("ray_cluster") or {}).get("ready"):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise SystemExit("the Ray cluster did not become ready")


async def run(workspace_dir: Path, calls: int, block: int) -> None:
    worker = WorkerProcess(workspace_dir, "--mode", "single-machine", "--hypha-port", "0")
    started = worker.started
    try:
        connection = await asyncio.to_thread(worker.wait_ready)
        server = await connect(
            connection["server_url"], workspace=connection["workspace"], token=connection["token"]
        )
        gateway = await server.get_service("bioengine-worker")
        ready_after = await wait_cluster_ready(gateway, started)
        info = await (await server.get_service("bioengine-cluster", {"mode": "random"})).get_connection_info()

        # A driver of the worker's cluster needs its token file (token authentication).
        connect_driver(info["address"], 60.0, info["namespace"], info.get("token_file"))
        import ray

        @ray.remote
        def analyze() -> int:
            return 1

        code = "def analyze():\n    return 1\n"
        for _ in range(5):  # warm-up: worker processes, imports
            await gateway.run_code(code=code)
            ray.get(analyze.remote())
        samples: dict[str, list[float]] = {"gateway run_code": [], "direct ray.get": []}
        while len(samples["direct ray.get"]) < calls:
            for _ in range(min(block, calls - len(samples["gateway run_code"]))):
                t0 = time.perf_counter()
                result = await gateway.run_code(code=code)
                samples["gateway run_code"].append((time.perf_counter() - t0) * 1000)
                assert result.get("result") == 1, result
            for _ in range(min(block, calls - len(samples["direct ray.get"]))):
                t0 = time.perf_counter()
                ray.get(analyze.remote())
                samples["direct ray.get"].append((time.perf_counter() - t0) * 1000)
        ray.shutdown()
        await server.disconnect()
    finally:
        worker.stop()

    print(f"single-machine start: command to Ray cluster ready {ready_after:.1f} s")
    print_latency_table(samples, "path")
    ratio = statistics.median(samples["gateway run_code"]) / statistics.median(samples["direct ray.get"])
    print(f"ratio: {ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="calls per path (default 100)")
    parser.add_argument("--block", type=int, default=10, help="calls per path before switching (default 10)")
    args = parser.parse_args()
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        asyncio.run(run(Path(tmp), args.calls, args.block))


if __name__ == "__main__":
    main()
