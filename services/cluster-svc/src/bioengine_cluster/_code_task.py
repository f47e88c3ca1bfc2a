"""The Ray task behind ``run_code``. User code runs here, in a Ray worker, never in a service.

Self-contained on purpose (standard library and cloudpickle only): it is shipped to Ray by
value, so nodes of an external cluster need no BioEngine package to run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from typing import Any

_END = object()


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


def _load(mode: str, code: str | None, func_bytes: bytes | None, function_name: str) -> Any:
    if mode == "source":
        if not code:
            raise ValueError("source mode needs `code`")
        namespace: dict[str, Any] = {"__name__": "__bioengine_run_code__"}
        exec(compile(textwrap.dedent(code), "<run_code>", "exec"), namespace)
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


def run_code_task(
    mode: str,
    code: str | None,
    func_bytes: bytes | None,
    function_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Iterator[tuple[str, Any]]:
    """Yield ``("stdout"|"stderr", line)`` while the function runs, then ``("done", outcome)``."""
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

    thread = threading.Thread(target=target, name="run_code", daemon=True)
    thread.start()
    while (item := lines.get()) is not _END:
        yield item
    thread.join()
    outcome["stdout"] = "".join(out.text)
    outcome["stderr"] = "".join(err.text)
    yield ("done", outcome)


async def _await(awaitable: Any) -> Any:
    return await awaitable


if __name__ == "__main__":  # pragma: no cover - a quick manual check
    for kind, value in run_code_task(
        "source", "def analyze(x):\n print(x)\n return x*2", None, "analyze", [21], {}
    ):
        print(kind, value, file=sys.stderr)
