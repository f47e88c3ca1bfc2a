"""SLURM scale-up: time from demand to a usable new Ray node, ours versus a bare sbatch. Prints; asserts nothing.

    uv run python bench/slurm_scale_up.py [--rounds 3]

Needs a running SLURM (infra/slurm/setup-slurm.sh). Starts a Hypha server and bioengine-cluster in
slurm mode (a 0-CPU Ray head), then, interleaved in one run:

- ours: `run_code` asking for 1 CPU; the scaling loop submits a worker job, its Ray node joins and
  the task runs there; time from the call to the result. The worker is then released (idle
  timeout) before the next round;
- bare: `sbatch` of the same job script (`render_job_script`, under another job name so the
  scaling loop leaves it alone), then a 1-CPU task pinned to that job's node from a Ray driver;
  time from `sbatch` to the task's result. The job is cancelled afterwards.

Last line: `ratio: <ours p50 / bare p50>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bioengine_common import connect, connect_driver, ray_environment
from bioengine_common.local_stack import EmbeddedHypha
from bioengine_common.testing import launch_service, slurm_problem, wait_for_service

os.environ.update(ray_environment())  # before Ray is imported

TASK = "def analyze():\n    import os\n    return os.environ.get('SLURM_JOB_ID')\n"


async def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def _bare_round(script: str, workdir: Path) -> float:
    import ray

    path = workdir / "bare.sh"
    path.write_text(script)
    started = time.perf_counter()
    out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True)
    job_id = out.stdout.strip().split(";")[0]

    @ray.remote(num_cpus=1)
    def where() -> str | None:
        return os.environ.get("SLURM_JOB_ID")

    try:
        ref = where.options(resources={f"slurm_job_id:{job_id}": 0.001}).remote()
        assert ray.get(ref, timeout=180) == job_id
        return time.perf_counter() - started
    finally:
        subprocess.run(["scancel", job_id], check=False)


async def run(rounds: int, base: Path) -> dict[str, list[float]]:
    server = EmbeddedHypha(base / "hypha", "bioengine-bench", log=lambda message: None)
    server.start()
    cluster_process = None
    try:
        cluster_process = launch_service(
            "cluster", server, base / "worker", "--mode", "slurm", "--object-store-memory-in-gb", "0.2",
            "--slurm-poll-interval", "1", "--slurm-worker-cpus", "1", "--slurm-worker-memory-gb", "1",
            "--slurm-idle-timeout", "3", "--slurm-max-workers", "1", "--slurm-time-limit", "15",
            admin_users=["bench-admin"],
        )  # fmt: skip
        client = await connect(
            server.url, workspace=server.workspace, token=server.mint("bench-admin", "admin")
        )
        await wait_for_service(client, "bioengine-cluster", timeout=60)
        cluster = await client.get_service("bioengine-cluster")
        await _until(lambda: _ready(cluster), 120, "the slurm-mode head")
        info = await cluster.get_connection_info()
        await asyncio.to_thread(
            connect_driver, info["address"], 60.0, info["namespace"], info.get("token_file")
        )
        script = await cluster.render_job_script()
        tag = (await cluster.get_status())["ray_cluster"]["slurm"]["tag"]
        bare_script = script.replace(tag, "benchbare")
        assert re.search(r"bioengine-benchbare-worker", bare_script), "job name not rewritten"
        samples: dict[str, list[float]] = {"ours (run_code, 1 CPU)": [], "bare sbatch + task": []}
        for i in range(rounds):
            await _until(lambda: _idle(cluster), 120, "no worker job of ours left")
            t0 = time.perf_counter()
            result = await cluster.run_code(code=TASK, remote_options={"num_cpus": 1}, timeout=240)
            ours = time.perf_counter() - t0
            assert result.get("result"), result
            await _until(lambda: _idle(cluster), 120, "our worker released")
            bare = await asyncio.to_thread(_bare_round, bare_script, base)
            samples["ours (run_code, 1 CPU)"].append(ours)
            samples["bare sbatch + task"].append(bare)
            print(f"round {i}: ours {ours:.2f} s, bare {bare:.2f} s", flush=True)
        await client.disconnect()
        return samples
    finally:
        if cluster_process is not None:
            cluster_process.stop(timeout=90)
        server.stop()


async def _ready(cluster) -> bool:
    return bool((await cluster.get_status())["ready"])


async def _idle(cluster) -> bool:
    return (await cluster.get_status())["ray_cluster"]["slurm"]["live_jobs"] == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path (default 3)")
    args = parser.parse_args()
    problem = slurm_problem()
    if problem:
        raise SystemExit(f"no SLURM here: {problem}; start it with infra/slurm/setup-slurm.sh")
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        samples = asyncio.run(run(args.rounds, Path(tmp)))
    print(f"{'path':<26}{'rounds':>7}{'p50 s':>9}{'max s':>9}")
    for name, values in samples.items():
        print(f"{name:<26}{len(values):>7}{statistics.median(values):>9.2f}{max(values):>9.2f}")
    ours, bare = (statistics.median(v) for v in samples.values())
    print(f"ratio: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
