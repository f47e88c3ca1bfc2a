"""run_code overhead: a trivial function through the gateway versus a direct Ray task.

    uv run python bench/run_code_overhead.py [--calls 120] [--block 10]

Starts `bioengine-worker --mode single-machine` (embedded Hypha + SeaweedFS + a Ray head) and
reports the single-machine start time (command to cluster ready). Then, interleaved in blocks
so all see the same load, in an order that changes every round so that each path's block comes
right after each other path's equally often (`_stats.balanced_orders`): `run_code` of
`def analyze(): return 1` through the gateway, the same call on bioengine-cluster directly (one
Hypha hop fewer), `ray.get(f.remote())` from a driver connected to the same cluster, a bare
Hypha echo (a trivial service of this process), and a bare chain of the gateway's shape: two
processes of `bench/_bare_chain.py`, one forwarding the call through Hypha to the other, which
awaits the same trivial Ray task (or runs the code through run_code's own Ray part, its
streaming task), with none of a service's own work. The
floor the issue names (two echoes plus the Ray task) and how far the gateway's run_code ends
above it and above each bare chain are printed, then the CPU each path costs per call in each
process of the chains (on 2 shared cores, a process's CPU work delays the others on the path,
even work done while it waits; blocks in which Ray started a worker process are left out of
that table). Prints; asserts nothing.
Last line: `ratio: <gateway p50 / direct p50>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _bare_chain import TASK_SERVICE  # bench/_bare_chain.py
from _stats import balanced_orders, cpu_seconds, print_latency_table  # bench/_stats.py

from bioengine_common import connect, connect_driver
from bioengine_worker.testing import WorkerProcess, faults


async def wait_cluster_ready(gateway, started: float, timeout: float = 180) -> float:
    while time.monotonic() - started < timeout:
        status = await gateway.get_status()
        if (status.get("ray_cluster") or {}).get("ready"):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise SystemExit("the Ray cluster did not become ready")


def start_bare(role: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """One process of the bare chain; returns it and the id of the service it registered."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_bare_chain.py")), role],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **env},
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY "):
            return process, line.split(maxsplit=1)[1].strip()
    raise SystemExit(f"bench/_bare_chain.py {role} exited with code {process.wait()} before it was ready")


#: A call this slow waited for Ray to start a worker process (the bench's three drivers share
#: the head's 2 CPUs; a `uv run` of Ray's worker shows in the process table then).
SLOW_CALL_MS = 100.0


def chain_processes(
    worker: WorkerProcess, bare: dict[str, subprocess.Popen[str]]
) -> dict[str, psutil.Process]:
    """The processes of the chains, by the name of their column in the CPU table (the worker's
    found as the chaos tests find them, ``bioengine_worker.testing.faults.processes``)."""
    columns = {"hypha": "Hypha", "gateway": "gateway", "cluster": "cluster-svc"}
    found = {column: faults.processes(worker, role) for role, column in columns.items()}
    missing = sorted(column for column, processes in found.items() if not processes)
    if missing:
        raise SystemExit(f"the worker has no process of {', '.join(missing)}")
    return {
        **{column: processes[0] for column, processes in found.items()},
        **{f"bare {role}": psutil.Process(p.pid) for role, p in bare.items()},
    }


