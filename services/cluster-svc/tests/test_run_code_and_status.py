"""bioengine-cluster in external-cluster mode against the session Ray head: status, fit, run_code."""

import asyncio
import re
import sys
import time

import psutil
import pytest
from ray import cloudpickle

from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, wait_for_service

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(cluster_process, admin_client):
    await wait_for_service(admin_client, "bioengine-cluster", timeout=60)
    proxy = await admin_client.get_service("bioengine-cluster")
    deadline = time.monotonic() + 60
    while not (await proxy.get_status())["ready"]:
        assert time.monotonic() < deadline, cluster_process.console_output()
        await asyncio.sleep(0.5)
    return proxy


async def test_status_reports_the_cluster_in_the_public_shape(cluster, ray_head):
    status = await cluster.get_status()
    ray_cluster = status["ray_cluster"]
    assert ray_cluster["mode"] == "external-cluster" and ray_cluster["head_address"] == ray_head.address
    assert ray_cluster["start_time"] == "N/A"  # we did not start this cluster
    assert ray_cluster["cluster"]["total_cpu"] == 4 and ray_cluster["error"] is None
    (node,) = ray_cluster["nodes"].values()
    assert node["head"] is True and node["total_cpu"] == 4 and node["total_gpu"] == 0
    assert node["accelerator_type"] == "NA" and node["slurm_job_id"] is None
    history = await cluster.get_history(limit=5)
    assert history and history[-1]["cluster"]["total_cpu"] == 4


async def test_check_resources(cluster):
    fits = await cluster.check_resources(num_cpus=1, memory=2**20)
    assert fits["verdict"] == "fits" and fits["node_id"]
    too_big = await cluster.check_resources(num_cpus=8)
    assert too_big["verdict"] == "cannot_fit"
    assert "largest node has 4 CPUs, 8 CPUs needed" in too_big["reason"]
    gpu = await cluster.check_resources(num_gpus=1)
    assert gpu["verdict"] == "cannot_fit" and "GPUs" in gpu["reason"]
    with pytest.raises(Exception, match="non-negative"):
        await cluster.check_resources(num_cpus=-2)


async def test_connection_info_lets_another_process_drive_the_cluster(cluster, ray_head):
    info = await cluster.get_connection_info()
    assert info["address"] == ray_head.address and info["namespace"] == "bioengine"
    assert info["ray_version"] == "2.60.0" and info["python_version"] == sys.version.split()[0]
    assert info["environment"]["RAY_AUTH_MODE"] == "disabled"


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [([2, 3], None, 5), (None, {"a": 10, "b": 5}, 15), ([7], {"b": 1}, 8), (["ab", "cd"], None, "abcd")],
)
async def test_simple_operations(cluster, args, kwargs, expected):
    result = await cluster.run_code(code="def analyze(a, b=0):\n    return a + b\n", args=args, kwargs=kwargs)
    assert result.get("error") is None and result["result"] == expected


async def test_data_structures_and_standard_library(cluster):
    code = """
import math, json, datetime, collections
def analyze(items):
    counts = collections.Counter(items)
    return {
        "sqrt": math.sqrt(16),
        "json": json.loads(json.dumps({"k": [1, 2]})),
        "year": datetime.date(2024, 5, 1).year,
        "top": counts.most_common(1)[0][0],
        "sorted": sorted(items),
    }
"""
    result = await cluster.run_code(code=code, args=[["b", "a", "b"]])
    assert result["result"] == {
        "sqrt": 4.0,
        "json": {"k": [1, 2]},
        "year": 2024,
        "top": "b",
        "sorted": ["a", "b", "b"],
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("return 1 / 0", "ZeroDivisionError"),
        ("return 'a' + 1", "TypeError"),
        ("return [][3]", "IndexError"),
        ("return {}['missing']", "KeyError"),
        ("raise SystemExit(4)", "SystemExit"),
    ],
)
async def test_raised_errors_are_returned_and_the_service_keeps_working(cluster, body, error):
    result = await cluster.run_code(code=f"def analyze():\n    print('before')\n    {body}\n")
    assert result["error"].startswith(error) and error in result["traceback"]
    assert result["stdout"] == "before\n"
    assert (await cluster.run_code(code="def analyze():\n    return 'still fine'"))["result"] == "still fine"


