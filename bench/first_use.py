"""A newcomer's first minutes, timed: the run command to the banner, and to the first app answer.

    uv run python bench/first_use.py [--rounds 3]

Each round starts `bioengine-worker --mode single-machine` in a fresh workspace dir (as the
README's run command does; the embedded server's environment is already installed), waits for
its banner (printed once the worker is ready), then does what the README's Python snippet does
with no sleep and no retry: upload apps/demo-app, `deploy_app(..., wait=True)`, `get_service`
of the app and `ping()`. It prints, per round and as median (min-max): seconds from the command
to the banner, from the command to the first answer of the app, and the banner's own figure.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bioengine_common import connect
from bioengine_worker import read_app_folder
from bioengine_worker.testing import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "apps" / "demo-app"
BANNER = re.compile(r"BioEngine worker ready in ([\d.]+) s")


async def first_answer(connection: dict) -> None:
    server = await connect(
        connection["server_url"], workspace=connection["workspace"], token=connection["token"]
    )
    try:
        worker = await server.get_service("bioengine-worker")
        artifact_id = await worker.upload_app(files=read_app_folder(DEMO))
        app_id = await worker.deploy_app(artifact_id=artifact_id, wait=True, timeout=600)
        status = (await worker.get_app_status(application_ids=[app_id]))[app_id]
        app = await server.get_service(status["service_ids"][0]["websocket_service_id"])
        await app.ping()
    finally:
        await server.disconnect()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def show_logs(logs: Path, lines: int = 15) -> None:
    """The last lines of each log of a failed round, on stderr."""
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of {log}", *tail, sep="\n", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    banner_s: list[float] = []
    stated_s: list[float] = []
    app_s: list[float] = []
    print(f"{'round':<7}{'banner s':>10}{'stated s':>10}{'app answers s':>15}")
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="bench-first-use-") as tmp:
            worker = WorkerProcess(Path(tmp), "--mode", "single-machine", "--hypha-port", "0")
            try:
                connection = worker.wait_ready(timeout=600)
                banner_s.append(time.monotonic() - worker.started)
                stated = BANNER.search(worker.text())
                stated_s.append(float(stated.group(1)) if stated else float("nan"))
                asyncio.run(first_answer(connection))
                app_s.append(time.monotonic() - worker.started)
            except BaseException:
                show_logs(Path(tmp) / "logs")  # before the round's directory goes
                raise
            finally:
                worker.stop()
        print(f"{round_:<7}{banner_s[-1]:>10.1f}{stated_s[-1]:>10.1f}{app_s[-1]:>15.1f}", flush=True)
    print(f"{'median':<7}{spread(banner_s):>10}  app answers {spread(app_s)} s (median, min-max)")


if __name__ == "__main__":
    main()
