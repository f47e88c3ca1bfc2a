"""Gateway overhead, start-up time and idle memory of the local stack. Prints; asserts nothing.

    uv run python bench/gateway_overhead.py [--calls 1000]

Starts `bioengine-worker` as a user would (embedded Hypha + SeaweedFS), then calls
`get_status` through the gateway and on `bioengine-cluster` directly, interleaved in blocks so
that both see the same machine load. Last line: `ratio: <gateway p50 / direct p50>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bioengine_common import connect


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_stack(workspace_dir: Path) -> tuple[subprocess.Popen[bytes], float, Path]:
    output = workspace_dir / "launcher.out"
    started = time.monotonic()
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bioengine_worker",
                "--workspace-dir",
                str(workspace_dir),
                "--hypha-port",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")},
        )
    while "Press Ctrl-C to stop." not in output.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() - started > 180:
            raise SystemExit(f"the stack did not start:\n{output.read_text()}")
        time.sleep(0.05)
    return process, time.monotonic() - started, output


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
        workspace_dir = Path(tmp)
        process, startup, output = start_stack(workspace_dir)
        try:
            connection = json.loads((workspace_dir / "worker.json").read_text())
            reported = next(
                (line for line in output.read_text().splitlines() if "ready in" in line), ""
            ).strip()
            time.sleep(5)  # let the services settle before reading idle memory
            modules = {"bioengine_cluster", "bioengine_apps", "bioengine_datasets", "bioengine_gateway"}
            services = [p for p in psutil.Process(process.pid).children() if set(p.cmdline()[1:3]) & modules]
            rss = sum(p.memory_info().rss for p in services) / 2**20
            uss = sum(p.memory_full_info().uss for p in services) / 2**20
            samples = asyncio.run(measure(connection, args.calls, args.block))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)

    print(f"start-up: command to gateway registered {startup:.1f} s (launcher: {reported})")
    print(f"idle memory of the {len(services)} service processes: RSS {rss:.0f} MB, USS {uss:.0f} MB")
    print(f"{'target':<10}{'calls':>7}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, values in samples.items():
        print(
            f"{name:<10}{len(values):>7}{statistics.median(values):>10.3f}"
            f"{percentile(values, 99):>10.3f}{statistics.fmean(values):>10.3f}"
        )
    ratio = statistics.median(samples["gateway"]) / statistics.median(samples["direct"])
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