async def test_arguments_ray_cannot_take_are_a_clear_error(cluster):
    # A function among the arguments reaches cluster-svc as a callback of the caller: it cannot
    # be pickled for Ray. The error names the arguments, and the next call works.
    with pytest.raises(Exception, match=r"run_code's args and kwargs cannot be sent to Ray"):
        await cluster.run_code(code="def analyze(f):\n    return 1", args=[lambda x: x])
    assert (await cluster.run_code(code="def analyze():\n    return 'still fine'"))["result"] == "still fine"


async def test_handled_errors_are_results(cluster):
    code = "def analyze():\n    try:\n        1 / 0\n    except ZeroDivisionError as e:\n        return 'caught: ' + str(e)\n"
    result = await cluster.run_code(code=code)
    assert result.get("error") is None and result["result"] == "caught: division by zero"


@pytest.mark.parametrize(
    ("code", "function_name", "error"),
    [
        ("def other():\n    return 1", "analyze", "no function named 'analyze'"),
        ("def analyze(:\n", "analyze", "SyntaxError"),
        ("analyze = 42", "analyze", "is not callable"),
    ],
)
async def test_bad_code_is_an_error_result(cluster, code, function_name, error):
    result = await cluster.run_code(code=code, function_name=function_name)
    assert error in result["error"]


async def test_pickle_mode_with_closures_and_callable_objects(cluster):
    import numpy as np

    offset = 100

    def closure(x, scale=1):
        return (x + offset) * scale

    class Accumulator:
        def __init__(self, start):
            self.start = start

        def __call__(self, values):
            return self.start + int(np.sum(np.asarray(values)))

    first = await cluster.run_code(
        mode="pickle", func_bytes=cloudpickle.dumps(closure), args=[1], kwargs={"scale": 2}
    )
    assert first["result"] == 202
    second = await cluster.run_code(
        mode="pickle", func_bytes=cloudpickle.dumps(Accumulator(10)), args=[[1, 2, 3]]
    )
    assert second["result"] == 16
    broken = await cluster.run_code(mode="pickle", func_bytes=b"not a pickle")
    assert broken["error"]


async def test_async_functions_are_awaited(cluster):
    code = "import asyncio\nasync def analyze(x):\n    await asyncio.sleep(0.01)\n    return x * 3\n"
    assert (await cluster.run_code(code=code, args=[5]))["result"] == 15


async def test_output_lines_reach_the_callbacks_in_order_while_running(cluster):
    out, err, seen_at = [], [], []
    started = time.monotonic()

    def on_stdout(line):
        out.append(line)
        seen_at.append(time.monotonic() - started)

    code = """
import sys, time
def analyze(n):
    for i in range(n):
        print(f"line {i}")
        print(f"warn {i}", file=sys.stderr)
        time.sleep(0.5 if i == 0 else 0)
    time.sleep(2)
    print("partial", end="")
    return n
"""
    result = await cluster.run_code(code=code, args=[4], write_stdout=on_stdout, write_stderr=err.append)
    total = time.monotonic() - started
    assert out == ["line 0", "line 1", "line 2", "line 3", "partial"]
    assert err == ["warn 0", "warn 1", "warn 2", "warn 3"]
    assert result["stdout"] == "line 0\nline 1\nline 2\nline 3\npartial"
    assert result["stderr"].count("\n") == 4 and result["result"] == 4
    assert seen_at[0] < total - 1.5  # the first line arrived while the code still ran


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (it may exit between any two checks)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_timeout_cancels_the_task(cluster):
    pids: list[str] = []
    code = "import os\ndef analyze():\n    print(os.getpid(), flush=True)\n    while True:\n        pass\n"
    result = await cluster.run_code(code=code, timeout=4, write_stdout=pids.append)
    assert "timed out after 4 seconds" in result["error"] and "TimeoutError" in result["traceback"]
    pid = int(pids[0])
    deadline = time.monotonic() + 15
    while _running(pid):
        assert time.monotonic() < deadline, "the busy task still runs after its timeout"
        await asyncio.sleep(0.25)
    assert (await cluster.run_code(code="def analyze():\n    return 1"))["result"] == 1


async def test_remote_options(cluster):
    ok = await cluster.run_code(code="def analyze():\n    return 1", remote_options={"num_cpus": 0.5})
    assert ok["result"] == 1
    with pytest.raises(Exception, match=r"InvalidRequest: unknown remote_options \['num_cpu'\]"):
        await cluster.run_code(code="def analyze():\n    return 1", remote_options={"num_cpu": 1})
    with pytest.raises(Exception, match=r"remote_options\.num_gpus must be a non-negative number, got -1"):
        await cluster.run_code(code="def analyze():\n    return 1", remote_options={"num_gpus": -1})
    env = await cluster.run_code(
        code="import os\ndef analyze():\n    return os.environ.get('PROBE')",
        remote_options={"runtime_env": {"env_vars": {"PROBE": "yes"}}},
    )
    assert env["result"] == "yes"


