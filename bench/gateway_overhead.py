"""Gateway overhead, the cost of metrics and tracing, start-up time and idle memory of the
local stack. Prints; asserts nothing.

    uv run python bench/gateway_overhead.py [--calls 1000]

Starts `bioengine-worker` twice as a user would (embedded Hypha + SeaweedFS): once with
observability off (`--no-metrics`, no span exporter) and once on (a Prometheus endpoint per
service, spans exported over OTLP/HTTP to a collector stand-in of this script that accepts and
drops them). Then calls `get_status` through each gateway and on the first worker's
`bioengine-cluster` directly, interleaved in blocks so that all see the same machine load.
Last lines: `ratio: <gateway p50 / direct p50>` (observability off) and
`observability ratio: <gateway p50 on / gateway p50 off>` (goal <= 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _stats import print_latency_table  # bench/_stats.py

from bioengine_common import connect
from bioengine_worker.testing import WorkerProcess

OFF, ON, DIRECT = "gateway", "gateway, metrics+tracing", "direct"


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: reads each export and answers 200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def measure(off: dict, on: dict, calls: int, block: int) -> dict[str, list[float]]:
    servers = [await connect(c["server_url"], workspace=c["workspace"], token=c["token"]) for c in (off, on)]
    try:
        targets = {
            OFF: await servers[0].get_service("bioengine-worker"),
            ON: await servers[1].get_service("bioengine-worker"),
            DIRECT: await servers[0].get_service("bioengine-cluster", {"mode": "random"}),
        }
        for proxy in targets.values():  # warm-up
            for _ in range(50):
                await proxy.get_status()
        samples: dict[str, list[float]] = {name: [] for name in targets}
        while len(samples[DIRECT]) < calls:
            for name, proxy in targets.items():
                for _ in range(min(block, calls - len(samples[name]))):
                    t0 = time.perf_counter()
                    await proxy.get_status()
                    samples[name].append((time.perf_counter() - t0) * 1000)
        return samples
    finally:
        for server in servers:
            await server.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per target (default 1000)")
    parser.add_argument(
        "--block", type=int, default=100, help="calls per target before switching (default 100)"
    )
    args = parser.parse_args()
    logging.getLogger("RPC").setLevel(logging.CRITICAL)  # a warning per normal disconnect

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{sink.server_port}"
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        worker = WorkerProcess(Path(tmp) / "off", "--hypha-port", "0", "--no-metrics")
        observed: WorkerProcess | None = None
        try:
            worker.wait_ready(timeout=600)  # a busy machine: Ray alone can take minutes
            startup = time.monotonic() - worker.started
            # Started once the first is up: its start-up does not slow the first one's.
            observed = WorkerProcess(Path(tmp) / "on", "--hypha-port", "0", "--otlp-endpoint", collector)
            observed.wait_ready(timeout=600)
            reported = next((line for line in worker.text().splitlines() if "ready in" in line), "").strip()
            time.sleep(5)  # let the services settle before reading idle memory
            modules = {"bioengine_cluster", "bioengine_apps", "bioengine_datasets", "bioengine_gateway"}
            services = [p for p in worker.descendants() if set(p.cmdline()[1:3]) & modules]
            rss = sum(p.memory_info().rss for p in services) / 2**20
            uss = sum(p.memory_full_info().uss for p in services) / 2**20
            samples = asyncio.run(measure(worker.connection, observed.connection, args.calls, args.block))
        finally:
            worker.stop()
            if observed is not None:
                observed.stop()
            sink.shutdown()

    print(f"start-up: command to gateway registered {startup:.1f} s (launcher: {reported})")
    print(f"idle memory of the {len(services)} service processes: RSS {rss:.0f} MB, USS {uss:.0f} MB")
    print_latency_table(samples, "target")
    ratio = statistics.median(samples[OFF]) / statistics.median(samples[DIRECT])
    print(f"ratio: {ratio:.2f}")
    observability = statistics.median(samples[ON]) / statistics.median(samples[OFF])
    print(f"observability ratio: {observability:.3f} (metrics and OTLP tracing on / off; goal <= 1.05)")


if __name__ == "__main__":
    main()
