"""The Ray task behind ``run_code``. User code runs here, in a Ray worker, never in a service.

Self-contained on purpose (standard library and cloudpickle only): it is shipped to Ray by
value, so nodes of an external cluster need no BioEngine package to run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
import pickle
import queue
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from typing import Any

_END = object()
#: Threads that ran code before and wait for more. A Ray worker runs one task at a time, so one
#: thread usually serves every run_code task of its worker: starting a thread for each task cost
#: about 0.2 ms of a 2.5 ms call. A list, so that it pickles with this module (by value).
_IDLE_RUNNERS: list[Any] = []
#: Code objects of the last sources run by this worker (source text -> code object).
_COMPILED: dict[str, Any] = {}
COMPILED_KEPT = 32
COMPILED_MAX_CHARS = 64 * 1024
#: A function that ends within this many seconds without printing streams only its outcome: one
#: streamed item instead of two, about 1 ms less per call. Anything longer first says where it
#: runs, so that a retry after a lost worker can name the node (and SLURM job) it was lost with.
QUICK_S = 0.05


class _LineWriter:
    """A text stream that hands each complete line to a queue and keeps the whole text."""

    def __init__(self, stream: str, lines: queue.Queue[Any]):
        self.stream, self.lines = stream, lines
        self.text: list[str] = []
        self._partial = ""

    def write(self, data: str) -> int:
        self.text.append(data)
        *complete, self._partial = (self._partial + data).split("\n")
        for line in complete:
            self.lines.put((self.stream, line))
        return len(data)

    def flush(self) -> None:
        pass

    def close_line(self) -> None:
        if self._partial:
            self.lines.put((self.stream, self._partial))
            self._partial = ""

    def isatty(self) -> bool:
        return False


class _Runner:
    """A daemon thread that runs one job after another, and waits in ``_IDLE_RUNNERS`` between
    them (so a job that never ends keeps only its own thread)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="run_code", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            with contextlib.suppress(BaseException):  # a job reports its own errors; the thread stays
                job()
            _IDLE_RUNNERS.append(self)

    @classmethod
    def run(cls, job: Any) -> None:
        """Run ``job()`` in an idle runner's thread, or a new one's."""
        try:
            runner = _IDLE_RUNNERS.pop()
        except IndexError:
            runner = cls()
        runner._jobs.put(job)


def _compiled(code: str) -> Any:
    """``code``'s code object; the last few are kept (a notebook sends the same code again and
    again; compiling it took about 0.08 ms of a 2.5 ms task). Each run still gets a namespace of
    its own."""
    if len(code) > COMPILED_MAX_CHARS:  # kept only small sources: 32 large ones would hold memory
        return compile(textwrap.dedent(code), "<run_code>", "exec")
    compiled = _COMPILED.pop(code, None)
    if compiled is None:
        compiled = compile(textwrap.dedent(code), "<run_code>", "exec")
        while len(_COMPILED) >= COMPILED_KEPT:
            _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[code] = compiled  # the most recent last
    return compiled


def _load(mode: str, code: str | None, func_bytes: bytes | None, function_name: str) -> Any:
    if mode == "source":
        if not code:
            raise ValueError("source mode needs `code`")
        namespace: dict[str, Any] = {"__name__": "__bioengine_run_code__"}
        exec(_compiled(code), namespace)
        if function_name not in namespace:
            raise NameError(f"the code defines no function named '{function_name}'")
        function = namespace[function_name]
    elif mode == "pickle":
        if not func_bytes:
            raise ValueError("pickle mode needs `func_bytes`")
        try:
            import cloudpickle
        except ImportError:  # Ray vendors it
            from ray import cloudpickle

        function = cloudpickle.loads(func_bytes)
    else:
        raise ValueError(f"mode must be 'source' or 'pickle', got '{mode}'")
    if not callable(function):
        raise TypeError(f"'{function_name}' is not callable (it is a {type(function).__name__})")
    return function