async def test_a_request_no_node_can_hold_is_refused_at_once_with_the_reason(cluster):
    # The head has 4 CPUs: 64 can never fit, so the call does not wait out its 120 s timeout.
    with pytest.raises(Exception) as caught:
        await asyncio.wait_for(
            cluster.run_code(
                code="def analyze():\n    return 1", remote_options={"num_cpus": 64}, timeout=120
            ),
            60,
        )
    message = str(caught.value)
    assert "ResourceUnavailable: run_code cannot run on this cluster" in message
    assert "largest node has 4 CPUs, 64 CPUs needed; no node of this cluster is large enough" in message
    status = await cluster.get_status()
    assert not status["run_code"]["running"]  # refused before any task was started
    # What fits once busy CPUs are free is not refused: 4 CPUs (the whole node) runs. The session
    # head is shared with other test modules, whose apps (0.1 CPU a replica) may still hold part
    # of it: then the task waits for them (a timeout, never a refusal).
    held = status["ray_cluster"]["cluster"]["used_cpu"]
    whole = await cluster.run_code(
        code="def analyze():\n    return 4", remote_options={"num_cpus": 4}, timeout=30 if held else 120
    )
    if held:
        assert whole.get("result") == 4 or "timed out after 30 seconds" in whole["error"], (held, whole)
    else:
        assert whole.get("error") is None and whole["result"] == 4


async def test_a_timed_out_run_code_keeps_what_it_printed(cluster):
    streamed: list[str] = []
    code = """
import sys, time
def analyze():
    print("loading data")
    print("step 1 of 3", flush=True)
    print("slow step ahead", file=sys.stderr)
    time.sleep(60)
    print("never printed")
"""
    result = await cluster.run_code(code=code, timeout=5, write_stdout=streamed.append)
    assert "timed out after 5 seconds" in result["error"] and "TimeoutError" in result["traceback"]
    assert result["stdout"] == "loading data\nstep 1 of 3\n"
    assert result["stderr"] == "slow step ahead\n"
    assert streamed == ["loading data", "step 1 of 3"]
    assert "result" not in result


async def test_status_figures_are_rounded(cluster):
    # A fractional task leaves fractional use behind while it runs.
    code = "import time\ndef analyze():\n    time.sleep(4)\n    return 1"
    held = (await cluster.get_status())["ray_cluster"]["cluster"]["used_cpu"]  # by other modules' apps
    running = asyncio.ensure_future(
        cluster.run_code(code=code, remote_options={"num_cpus": 0.1, "memory": 123_456_789})
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            status = await cluster.get_status()
            ray_cluster = status["ray_cluster"]
            (node,) = ray_cluster["nodes"].values()
            if node["used_memory"] == 123_456_789 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
    finally:
        assert (await running)["result"] == 1
    totals = ray_cluster["cluster"]
    (node,) = ray_cluster["nodes"].values()
    for figures in (totals, node):
        for name in ("total_cpu", "used_cpu", "total_gpu", "used_gpu"):
            assert figures[name] == round(figures[name], 2), (name, figures[name])
        for name in ("total_memory", "used_memory", "total_object_store_memory", "used_object_store_memory"):
            assert isinstance(figures[name], int), (name, figures[name])
            assert figures[f"{name}_gb"] == round(figures[name] / 1024**3, 2)
    # Only this task asks for memory; other CPUs may still be held by an earlier test's task (a
    # whole CPU that may end meanwhile) or by another module's app (0.1 CPU a replica).
    assert node["used_memory"] == 123_456_789 and round((totals["used_cpu"] - held) % 1, 2) == 0.1
    assert ray_cluster["gpus"] == "no GPUs" and node["total_gpu_memory"] == 0
    # No binary noise anywhere in the answer (Ray's own figures carry some, e.g. 4 - 3.9).
    noisy = [f for f in _floats(status) if re.search(r"\.\d*(0{6,}|9{6,})\d+$", repr(f))]
    assert not noisy, noisy


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)
    elif isinstance(value, list):
        for item in value:
            yield from _floats(item)


