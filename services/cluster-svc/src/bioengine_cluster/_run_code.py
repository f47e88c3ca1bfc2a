"""The driver side of ``run_code``: one Ray task per call, its output streamed to the caller's
callbacks, its retries made visible, and the task cancelled when the caller is gone.

- **Retries.** Ray re-runs the task when the node (SLURM job) it ran on is lost, as long as
  ``max_retries`` allows. Each streamed item carries Ray's attempt number (read inside the task);
  Ray delivers each item index once, so a retry shows as a change of attempt at the first index
  the earlier attempt had not reached. The caller then gets one ``[bioengine]`` line on stderr
  and the result says ``attempts`` and which attempts were lost where.
- **Callers that left.** hypha-rpc gives a callee no notice when its caller disconnects. The
  server lists the clients connected to a workspace (``list_clients``): a caller whose client id
  (``context["from"]``, and the original client a trusted gateway forwards) has not been listed
  for ``grace_s`` is gone, its call cannot be answered, and its Ray task is cancelled so that it
  uses no CPU and asks no SLURM job of its own. A listing that fails (Hypha itself unreachable) is
  no evidence: only listings that answer count.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bioengine_common import InvalidRequest, error_summary, within

from ._code_task import pack_request, run_code_task
from ._fit import ResourceRequest

__all__ = [
    "RUN_CODE_OPTIONS",
    "CallerWatch",
    "RunCodeLog",
    "absence",
    "parse_remote_options",
    "retry_notice",
    "run_in_ray",
]

#: Options a caller may pass to the Ray task of run_code.
RUN_CODE_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "memory",
    "runtime_env",
    "resources",
    "accelerator_type",
    "max_retries",
}
NOTICE_PREFIX = "[bioengine] "
#: Ray's default for a task that names no CPUs.
_TASK_DEFAULT_CPUS = 1.0
#: Ray refuses these in ``resources``: they have options of their own.
_STANDARD_OPTION = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}


# ---- pure -------------------------------------------------------------------------------------
def _amount(field: str, value: Any) -> float:
    """A non-negative, finite number for ``field`` (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{field} must be a non-negative number, got {type(value).__name__} {value!r}")
    if value < 0 or value != value or value == float("inf"):
        raise InvalidRequest(f"{field} must be a non-negative number, got {value!r}")
    return float(value)


def parse_remote_options(remote_options: Any) -> tuple[dict[str, Any], ResourceRequest]:
    """Check run_code's ``remote_options``: the Ray task options to pass on (``None`` values left
    out: Ray's default) and what the task asks of one node. The error names the wrong field."""
    if remote_options is None:
        remote_options = {}
    if not isinstance(remote_options, dict):
        raise InvalidRequest(
            f"remote_options must be a dict of Ray task options, got {type(remote_options).__name__}"
        )
    options = {str(k): v for k, v in remote_options.items() if v is not None}
    unknown = sorted(set(options) - RUN_CODE_OPTIONS)
    if unknown:
        raise InvalidRequest(f"unknown remote_options {unknown}; allowed: {sorted(RUN_CODE_OPTIONS)}")
    amounts = {
        name: _amount(f"remote_options.{name}", options[name])
        for name in ("num_cpus", "num_gpus", "memory")
        if name in options
    }
    resources = options.get("resources", {})
    if not isinstance(resources, dict):
        raise InvalidRequest(
            f"remote_options.resources must be a dict of resource name to amount, got "
            f"{type(resources).__name__}"
        )
    for name, value in resources.items():
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"remote_options.resources: {name!r} is not a resource name")
        if name in _STANDARD_OPTION:
            raise InvalidRequest(
                f"remote_options.resources.{name}: give {name} as remote_options.{_STANDARD_OPTION[name]}"
            )
        _amount(f"remote_options.resources.{name}", value)
    for name, kind in (("runtime_env", dict), ("accelerator_type", str)):
        if name in options and not isinstance(options[name], kind):
            raise InvalidRequest(
                f"remote_options.{name} must be a {kind.__name__}, got {type(options[name]).__name__}"
            )
    if "max_retries" in options:
        retries = options["max_retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < -1:
            raise InvalidRequest(
                f"remote_options.max_retries must be a whole number >= 0 (or -1: retry forever), "
                f"got {retries!r}"
            )
    request = ResourceRequest(
        num_cpus=amounts.get("num_cpus", _TASK_DEFAULT_CPUS),
        num_gpus=amounts.get("num_gpus", 0.0),
        memory=amounts.get("memory", 0.0),
        resources={name: float(value) for name, value in resources.items()},
    )
    return options, request


def absence(
    missing_since: float | None, present: bool | None, now: float, grace_s: float
) -> tuple[float | None, bool]:
    """One check of a caller's client: ``present`` is True/False from a listing that answered,
    None when the listing failed (no evidence either way). Returns (missing since, gone)."""
    if present is None:
        return missing_since, False
    if present:
        return None, False
    since = missing_since if missing_since is not None else now
    return since, now - since >= grace_s


def _place(where: dict[str, Any] | None) -> str:
    if not where:
        return "a Ray worker"
    parts = []
    if where.get("node_id"):
        parts.append(f"Ray node {str(where['node_id'])[:12]}")
    if where.get("slurm_job_id"):
        parts.append(f"SLURM job {where['slurm_job_id']}")
    return ", ".join(parts) or "a Ray worker"


def retry_notice(
    attempt: int, previous: int | None, lost_where: dict[str, Any] | None, lines_before: int
) -> str:
    """The line the caller gets when Ray's attempt ``attempt`` (0-based) shows up in the stream
    after ``previous`` (None: nothing streamed yet), ``lines_before`` output lines into it."""
    if previous is None:
        return (
            f"{NOTICE_PREFIX}run_code: this is attempt {attempt + 1}: Ray retried the task before it "
            "printed anything (its earlier worker was lost)"
        )
    text = (
        f"{NOTICE_PREFIX}run_code: Ray retried the task: attempt {attempt + 1} runs after attempt "
        f"{previous + 1} was lost with its worker ({_place(lost_where)})."
    )
    if lines_before:
        text += (
            f" The {lines_before} line(s) above came from attempt {previous + 1}; attempt {attempt + 1} "
            f"started over, and Ray streams only its output after its first {lines_before} line(s). "
            f"The result holds attempt {attempt + 1}'s whole output."
        )
    return text


# ---- the caller watch ---------------------------------------------------------------------------
ListClients = Callable[[str], Awaitable[list[Any]]]


class CallerWatch:
    """Whether the Hypha clients behind a run_code call are still connected."""

    def __init__(
        self, list_clients: ListClients, interval_s: float, grace_s: float, logger: logging.Logger
    ) -> None:
        self.list_clients = list_clients
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.logger = logger

    async def _present(self, client: str) -> bool | None:
        workspace = client.split("/", 1)[0]
        try:
            # within, not wait_for: a cancelled watch (its run_code ended) must stop polling.
            listed = await within(self.list_clients(workspace), 10.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.logger.debug("run_code: cannot list the clients of %s: %s", workspace, error_summary(exc))
            return None
        ids = {str(c.get("id") if isinstance(c, dict) else c) for c in listed or []}
        return client in ids

    async def wait_gone(self, clients: list[str]) -> str:
        """Return (with the reason) once one of ``clients`` has not been listed for ``grace_s``;
        never returns while they stay connected or while no listing answers."""
        missing: dict[str, float | None] = dict.fromkeys(clients)
        unanswered: dict[str, int] = dict.fromkeys(clients, 0)
        while True:
            await asyncio.sleep(self.interval_s)
            for client in clients:
                present = await self._present(client)
                unanswered[client] = unanswered[client] + 1 if present is None else 0
                if unanswered[client] == 3:
                    self.logger.warning(
                        "run_code: cannot tell whether caller %s is still connected (Hypha does not "
                        "list its workspace's clients); its task runs until it ends or times out",
                        client,
                    )
                missing[client], gone = absence(missing[client], present, time.monotonic(), self.grace_s)
                if gone:
                    since = time.monotonic() - (missing[client] or 0.0)
                    return f"the caller {client} disconnected (not connected to Hypha for {since:.0f} s)"


# ---- recent calls, for the status -------------------------------------------------------------
class RunCodeLog:
    """The run_code calls running now and the last few finished, for get_status."""

    def __init__(self, kept: int = 20) -> None:
        self.running: dict[str, dict[str, Any]] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=kept)

    def start(self, user: str | None, clients: list[str]) -> dict[str, Any]:
        run: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12],
            "user": user,
            "callers": clients,
            "started_at": time.time(),
            "state": "running",
            "attempts": 0,
            "where": [],
        }
        self.running[run["id"]] = run
        return run

    def finish(self, run: dict[str, Any], state: str, reason: str | None = None) -> None:
        run.update(state=state, reason=reason, ended_at=time.time())
        self.running.pop(run["id"], None)
        self.recent.append(run)

    def status(self) -> dict[str, Any]:
        return {"running": list(self.running.values()), "recent": list(self.recent)[::-1]}


