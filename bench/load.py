"""Under load: many concurrent callers of the gateway and many concurrent dataset readers.
Loopback only, bounded in calls and time. Prints; asserts nothing.

    uv run python bench/load.py [--callers 200] [--calls 10] [--readers 50] [--reads 10]

Starts `bioengine-worker` as a user would (embedded Hypha, no S3), with a uint16
(16, 2048, 2048) dataset in (1, 512, 512) chunks in its data folder. Then:

1. `--callers` concurrent callers, spread over `--connections` Hypha connections, each making
   `--calls` calls of `get_status` through the gateway (`bioengine-worker`) and, as its own
   phase, the same on `bioengine-cluster` directly; the phases alternate (`--rounds` each) so
   both see the same machine load.
2. `--readers` concurrent readers, each with its own `HttpZarrStore` (its own connections, like
   separate users), each reading `--reads` random 512x512 tiles, versus the same reads of the
   same array from local disk (zarr's async API, one event loop).

Prints calls/s, p50/p95/max latency and the errors of each; last line
`ratio: <gateway p95 / direct p95>` (goal <= 1.5, with 0 errors).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from _stats import percentile  # bench/_stats.py

from bioengine_common import connect
from bioengine_datasets_client import HttpZarrStore
from bioengine_worker.testing import WorkerProcess

PLANES, SIDE, TILE = 16, 2048, 512
CALL_TIMEOUT = 60.0  # one call or read; longer counts as an error
PHASE_TIMEOUT = 600.0  # a whole phase; then the run stops with what it has


class Result:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.seconds = 0.0

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def row(self, name: str) -> str:
        values = self.latencies or [float("nan")]
        done = len(self.latencies)
        errors = sum(self.errors.values())
        detail = f" ({', '.join(f'{k} {v}' for k, v in self.errors.items())})" if errors else ""
        return (
            f"{name:<28}{done:>7}{done / self.seconds if self.seconds else 0:>10.0f}"
            f"{percentile(values, 50):>10.1f}{percentile(values, 95):>10.1f}{max(values):>10.1f}"
            f"{errors:>8}{detail}"
        )


def header(unit: str) -> str:
    return f"{'target':<28}{unit:>7}{unit + '/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'errors':>8}"


def write_dataset(folder: Path) -> np.ndarray:
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text("name: Load test volume\n")
    rng = np.random.default_rng(0)
    data = rng.poisson(100.0, size=(PLANES, SIDE, SIDE)).astype("uint16")
    zarr.create_array(store=folder / "volume.zarr", shape=data.shape, chunks=(1, TILE, TILE), dtype="uint16")[
        :
    ] = data
    return data


async def hammer(proxies: list[Any], callers: int, calls: int, result: Result) -> None:
    """``callers`` tasks, each making ``calls`` calls of ``get_status`` one after another."""

    async def caller(proxy: Any) -> None:
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await proxy.get_status()
            except Exception as exc:
                result.error(exc)
            else:
                result.latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT):
        await asyncio.gather(*(caller(proxies[n % len(proxies)]) for n in range(callers)))
    result.seconds += time.perf_counter() - started


async def read_tiles(arrays: list[Any], reads: int, seed: int, result: Result) -> None:
    """One reader per array, each reading ``reads`` random tiles one after another."""

    async def reader(array: Any, rng: random.Random) -> None:
        for _ in range(reads):
            z, y, x = rng.randrange(PLANES), rng.randrange(SIDE // TILE), rng.randrange(SIDE // TILE)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await array.getitem((z, slice(y * TILE, (y + 1) * TILE), slice(x * TILE, (x + 1) * TILE)))
            except Exception as exc:
                result.error(exc)
            else:
                result.latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT):
        await asyncio.gather(*(reader(a, random.Random(seed + n)) for n, a in enumerate(arrays)))
    result.seconds += time.perf_counter() - started


async def run(args: argparse.Namespace, connection: dict[str, Any], volume: Path) -> dict[str, Result]:
    servers = [
        await connect(connection["server_url"], workspace=connection["workspace"], token=connection["token"])
        for _ in range(args.connections)
    ]
    results = {name: Result() for name in ("gateway", "direct", "datasets HTTP", "datasets local")}
    stores: list[HttpZarrStore] = []
    try:
        gateways = [await s.get_service("bioengine-worker") for s in servers]
        directs = [await s.get_service("bioengine-cluster", {"mode": "random"}) for s in servers]
        for proxy in gateways + directs:  # warm-up
            await proxy.get_status()
        status = await gateways[0].get_status()
        http_url = status["services"]["datasets"]["status"]["http_url"]
        for _ in range(args.rounds):
            await hammer(gateways, args.callers, args.calls, results["gateway"])
            await hammer(directs, args.callers, args.calls, results["direct"])

        url = f"{http_url}/data/load/volume.zarr"
        stores = [HttpZarrStore(url, token=connection["token"]) for _ in range(args.readers)]
        remote = [await zarr.api.asynchronous.open_array(store=s, mode="r") for s in stores]
        local_array = await zarr.api.asynchronous.open_array(store=str(volume), mode="r")
        local = [local_array] * args.readers
        for array in (remote[0], local_array):  # warm-up and a check
            assert np.array_equal(await array.getitem((0, slice(0, 8), slice(0, 8))), args.data[0, :8, :8])
        for round_ in range(args.rounds):
            await read_tiles(remote, args.reads, 1000 * round_, results["datasets HTTP"])
            await read_tiles(local, args.reads, 1000 * round_, results["datasets local"])
    finally:
        for store in stores:
            await store.__aexit__()
        for server in servers:
            await server.disconnect()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=200, help="concurrent get_status callers")
    parser.add_argument("--calls", type=int, default=10, help="calls per caller and round")
    parser.add_argument("--connections", type=int, default=4, help="Hypha connections the callers share")
    parser.add_argument("--readers", type=int, default=50, help="concurrent dataset readers")
    parser.add_argument("--reads", type=int, default=10, help="random 512x512 tiles per reader and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per phase")
    args = parser.parse_args()
    if min(args.callers, args.calls, args.connections, args.readers, args.reads, args.rounds) < 1:
        parser.error("every count must be at least 1")
    logging.getLogger("RPC").setLevel(logging.CRITICAL)  # a warning per normal disconnect

    with tempfile.TemporaryDirectory(prefix="bioengine-load-") as tmp:
        workspace = Path(tmp) / "worker"
        args.data = write_dataset(workspace / "datasets" / "load")
        worker = WorkerProcess(workspace, "--hypha-port", "0", "--no-s3")
        try:
            connection = worker.wait_ready(timeout=600)  # a busy machine: Ray alone can take minutes
            results = asyncio.run(run(args, connection, workspace / "datasets" / "load" / "volume.zarr"))
        finally:
            worker.stop()

    print(
        f"\n{args.callers} concurrent get_status callers, {args.calls} calls each per round, {args.rounds} rounds"
    )
    print(header("calls"))
    for name in ("gateway", "direct"):
        print(results[name].row(name))
    print(f"\n{args.readers} concurrent readers of random 512x512 tiles, {args.reads} each per round")
    print(header("reads"))
    for name in ("datasets HTTP", "datasets local"):
        print(results[name].row(name))
    http, local = results["datasets HTTP"].latencies, results["datasets local"].latencies
    if http and local:
        print(f"datasets ratio: {percentile(http, 95) / percentile(local, 95):.2f} (HTTP p95 / local p95)")
    gateway, direct = results["gateway"].latencies, results["direct"].latencies
    if gateway and direct:
        print(f"ratio: {percentile(gateway, 95) / percentile(direct, 95):.2f}")
    else:
        print("ratio: nan (no successful calls)")


if __name__ == "__main__":
    main()