def _where() -> dict[str, Any]:
    """This attempt of the task as Ray numbers it (0: the first run, n: the n-th retry), and where it
    runs. Outside Ray (a manual check) attempt 0 on no node."""
    here: dict[str, Any] = {"attempt": 0, "node_id": None, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    try:
        import ray

        worker: Any = ray._private.worker.global_worker
        if worker.connected:
            # Ray's own count of this task's executions (the task spec's attempt number).
            here["attempt"] = int(worker.core_worker.get_current_task_attempt_number())
            here["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return here


def pack_request(*call: Any) -> bytes:
    """The task's one argument: ``call``, the arguments of :func:`run_code_stream` in its order,
    pickled once by the caller. Ray handles each argument of a task on its own, on both sides:
    one of bytes instead of seven made a streaming task 0.19 ms faster here (1.92 against
    2.11 ms). Raises what pickling raises. Called by the Ray driver (so Ray's own cloudpickle is
    there); the task reads it with ``pickle``."""
    from ray import cloudpickle

    return bytes(cloudpickle.dumps(call))


def run_code_task(request: bytes) -> Iterator[tuple[str, Any, int]]:
    """The Ray task: :func:`run_code_stream` of the call ``request`` (:func:`pack_request`) packs."""
    yield from run_code_stream(*pickle.loads(request))


def run_code_stream(
    mode: str,
    code: str | None,
    func_bytes: bytes | None,
    function_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    telemetry: dict[str, Any] | None = None,
) -> Iterator[tuple[str, Any, int]]:
    """Yield ``("start", where, attempt)``, then ``("stdout"|"stderr", line, attempt)`` while the
    function runs, then ``("done", outcome, attempt)``; a function that ends within ``QUICK_S``
    without printing yields only ``("done", ...)`` (its outcome says where it ran).

    ``attempt`` is Ray's attempt number of this execution (0 first, 1 after one retry...): when Ray
    retries the task after its worker was lost, the streamed items it already delivered are not
    delivered again, so the caller learns of the retry from the attempt of the next item.

    With ``telemetry`` (a trace carrier) the run is a span of the caller's trace, where
    bioengine-common is installed (an external cluster's node without it runs the code alike).
    """
    with _span(telemetry) as span:
        yield from _run(mode, code, func_bytes, function_name, args, kwargs, span)


def _span(telemetry: dict[str, Any] | None) -> Any:
    if telemetry:
        try:
            from bioengine_common.tracing import remote_span
        except ImportError:
            pass
        else:
            return remote_span("run_code.task", telemetry, "bioengine-run-code")
    return contextlib.nullcontext()


def _run(
    mode: str,
    code: str | None,
    func_bytes: bytes | None,
    function_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    span: Any,
) -> Iterator[tuple[str, Any, int]]:
    where = _where()
    if span is not None:
        span.set_attribute("ray.task.attempt", where["attempt"])
        if where["node_id"]:
            span.set_attribute("ray.node_id", str(where["node_id"]))
    attempt = where["attempt"]
    lines: queue.Queue[Any] = queue.Queue()
    out, err = _LineWriter("stdout", lines), _LineWriter("stderr", lines)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                function = _load(mode, code, func_bytes, function_name)
                result = function(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = asyncio.run(_await(result))
            outcome["result"] = result
        except BaseException as exc:  # user code may raise anything, SystemExit included
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            outcome["traceback"] = traceback.format_exc()
        finally:
            out.close_line()
            err.close_line()
            lines.put(_END)

    # The caller's context goes with the code into its thread: its log lines and spans belong
    # to the run_code span (the runner's thread would otherwise run it in a context of its own).
    _Runner.run(functools.partial(contextvars.copy_context().run, target))
    try:
        first = lines.get(timeout=QUICK_S)
    except queue.Empty:
        first = None
    if first is not _END:
        yield ("start", where, attempt)
        if first is not None:
            yield (*first, attempt)
        while (item := lines.get()) is not _END:
            yield (*item, attempt)
    outcome["stdout"] = "".join(out.text)
    outcome["stderr"] = "".join(err.text)
    outcome["attempt"] = attempt
    outcome["node_id"] = where["node_id"]
    outcome["slurm_job_id"] = where["slurm_job_id"]
    yield ("done", outcome, attempt)


async def _await(awaitable: Any) -> Any:
    return await awaitable


if __name__ == "__main__":  # pragma: no cover - a quick manual check
    for kind, value, attempt in run_code_task(
        pack_request("source", "def analyze(x):\n print(x)\n return x*2", None, "analyze", [21], {})
    ):
        print(kind, value, attempt, file=sys.stderr)
