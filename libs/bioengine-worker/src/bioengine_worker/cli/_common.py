"""What every ``bioengine`` command shares: where the worker is (flags, environment, connection
file), one connection per command with a timeout per call, the connection options, errors and
printing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from bioengine_common import ServiceUnavailable, connect, error_summary

from .._launcher import CONNECTION_FILE

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.workspace_dir).expanduser() / CONNECTION_FILE
    saved: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            saved = json.loads(path.read_text())
    resolved = {
        "server_url": args.server_url or os.environ.get("BIOENGINE_SERVER_URL") or saved.get("server_url"),
        "workspace": args.workspace or os.environ.get("BIOENGINE_WORKSPACE") or saved.get("workspace"),
        "token": None
        if args.anonymous
        else (args.token or os.environ.get("BIOENGINE_TOKEN") or saved.get("token")),
    }
    if not resolved["server_url"]:
        raise CliError(
            f"no worker to talk to: pass --server-url (or BIOENGINE_SERVER_URL), or start one "
            f"with `bioengine-worker` (it writes {path})",
            EXIT_USAGE,
        )
    resolved["workspace"] = resolved["workspace"] or "bioengine"
    return resolved


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "-"
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes and not days else []
    parts += [f"{seconds}s"] if not days and not hours else []
    return " ".join(parts) or "0s"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


class CallTimeout(CliError):
    """A call to the worker did not answer in time."""


class Caller(Protocol):
    async def call(
        self, method: str, kwargs: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any: ...


class _Worker:
    """One worker service on an open connection: ``await worker.call(method, kwargs)``."""

    def __init__(self, service: Any, service_id: str, timeout: float):
        self.service = service
        self.service_id = service_id
        self.timeout = timeout

    async def call(
        self, method: str, kwargs: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        service, service_id = self.service, self.service_id
        function = service.get(method) if hasattr(service, "get") else getattr(service, method, None)
        if function is None:
            names = sorted(k for k in service if callable(service[k])) if hasattr(service, "keys") else []
            raise CliError(f"'{service_id}' has no method '{method}'; it has: {', '.join(names)}", EXIT_USAGE)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(function(**(kwargs or {})), timeout=limit)
        except TimeoutError as exc:
            raise CallTimeout(f"{service_id}.{method} did not answer within {limit:g} s") from exc
        except Exception as exc:
            raise CliError(error_summary(exc)) from exc


def _timeout(args: argparse.Namespace, default: float = 30.0) -> float:
    """``--timeout`` if given, else the command's own default."""
    value = getattr(args, "timeout", None)
    return float(value) if value is not None else default


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace, service_id: str, timeout: float) -> AsyncIterator[_Worker]:
    """Connect once and yield the service; ``timeout`` bounds each call (and the connection, up to 60 s)."""
    conn = _connection(args)
    try:
        server = await connect(
            conn["server_url"],
            workspace=conn["workspace"] if conn["token"] else None,
            token=conn["token"],
            method_timeout=timeout,
            timeout=min(timeout, 60.0),
        )
    except ServiceUnavailable as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from exc
    try:
        if "/" not in service_id:
            service_id = f"{conn['workspace']}/{service_id}"
        try:
            service = await server.get_service(service_id, {"mode": "random"})
        except Exception as exc:
            raise CliError(
                f"service '{service_id}' is not available at {conn['server_url']} "
                f"({error_summary(exc)}); is the worker running?",
                EXIT_UNAVAILABLE,
            ) from exc
        yield _Worker(service, service_id, timeout)
    finally:
        with contextlib.suppress(Exception):
            await server.disconnect()


async def _call(args: argparse.Namespace, service_id: str, method: str, kwargs: dict[str, Any]) -> Any:
    async with _session(args, service_id, _timeout(args)) as worker:
        return await worker.call(method, kwargs)


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, default=str))
    elif isinstance(value, str):
        print(value)
    else:
        print(json.dumps(value, indent=2, default=str))


def _common_options(defaults: bool, timeout_help: str | None = None) -> argparse.ArgumentParser:
    """Connection options, accepted before or after the subcommand.

    The copy attached to a subcommand has no defaults, so it cannot undo a value given before
    the subcommand.
    """
    parser = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    add = parser.add_argument
    add(
        "--server-url",
        default=default(None),
        help="Hypha server URL (default: BIOENGINE_SERVER_URL or the connection file)",
    )
    add(
        "--workspace",
        default=default(None),
        help="Workspace of the worker (default: BIOENGINE_WORKSPACE or the connection file)",
    )
    add(
        "--token", default=default(None), help="Hypha token (default: BIOENGINE_TOKEN or the connection file)"
    )
    add(
        "--anonymous",
        action="store_true",
        default=default(False),
        help="Connect without any token, as an anonymous user",
    )
    add(
        "--workspace-dir",
        default=default(os.environ.get("BIOENGINE_WORKSPACE_DIR", "~/.bioengine")),
        help="Where bioengine-worker wrote its connection file (default: ~/.bioengine)",
    )
    add(
        "--timeout",
        type=float,
        # None: each command's own default (30 s; longer for apps upload/run/deploy).
        default=default(None),
        help=timeout_help or "Seconds to wait for an answer (default: 30)",
    )
    add("--json", action="store_true", default=default(False), help="Print machine-readable JSON")
    add(
        "--debug",
        action="store_true",
        default=default(False),
        help="On an error, print the whole traceback (a remote service's included), not one line",
    )
    return parser


def _print_error(line: str, exc: BaseException, debug: bool) -> None:
    if debug:
        # The chained causes carry the remote traceback (hypha-rpc puts it in the error's text).
        print("".join(traceback.format_exception(exc)), end="", file=sys.stderr)
    print(f"error: {line}", file=sys.stderr)
