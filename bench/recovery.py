"""Recovery from each fault of a running worker. Prints; asserts nothing.

    uv run python bench/recovery.py [--rounds 1] [--faults apps,hypha,...] [--watch 30]

Starts `bioengine-worker --mode single-machine` as a user would, deploys apps/demo-app and
opens a small dataset, then kills one part at a time with SIGKILL (a service, the embedded
Hypha server, SeaweedFS, the Ray head) or updates the app, while probing the app's Hypha
service (every 0.25 s), the worker's readiness and a read of the open array (every 0.5 s),
each over a connection of its own that is opened afresh after a failure. For each fault it
prints the seconds until the app answers again, until the worker is ready again and until the
array reads again, and how many calls and reads failed (the same scenario as
tests/integration/test_chaos.py). With --rounds N > 1: median and spread (min-max) per fault.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
from pathlib import Path

from bioengine_worker.testing import WorkerProcess
from bioengine_worker.testing.faults import FAULTS, chaos, make_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "apps" / "demo-app"


def cell(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "never"
    numbers = [float(v) for v in values if v is not None]
    if len(numbers) == 1:
        return f"{numbers[0]:.1f}"
    return f"{statistics.median(numbers):.1f} ({min(numbers):.1f}-{max(numbers):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    parser.add_argument("--watch", type=float, default=30.0, help="seconds to watch for late failures")
    args = parser.parse_args()
    # The probes' own clients log every lost connection; the table says what matters.
    for name in ("websocket-client", "RPC", "bioengine_datasets_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        workspace_dir = Path(tmp)
        dataset = make_dataset(workspace_dir)
        worker = WorkerProcess(workspace_dir, "--mode", "single-machine", "--hypha-port", "0")
        try:
            worker.wait_ready()
            report = asyncio.run(chaos(worker, DEMO, dataset, faults * args.rounds, watch_after=args.watch))
        finally:
            worker.stop()
    print()
    header = f"{'fault':<12}{'app back s':>18}{'ready s':>18}{'dataset s':>18}{'artifacts s':>14}{'failed calls':>14}{'failed reads':>14}"
    print(header)
    for fault in faults:
        rows = [r for r in report.records if r.fault == fault]
        print(
            f"{fault:<12}{cell([r.app_back_after for r in rows]):>18}{cell([r.ready_after for r in rows]):>18}"
            f"{cell([r.dataset_back_after for r in rows]):>18}{cell([r.artifacts_back_after for r in rows]):>14}"
            f"{statistics.median([r.failed_app_calls for r in rows]):>14.0f}"
            f"{statistics.median([r.failed_dataset_reads for r in rows]):>14.0f}"
        )
    late = {name: len(failures) for name, failures in report.late_failures.items()}
    print(
        f"late failures in the last {args.watch:.0f} s: {late}; app at the end: {report.app_status['status']}"
    )
    print(f"artifacts kept: {report.artifacts_after == report.artifacts_before}")


if __name__ == "__main__":
    main()