async def test_run_code_is_for_admins_only(cluster, hypha_server):
    bob = await connect(hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("bob"))
    try:
        proxy = await bob.get_service("bioengine-cluster")
        with pytest.raises(Exception, match="not authorized to access 'run_code'"):
            await proxy.run_code(code="def analyze():\n    return 1")
        # Forging the admin as the forwarded caller is refused: bob is not the services' user.
        with pytest.raises(Exception, match="may not pass a caller on"):
            await proxy.run_code(code="def analyze():\n    return 1", caller={"id": ADMIN_USER})
    finally:
        await bob.disconnect()


async def _status_with_error(proxy, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        status = await proxy.get_status()
        if status["ray_cluster"]["error"] or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.25)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--head-address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
        ([], "external-cluster mode needs --head-address"),
        (["--head-address", "nonsense"], "must be host:port or ray://host:port"),
    ],
)
async def test_a_wrong_external_address_fails_fast_with_a_clear_error(
    hypha_server, start_service, admin_client, extra, message
):
    client_id = f"cluster-bad-{len(extra)}-{time.monotonic_ns()}"
    start_service("cluster", hypha_server, "--mode", "external-cluster", "--client-id", client_id, *extra)
    info = await wait_for_service(admin_client, f"{client_id}:bioengine-cluster")
    # Registered anyway, so the gateway can show why the cluster is not ready.
    status = await _status_with_error(await admin_client.get_service(info["id"]))
    assert status["ready"] is False and message in status["ray_cluster"]["error"]


async def test_a_failing_callback_does_not_stop_the_code(cluster):
    def broken(line):
        raise RuntimeError("viewer closed")

    result = await cluster.run_code(
        code="def analyze():\n    print('a')\n    print('b')\n    return 'done'", write_stdout=broken
    )
    assert result["result"] == "done" and result["stdout"] == "a\nb\n"
    assert "viewer closed" in result["callback_error"]


async def test_a_run_code_whose_caller_disconnects_is_cancelled_and_later_calls_still_answer(
    hypha_server, ray_head, start_service, admin_client
):
    """The caller watch ends the wait for the stream (the code's own task, cancelled by it) and
    kills the Ray task; a call that ends first is answered as usual, with no cancellation
    left pending on the method's task."""
    client_id = f"cluster-watch-{time.monotonic_ns()}"
    start_service(
        "cluster", hypha_server, "--mode", "external-cluster", "--head-address", ray_head.address,
        "--status-interval", "1", "--client-id", client_id,
        "--run-code-caller-check", "0.5", "--run-code-caller-grace", "1",
    )  # fmt: skip
    info = await wait_for_service(admin_client, f"{client_id}:bioengine-cluster", timeout=60)
    proxy = await admin_client.get_service(info["id"])
    deadline = time.monotonic() + 60
    while not (await proxy.get_status())["ready"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    # Quick calls, each outliving a check of its caller or not, are answered and recorded done.
    for seconds in (0, 0.7):
        code = f"import time\ndef analyze():\n    time.sleep({seconds})\n    return {seconds}"
        assert (await proxy.run_code(code=code))["result"] == seconds

    caller = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint(ADMIN_USER, "admin")
    )
    pids: list[str] = []
    service = await caller.get_service(info["id"])
    code = "import os\ndef analyze():\n    print(os.getpid(), flush=True)\n    while True:\n        pass\n"
    call = asyncio.ensure_future(service.run_code(code=code, timeout=120, write_stdout=pids.append))
    while not pids:
        assert time.monotonic() < deadline + 60, "the busy task never printed its PID"
        await asyncio.sleep(0.1)
    await caller.disconnect()
    call.cancel()
    deadline = time.monotonic() + 30
    while True:
        recent = (await proxy.get_status())["run_code"]["recent"]
        if recent and recent[0]["state"] != "done":
            break
        assert time.monotonic() < deadline, recent
        await asyncio.sleep(0.25)
    assert recent[0]["state"] == "cancelled" and "disconnected" in recent[0]["reason"], recent[0]
    assert [run["state"] for run in recent[1:]] == ["done", "done"]
    pid = int(pids[0])
    while _running(pid):
        assert time.monotonic() < deadline, "the busy task still runs after its caller left"
        await asyncio.sleep(0.25)
    # The service goes on answering.
    assert (await proxy.run_code(code="def analyze():\n    return 1"))["result"] == 1