# ---- the Ray side ---------------------------------------------------------------------------------
@functools.cache
def _remote_run_code_task() -> Any:
    """The Ray remote function, made once per driver: Ray exports its definition only once."""
    import ray
    from ray import cloudpickle

    # By value: nodes of an external cluster need not have bioengine installed.
    cloudpickle.register_pickle_by_value(sys.modules[run_code_task.__module__])
    return ray.remote(num_returns="streaming")(run_code_task)


async def _deliver(callback: Any, line: str, failures: list[str]) -> None:
    """Hand one output line to the caller; a failing callback does not stop the code (its lines
    are in the result anyway) and is given up after its first error."""
    if callback is None or failures:
        return
    try:
        result = callback(line)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        failures.append(error_summary(exc))


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read, so asyncio does not log it as never retrieved


async def run_in_ray(
    mode: str,
    code: str | None,
    func_bytes: bytes | None,
    function_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    write_stdout: Any,
    write_stderr: Any,
    timeout: float,
    *,
    caller_gone: Callable[[], Awaitable[str]] | None = None,
    cluster_lost: asyncio.Future[str] | None = None,
    run: dict[str, Any] | None = None,
    logger: logging.Logger | None = None,
    telemetry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stream the task's output lines to the callbacks; cancel the task on timeout or when
    ``caller_gone`` returns; answer at once, with an error, when ``cluster_lost`` resolves (the
    driver's connection is gone: the stream would never end); say so when Ray retried it.
    ``telemetry`` (a trace carrier) makes the task a span of the caller's trace."""
    import ray

    logger = logger or logging.getLogger(__name__)
    run = run if run is not None else {}
    try:
        request = pack_request(mode, code, func_bytes, function_name, args, kwargs, telemetry)
    except Exception as exc:
        raise InvalidRequest(
            f"run_code's args and kwargs cannot be sent to Ray: {error_summary(exc)}"
        ) from exc
    try:
        task = _remote_run_code_task()
        if options:  # .options() costs about 0.25 ms per call: only when there are some
            task = task.options(**options)
        stream: Any = task.remote(request)
    except Exception as exc:  # Ray's own check of the options
        raise InvalidRequest(f"invalid remote_options: {error_summary(exc)}") from exc
    outcome: dict[str, Any] = {}
    stdout_failures: list[str] = []
    stderr_failures: list[str] = []
    notices: list[str] = []
    lost: list[dict[str, Any]] = []
    where: dict[int, dict[str, Any]] = {}
    current: list[int | None] = [None]  # the attempt streaming now
    lines = [0]  # output lines streamed so far
    printed: dict[str, list[str]] = {"stdout": [], "stderr": []}  # kept for an unfinished task

    async def notice(text: str) -> None:
        notices.append(text)
        logger.warning("run_code %s: %s", run.get("id", ""), text.removeprefix(NOTICE_PREFIX))
        await _deliver(write_stderr if write_stderr is not None else write_stdout, text, stderr_failures)

    async def consume() -> None:
        async for ref in stream:
            try:
                # The stream hands out an item once Ray has it here: taking it at once saves the
                # second wait (about 0.1 ms); one that is not local yet is awaited.
                kind, value, attempt = ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:
                kind, value, attempt = await ref
            previous = current[0]
            if attempt != previous and (previous is not None or attempt > 0):
                if previous is not None:
                    lost.append(
                        {"attempt": previous + 1, **where.get(previous, {}), "lines_streamed": lines[0]}
                    )
                lost_where = where.get(previous) if previous is not None else None
                await notice(retry_notice(attempt, previous, lost_where, lines[0]))
            current[0] = attempt
            run["attempts"] = attempt + 1
            if kind == "start":
                where[attempt] = {"node_id": value.get("node_id"), "slurm_job_id": value.get("slurm_job_id")}
                run.setdefault("where", []).append({"attempt": attempt + 1, **where[attempt]})
            elif kind == "stdout":
                lines[0] += 1
                printed["stdout"].append(value)
                await _deliver(write_stdout, value, stdout_failures)
            elif kind == "stderr":
                lines[0] += 1
                printed["stderr"].append(value)
                await _deliver(write_stderr, value, stderr_failures)
            else:
                outcome.update(value)
                if attempt not in where:  # a retry's "start" item is not streamed again (index 0)
                    where[attempt] = {
                        "node_id": value.get("node_id"),
                        "slurm_job_id": value.get("slurm_job_id"),
                    }
                    run.setdefault("where", []).append({"attempt": attempt + 1, **where[attempt]})
                # "done" is the task's last item: waiting for Ray's end of the stream as well
                # would add about 0.5 ms to every call.
                return

    def unfinished(result: dict[str, Any]) -> dict[str, Any]:
        """An error result for a task that did not finish, with the output it printed so far
        (every complete line; a last line without its newline is not streamed until the task
        ends, so it is missing)."""
        result["stdout"] = "".join(f"{line}\n" for line in printed["stdout"])
        result["stderr"] = "".join(f"{line}\n" for line in [*notices, *printed["stderr"]])
        return attempts_info(result)

    def attempts_info(result: dict[str, Any]) -> dict[str, Any]:
        result.pop("attempt", None)  # the task's 0-based number: "attempts" says it
        result["attempts"] = (current[0] or 0) + 1 if current[0] is not None else 0
        if lost:
            result["retries"] = lost
            result["retried"] = " ".join(n.removeprefix(NOTICE_PREFIX) for n in notices)
        return result

    # The stream is read in this task, under a timeout, not in a task of its own: one turn of
    # the event loop less on every call. A caller found gone, or the cluster lost, cancels this
    # task's wait, once, and says why in ``stopped``.
    this = asyncio.current_task()
    assert this is not None
    stopped: list[tuple[str, str]] = []  # (why: "caller" or "cluster", reason)
    answered = False

    def stop(why: str, reason: str) -> None:
        if not stopped and not answered:
            stopped.append((why, reason))
            this.cancel()

    async def watch() -> None:
        assert caller_gone is not None
        stop("caller", await caller_gone())

    def on_lost(lost: asyncio.Future[str]) -> None:
        stop("cluster", lost.result())

    watcher = asyncio.ensure_future(watch()) if caller_gone is not None else None
    if cluster_lost is not None:
        cluster_lost.add_done_callback(on_lost)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await consume()
    except asyncio.CancelledError:
        if not stopped or this.uncancel() > 0:
            raise  # cancelled from outside (the service stops): not ours to answer
        why, reason = stopped[0]
        if why == "cluster":  # no driver left to cancel with: the task went with the cluster
            logger.warning("run_code %s: %s while it ran", run.get("id", ""), reason)
            return unfinished(
                {
                    "error": f"The Ray cluster was lost while the code ran ({reason}); it did not "
                    "finish. Run it again once the cluster is back (get_status says when).",
                    "traceback": f"run_code lost its cluster: {reason}",
                }
            )
        ray.cancel(stream, force=True)  # kills the worker process: the code stops using CPU
        logger.warning("run_code %s: %s: cancelled its Ray task", run.get("id", ""), reason)
        run["cancelled"] = reason
        return unfinished(
            {
                "error": f"Cancelled: {reason}.",
                "traceback": f"run_code cancelled: {reason}",
                "cancelled": True,
            }
        )
    except TimeoutError as exc:
        if not deadline.expired():  # a TimeoutError of the task's own
            return unfinished({"error": error_summary(exc), "traceback": str(exc)})
        ray.cancel(stream, force=True)
        return unfinished(
            {
                "error": f"The code timed out after {timeout:g} seconds.",
                "traceback": f"TimeoutError: run_code exceeded its timeout of {timeout:g} seconds; "
                "the Ray task was cancelled",
            }
        )
    except Exception as exc:  # the task itself failed (worker died, bad runtime_env, ...)
        return unfinished({"error": error_summary(exc), "traceback": str(exc)})
    finally:
        answered = True  # a loss or a caller check that comes later changes nothing
        if cluster_lost is not None:
            cluster_lost.remove_done_callback(on_lost)
        if watcher is not None:
            # Not awaited: its cancellation is handled after the answer has gone; its outcome
            # is read, never raised.
            watcher.cancel()
            watcher.add_done_callback(_ignore_outcome)
    if not outcome:
        raise InvalidRequest("the run_code task ended without a result")
    if notices:
        outcome["stderr"] = "".join(f"{n}\n" for n in notices) + outcome.get("stderr", "")
    if stdout_failures or stderr_failures:
        outcome["callback_error"] = (stdout_failures + stderr_failures)[0]
    return attempts_info(outcome)
