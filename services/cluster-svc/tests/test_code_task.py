"""The run_code task body outside Ray: what it streams, in which order."""

from __future__ import annotations

from bioengine_cluster._code_task import (
    _COMPILED,
    COMPILED_KEPT,
    QUICK_S,
    _compiled,
    pack_request,
    run_code_stream,
    run_code_task,
)


def stream(code: str, *args: object) -> list[tuple[str, object, int]]:
    return list(run_code_stream("source", code, None, "analyze", list(args), {}))


def test_the_ray_task_runs_the_call_it_is_sent_packed():
    request = pack_request(
        "source", "def analyze(x, y=0):\n    print(x)\n    return x + y", None, "analyze", [40], {"y": 2}
    )
    items = list(run_code_task(request))
    assert [kind for kind, _, _ in items] == ["start", "stdout", "done"]
    assert items[1][1] == "40"
    assert items[2][1]["result"] == 42  # type: ignore[index]


def test_a_quick_silent_function_streams_only_its_outcome():
    items = stream("def analyze(x):\n    return x * 2", 21)
    assert [kind for kind, _, _ in items] == ["done"]
    outcome = items[0][1]
    assert isinstance(outcome, dict)
    assert outcome["result"] == 42 and outcome["attempt"] == 0
    assert {"node_id", "slurm_job_id"} <= set(outcome)


def test_a_function_that_prints_says_where_it_runs_first():
    items = stream("def analyze():\n    print('hello')\n    return 1")
    assert [kind for kind, _, _ in items] == ["start", "stdout", "done"]
    assert items[1][1] == "hello"
    assert items[2][1]["stdout"] == "hello\n"  # type: ignore[index]


def test_a_longer_function_says_where_it_runs_before_it_ends():
    code = f"import time\ndef analyze():\n    time.sleep({QUICK_S * 4})\n    return 'slow'"
    items = stream(code)
    assert [kind for kind, _, _ in items] == ["start", "done"]
    assert items[1][1]["result"] == "slow"  # type: ignore[index]


def test_an_error_is_the_outcome_not_an_exception():
    items = stream("def analyze():\n    raise ValueError('bad input')")
    assert [kind for kind, _, _ in items] == ["done"]
    assert items[0][1]["error"] == "ValueError: bad input"  # type: ignore[index]


def test_runs_reuse_an_idle_thread_and_a_running_one_is_never_shared():
    import threading

    where = "import threading\ndef analyze(seen):\n    seen.append(threading.current_thread())"
    seen: list[threading.Thread] = []
    stream(where, seen)
    stream(where, seen)
    assert seen[0] is seen[1]  # the same thread object (kept alive by the list): reused

    release = threading.Event()
    waiting = run_code_stream(
        "source", "import threading\ndef analyze(e, seen):\n    seen.append(threading.current_thread())\n    e.wait(10)",
        None, "analyze", [release, seen], {},
    )  # fmt: skip
    assert next(waiting)[0] == "start"  # its thread is busy now
    stream(where, seen)
    release.set()
    list(waiting)
    assert seen[3] is not seen[2]  # the busy thread was not handed a second run


def test_a_reused_thread_keeps_no_output_or_context_of_the_run_before():
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("run", default="none")
    setter = "def analyze(var):\n    print('first run')\n    var.set('leaked')\n    return var.get()"
    getter = "def analyze(var):\n    return var.get()"
    token = var.set("caller's")
    try:
        assert stream(setter, var)[-1][1]["result"] == "leaked"  # type: ignore[index]
        second = stream(getter, var)[-1][1]
        assert second["result"] == "caller's" and second["stdout"] == ""  # type: ignore[index]
    finally:
        var.reset(token)


def test_a_runner_whose_job_raised_runs_the_next_job():
    import threading
    import time

    from bioengine_cluster import _code_task

    _code_task._IDLE_RUNNERS.clear()
    _code_task._Runner.run(lambda: 1 / 0)
    deadline = time.monotonic() + 5
    while not _code_task._IDLE_RUNNERS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_code_task._IDLE_RUNNERS) == 1  # back, waiting for more
    ran = threading.Event()
    _code_task._Runner.run(ran.set)
    assert ran.wait(5)


def test_the_same_source_runs_again_from_its_code_object_in_a_namespace_of_its_own():
    code = "calls = []\ndef analyze():\n    calls.append(1)\n    return len(calls)"
    first, second = stream(code), stream(code)
    assert first[-1][1]["result"] == second[-1][1]["result"] == 1  # type: ignore[index]
    assert _compiled(code) is _compiled(code)
    for i in range(COMPILED_KEPT + 5):
        _compiled(f"def analyze():\n    return {i}")
    assert len(_COMPILED) == COMPILED_KEPT and code not in _COMPILED  # the oldest went first
