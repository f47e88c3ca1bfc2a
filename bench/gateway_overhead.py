"""Gateway overhead, start-up time and idle memory of the local stack. Prints; asserts nothing.

    uv run python bench/gateway_overhead.py [--calls 1000]

Starts `bioengine-worker` as a user would (embedded Hypha + SeaweedFS), then calls
`get_status` through the gateway and on `bioengine-cluster` directly, interleaved in blocks so
that both see the same machine load. Last line: `ratio: <gateway p50 / direct p50>`.
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

from bioengine_common import connect
from bioengine_worker.testing import WorkerProcess


async def measure(connection: dict, calls: int, block: int) -> dict[str, list[float]]:
    server = await connect(
        connection["server_url"], workspace=connection["workspace"], token=connection["token"]
    )
    try:
        targets = {
            "gateway": await server.get_service("bioengine-worker"),
            "direct": await server.get_service("bioengine-cluster", {"mode": "random"}),
        }
        for proxy in targets.values():  # warm-up
            for _ in range(50):
                await proxy.get_status()
        samples: dict[str, list[float]] = {name: [] for name in targets}
        while len(samples["direct"]) < calls:
            for name, proxy in targets.items():
                for _ in range(min(block, calls - len(samples[name]))):
                    t0 = time.perf_counter()
                    await proxy.get_status()
                    samples[name].append((time.perf_counter() - t0) * 1000)
        return samples
    finally:
        await server.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per target (default 1000)")
    parser.add_argument(
        "--block", type=int, default=100, help="calls per target before switching (default 100)"
    )
    args = parser.parse_args()
    logging.getLogger("RPC").setLevel(logging.CRITICAL)  # a warning per normal disconnect

    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        worker = WorkerProcess(Path(tmp), "--hypha-port", "0")
        try:
            worker.wait_ready()
            startup = time.monotonic() - worker.started
            reported = next((line for line in worker.text().splitlines() if "ready in" in line), "").strip()
            time.sleep(5)  # let the services settle before reading idle memory
            modules = {"bioengine_cluster", "bioengine_apps", "bioengine_datasets", "bioengine_gateway"}
            services = [p for p in worker.descendants() if set(p.cmdline()[1:3]) & modules]
            rss = sum(p.memory_info().rss for p in services) / 2**20
            uss = sum(p.memory_full_info().uss for p in services) / 2**20
            samples = asyncio.run(measure(worker.connection, args.calls, args.block))
        finally:
            worker.stop()

    print(f"start-up: command to gateway registered {startup:.1f} s (launcher: {reported})")
    print(f"idle memory of the {len(services)} service processes: RSS {rss:.0f} MB, USS {uss:.0f} MB")
    print_latency_table(samples, "target")
    ratio = statistics.median(samples["gateway"]) / statistics.median(samples["direct"])
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
