"""An app's method over the websocket versus over WebRTC, same app, same run. Prints; asserts nothing.

    uv run python bench/app_webrtc.py [--rounds 5] [--calls 200]

Starts `bioengine-worker --mode single-machine` as a user would, uploads and deploys
apps/demo-app through the gateway, opens a WebRTC peer connection to the app (hypha-rpc's
`get_rtc_service`, aiortc, host candidates on loopback) and calls `ping` through the app's
websocket service and over the peer connection, interleaved in blocks. Each round gives a p50
and a p95 per path; the table shows the median of the rounds and their spread (min-max).

Last line: `ratio: <rtc p50 / websocket p50>` (medians of the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from _stats import percentile  # bench/_stats.py

from bioengine_common import connect, ray_environment
from bioengine_worker import read_app_folder
from bioengine_worker.testing import WorkerProcess

os.environ.update(ray_environment())

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "apps" / "demo-app"
APP_ID = "bench-webrtc"


async def _service_ids(worker) -> dict:
    while True:
        status = (await worker.get_app_status(application_ids=[APP_ID], logs_tail=0))[APP_ID]
        if status["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"{APP_ID}: {status['message']}")
        ids = status["service_ids"][0]
        if status["status"] == "RUNNING" and ids["webrtc_service_id"]:
            return ids
        if status.get("webrtc_error"):
            raise RuntimeError(f"{APP_ID} has no WebRTC service: {status['webrtc_error']}")
        await asyncio.sleep(0.2)


async def run(connection: dict, rounds: int, calls: int, block: int) -> tuple[dict, list[float]]:
    from hypha_rpc.webrtc_client import get_rtc_service

    server = await connect(
        connection["server_url"], workspace=connection["workspace"], token=connection["token"]
    )
    try:
        worker = await server.get_service("bioengine-worker")
        while not (await worker.get_status())["is_ready"]:
            await asyncio.sleep(0.5)
        artifact_id = await worker.upload_app(files=read_app_folder(DEMO))
        await worker.deploy_app(artifact_id=artifact_id, application_id=APP_ID)
        ids = await _service_ids(worker)
        websocket = await server.get_service(ids["websocket_service_id"])
        opens: list[float] = []
        for _ in range(3):  # opening a peer connection (offer/answer through Hypha, ICE, DTLS, SCTP)
            t0 = time.perf_counter()
            peer = await get_rtc_service(server, ids["webrtc_service_id"])
            opens.append((time.perf_counter() - t0) * 1000)
            await peer.disconnect()
        peer = await get_rtc_service(server, ids["webrtc_service_id"])
        rtc = await peer.get_service(APP_ID)

        async def ws_ping() -> None:
            await websocket.ping()

        async def rtc_ping() -> None:
            await rtc.ping()

        targets = {"websocket": ws_ping, "webrtc": rtc_ping}
        for target in targets.values():
            for _ in range(30):
                await target()
        per_round: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p95": []} for n in targets}
        for _ in range(rounds):
            samples: dict[str, list[float]] = {name: [] for name in targets}
            while len(samples["webrtc"]) < calls:
                for name, target in targets.items():
                    for _ in range(min(block, calls - len(samples[name]))):
                        t0 = time.perf_counter()
                        await target()
                        samples[name].append((time.perf_counter() - t0) * 1000)
            for name, values in samples.items():
                per_round[name]["p50"].append(statistics.median(values))
                per_round[name]["p95"].append(percentile(values, 95))
        await peer.disconnect()
        await worker.stop_all_apps(timeout_seconds=60)
        return per_round, opens
    finally:
        await server.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--calls", type=int, default=200, help="calls per path and round (default 200)")
    parser.add_argument("--block", type=int, default=20, help="calls per path before switching")
    args = parser.parse_args()
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        worker = WorkerProcess(Path(tmp), "--hypha-port", "0")
        try:
            worker.wait_ready()
            per_round, opens = asyncio.run(run(worker.connection, args.rounds, args.calls, args.block))
        finally:
            worker.stop()
    print(f"{args.rounds} rounds x {args.calls} calls of ping per path; median of rounds [min-max]")
    print(f"{'path':<12}{'p50 ms':>24}{'p95 ms':>24}")
    for name, stats in per_round.items():
        cells = [
            f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]" for v in (stats["p50"], stats["p95"])
        ]
        print(f"{name:<12}{cells[0]:>24}{cells[1]:>24}")
    print(f"open a peer connection: {statistics.median(opens):.1f} ms (median of {len(opens)})")
    ratio = statistics.median(per_round["webrtc"]["p50"]) / statistics.median(per_round["websocket"]["p50"])
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