async def run(workspace_dir: Path, calls: int, block: int) -> None:
    worker = WorkerProcess(workspace_dir, "--mode", "single-machine", "--hypha-port", "0")
    started = worker.started
    bare: list[subprocess.Popen[str]] = []
    try:
        connection = await asyncio.to_thread(worker.wait_ready)
        server = await connect(
            connection["server_url"], workspace=connection["workspace"], token=connection["token"]
        )
        echo_host = await connect(
            connection["server_url"], workspace=connection["workspace"], token=connection["token"]
        )
        gateway = await server.get_service("bioengine-worker")
        ready_after = await wait_cluster_ready(gateway, started)
        cluster = await server.get_service("bioengine-cluster", {"mode": "random"})
        info = await cluster.get_connection_info()
        await echo_host.register_service(
            {"id": "bench-echo", "config": {"visibility": "protected"}, "echo": lambda x: x}
        )
        echo = await server.get_service(f"{connection['workspace']}/{echo_host.config.client_id}:bench-echo")
        bare_env = {
            "BENCH_SERVER_URL": connection["server_url"],
            "BENCH_WORKSPACE": connection["workspace"],
            "BENCH_TOKEN": connection["token"],
            "BENCH_RAY_ADDRESS": info["address"],
            "BENCH_RAY_NAMESPACE": info["namespace"],
            **({"BENCH_RAY_TOKEN_FILE": info["token_file"]} if info.get("token_file") else {}),
        }
        task_process, task_id = start_bare("task", bare_env)
        bare.append(task_process)
        assert task_id.endswith(f":{TASK_SERVICE}"), task_id
        forward_process, forward_id = start_bare("forward", {**bare_env, "BENCH_TASK_SERVICE": task_id})
        bare.append(forward_process)
        processes = chain_processes(worker, {"forward": forward_process, "task": task_process})
        bare_chain = await server.get_service(forward_id)

        # A driver of the worker's cluster needs its token file (token authentication).
        connect_driver(info["address"], 60.0, info["namespace"], info.get("token_file"))
        import ray

        @ray.remote
        def analyze() -> int:
            return 1

        code = "def analyze():\n    return 1\n"

        async def through_gateway() -> None:
            result = await gateway.run_code(code=code)
            assert result.get("result") == 1, result

        async def on_cluster() -> None:
            result = await cluster.run_code(code=code)
            assert result.get("result") == 1, result

        async def direct() -> None:
            ray.get(analyze.remote())

        async def echo_once() -> None:
            await echo.echo("ping")

        async def through_bare_chain() -> None:
            result = await bare_chain.run()
            assert result.get("result") == 1, result

        async def through_bare_chain_streamed() -> None:
            result = await bare_chain.run(True)
            assert result.get("result") == 1, result

        paths = {
            "gateway run_code": through_gateway,
            "cluster run_code": on_cluster,
            "bare chain": through_bare_chain,
            "bare chain, run_code's task": through_bare_chain_streamed,
            "direct ray.get": direct,
            "hypha echo": echo_once,
        }
        for _ in range(5):  # warm-up: worker processes, imports
            for path in paths.values():
                await path()
        samples: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, dict[str, float]] = {name: dict.fromkeys(processes, 0.0) for name in paths}
        counted = dict.fromkeys(paths, 0)  # calls in the CPU table
        orders = balanced_orders(list(paths))
        for round_index in range(-(-calls // block)):
            for name in orders[round_index % len(orders)]:
                path = paths[name]
                before = {column: cpu_seconds(process) for column, process in processes.items()}
                count = min(block, calls - len(samples[name]))
                for _ in range(count):
                    t0 = time.perf_counter()
                    await path()
                    samples[name].append((time.perf_counter() - t0) * 1000)
                # A block in which Ray started a worker process (a call of 100 ms or more: those
                # took one to two seconds) says nothing of the path's own cost.
                if max(samples[name][-count:]) < SLOW_CALL_MS:
                    counted[name] += count
                    for column, process in processes.items():
                        cpu[name][column] += cpu_seconds(process) - before[column]
        ray.shutdown()
        await echo_host.disconnect()
        await server.disconnect()
    finally:
        for process in bare:
            process.kill()
            process.wait()
        worker.stop()

    print(f"single-machine start: command to Ray cluster ready {ready_after:.1f} s")
    print_latency_table(samples, "path")
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    floor = 2 * p50["hypha echo"] + p50["direct ray.get"]
    print(
        f"floor: 2 x hypha echo + ray.get = {floor:.3f} ms ({floor / p50['direct ray.get']:.1f} x ray.get); "
        f"gateway run_code is {p50['gateway run_code'] - floor:.3f} ms above it"
    )
    for name in ("bare chain", "bare chain, run_code's task"):
        chain = p50[name]
        print(
            f"{name} = {chain:.3f} ms ({chain / p50['direct ray.get']:.1f} x ray.get); gateway run_code "
            f"is {p50['gateway run_code'] - chain:.3f} ms ({p50['gateway run_code'] / chain:.2f} x) above it"
        )
    # CPU time is counted in clock ticks (10 ms): +-0.1 ms a call over 100 calls, +-0.03 over 300.
    columns = list(processes)
    print(f"\nCPU ms per call{'calls':>22}{''.join(f'{c:>13}' for c in columns)}")
    for name, used in cpu.items():
        n = max(counted[name], 1)
        print(f"{name:<30}{counted[name]:>7}{''.join(f'{used[c] / n * 1000:>13.2f}' for c in columns)}")
    ratio = p50["gateway run_code"] / p50["direct ray.get"]
    print(f"ratio: {ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls", type=int, default=120,
        help="calls per path (default 120: two rounds of each of the 6 orders of the blocks)",
    )  # fmt: skip
    parser.add_argument("--block", type=int, default=10, help="calls per path before switching (default 10)")
    args = parser.parse_args()
    if args.calls < 1 or args.block < 1:
        parser.error(f"--calls and --block must be at least 1, not {args.calls} and {args.block}")
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        asyncio.run(run(Path(tmp), args.calls, args.block))


if __name__ == "__main__":
    main()
